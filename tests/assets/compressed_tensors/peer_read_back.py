"""Read a ``sparse-24-bitmask`` checkpoint back with the pinned peer (compressed-tensors 0.14.0.1 +
transformers 4.57), run in that venv by ``tests/test_compressed_tensors.py``; ria_kernels is not
imported here.

``python peer_read_back.py CHECKPOINT_DIR OUT.safetensors [DIR OUT ...]`` writes, per pair, two dense
state dicts into OUT:
``hf.<name>``: what ``transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR)`` loads (the
older stack's own loading path: its compressed-tensors quantizer decompresses the weights), and
``ct.<name>``: what ``ModelCompressor.from_pretrained(dir).decompress(dir, model)`` writes into a
fresh model. Prints a JSON line with the versions and the sparsity config the peer parsed.
"""
from __future__ import annotations

import json
import sys

import torch
from compressed_tensors import __version__ as ct_version
from compressed_tensors.compressors import ModelCompressor
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers import __version__ as hf_version


def main(src: str, out: str) -> int:
    hf = AutoModelForCausalLM.from_pretrained(src, dtype="auto").eval()
    config = AutoConfig.from_pretrained(src)
    compressor = ModelCompressor.from_pretrained(src)
    del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, torch_dtype=hf.dtype).eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    compressor.decompress(src, fresh)
    tensors = {f"hf.{k}": v.detach().contiguous().clone() for k, v in hf.state_dict().items()}
    tensors.update({f"ct.{k}": v.detach().contiguous().clone() for k, v in fresh.state_dict().items()})
    save_file(tensors, out)
    print(json.dumps({"compressed_tensors": ct_version, "transformers": hf_version,
                      "sparsity_config": compressor.sparsity_config.model_dump()}))
    return 0


if __name__ == "__main__":
    pairs = sys.argv[1:]
    if not pairs or len(pairs) % 2:
        sys.exit("usage: peer_read_back.py CHECKPOINT_DIR OUT.safetensors [DIR OUT ...]")
    sys.exit(max(main(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)))
