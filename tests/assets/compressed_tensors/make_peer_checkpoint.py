"""Write the tiny compressed-tensors ``sparse-24-bitmask`` checkpoint the tests import.

Run in a venv with the pinned peer (never in the system python)::

    python3 -m venv --system-site-packages /tmp/venv-ct014
    /tmp/venv-ct014/bin/pip install compressed-tensors==0.14.0.1 "transformers==4.57.*"
    /tmp/venv-ct014/bin/python tests/assets/compressed_tensors/make_peer_checkpoint.py

It builds a 2-layer LLaMA (hidden 32, bfloat16) from a config with a fixed seed, makes every
decoder-layer linear 2:4 (a random 2-of-4 mask, plus groups with fewer than 2 non-zeros and -0.0
entries, the cases a compressor may pack differently), leaves ``lm_head`` dense, and compresses it
with compressed-tensors' own ``ModelCompressor`` (``Sparse24BitMaskConfig``: targets ``Linear``,
ignore ``lm_head``), writing ``tiny_llama_24/`` (``model.safetensors`` + ``config.json`` with the
library's ``quantization_config``). It then decompresses that directory with the same library into
a fresh model and writes what it decompresses to as ``tiny_llama_24_dense.safetensors``: the
reference the import is checked against. ria_kernels is not imported here.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from compressed_tensors import __version__ as ct_version
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.config import Sparse24BitMaskConfig
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

PIN = "0.14.0.1"
HERE = Path(__file__).resolve().parent
OUT = HERE / "tiny_llama_24"
DENSE = HERE / "tiny_llama_24_dense.safetensors"


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False, torch_dtype="bfloat16")


@torch.no_grad()
def make_24(model: LlamaForCausalLM, gen: torch.Generator) -> None:
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name == "lm_head":
            continue
        w = mod.weight
        n, k = w.shape
        keep = torch.rand(n, k // 4, 4, generator=gen).argsort(-1)[..., :2]          # 2 kept columns per group
        mask = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, keep, True).reshape(n, k)
        w.mul_(mask)
        w[0, :4] = 0.0                      # a group with no non-zero
        w[1, 4:8] = torch.tensor([0.0, 0.5, 0.0, 0.0])   # a group with one non-zero
        w[2, 0] = -0.0                      # a signed zero
        w[2, 1], w[2, 2], w[2, 3] = 0.25, 0.0, -0.75


def main() -> int:
    if ct_version != PIN:
        print(f"compressed-tensors {PIN} is pinned, found {ct_version}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).to(torch.bfloat16).eval()
    make_24(model, gen)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    compressor = ModelCompressor(sparsity_config=Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"]))
    state = compressor.compress(model)               # the library's own sparse-24-bitmask compressor
    save_file({k: v.contiguous() for k, v in state.items()}, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(OUT)
    compressor.update_config(str(OUT))               # writes quantization_config / sparsity_config
    # what the library decompresses the directory to, in a fresh model
    fresh = LlamaForCausalLM(tiny_config()).to(torch.bfloat16).eval()
    for p in fresh.parameters():
        p.data.zero_()
    ModelCompressor.from_pretrained(str(OUT)).decompress(str(OUT), fresh)
    dense = {k: v.contiguous() for k, v in fresh.state_dict().items()}
    save_file(dense, str(DENSE), metadata={"compressed_tensors": ct_version})
    same = all(torch.equal(dense[k], v) for k, v in model.state_dict().items())
    print(json.dumps({"compressed_tensors": ct_version, "tensors": sorted(state)[:6], "decompressed_equals_source": same,
                      "files": sorted(p.name for p in OUT.iterdir())}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
