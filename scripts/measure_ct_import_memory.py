"""Peak host memory of importing a sharded compressed-tensors ``sparse-24-bitmask`` checkpoint.

Two steps, each its own process so the measurement sees nothing else::

    python scripts/measure_ct_import_memory.py write DIR --hidden 1024 --layers 4 --shard-mb 16
    python scripts/measure_ct_import_memory.py load DIR [--json OUT]

``write`` builds a LLaMA config and writes its checkpoint straight in the compressed format (per
decoder linear random bfloat16 ``compressed`` values and a random valid 2-of-4 ``bitmask``, dense
embeddings / norms / ``lm_head``), shard by shard, so no dense weight exists at any point.
``load`` first imports a tiny checkpoint of the same kind (so every module the import path loads
lazily -- transformers' model code, the kernels' modules -- is loaded), resets the process' peak RSS
(``/proc/self/clear_refs``: 5) and reads ``VmRSS``, then runs ``ria_kernels.load_sparse(DIR)`` and
reads the peak (``VmHWM``): ``peak - baseline`` is the import's host memory, compared with the
compressed bytes (the tensors stored in the shards). Linux only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write(directory: Path, hidden: int, layers: int, intermediate: int, vocab: int, shard_mb: float) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    heads = max(1, hidden // 128)
    kv = max(1, heads // 4)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=256, tie_word_embeddings=False)
    head_dim = hidden // heads
    shapes = {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv * head_dim, hidden),
              "self_attn.v_proj": (kv * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    valid = torch.tensor([0b0011, 0b0101, 0b1001, 0b0110, 0b1010, 0b1100], dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    limit = int(shard_mb * (1 << 20))
    shards: list[dict] = [{}]
    sizes = [0]
    weight_map: dict[str, int] = {}

    def put(name: str, t):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and sizes[-1] + nbytes > limit:
            _flush()
        shards[-1][name] = t
        sizes[-1] += nbytes
        weight_map[name] = len(shards)

    def _flush():
        i = len(shards)
        save_file(shards[-1], str(directory / f"part-{i}.safetensors"), metadata={"format": "pt"})
        shards[-1] = {}  # written: drop the tensors before the next shard is built
        shards.append({})
        sizes.append(0)

    put("model.embed_tokens.weight", (torch.randn(vocab, hidden, generator=gen) * 0.02).bfloat16())
    for i in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            put(f"model.layers.{i}.{norm}.weight", torch.ones(hidden, dtype=torch.bfloat16))
        for name, (n, k) in shapes.items():
            p = f"model.layers.{i}.{name}"
            codes = valid[torch.randint(0, 6, (n, k // 4), generator=gen)]
            if codes.shape[1] % 2:
                codes = torch.cat([codes, codes.new_zeros(n, 1)], 1)
            put(f"{p}.bitmask", (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous())
            put(f"{p}.compressed", (torch.randn(n, k // 2, generator=gen) * 0.02).bfloat16())
            put(f"{p}.shape", torch.tensor([n, k]).reshape(-1, 1))
    put("model.norm.weight", torch.ones(hidden, dtype=torch.bfloat16))
    put("lm_head.weight", (torch.randn(vocab, hidden, generator=gen) * 0.02).bfloat16())
    _flush()
    total = len(shards) - 1
    final = {}
    for j in range(1, total + 1):  # HF shard names, once the count is known
        fname = f"model-{j:05d}-of-{total:05d}.safetensors"
        (directory / f"part-{j}.safetensors").rename(directory / fname)
        final[j] = fname
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: final[v] for k, v in weight_map.items()}}, indent=1))
    cfg = config.to_dict()
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {},
                                  "sparsity_config": {"format": "sparse-24-bitmask", "sparsity_structure": "2:4",
                                                      "targets": ["Linear"], "ignore": ["lm_head"],
                                                      "global_sparsity": 0.0}}
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    return {"shards": total, "directory": str(directory)}


def load(directory: Path) -> dict:
    import ctypes
    import gc
    import tempfile

    import torch

    import ria_kernels as rk
    from ria_kernels import compressed_tensors as ct
    compressed = ct._Checkpoint(directory).nbytes  # header reads only
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: every module the import path loads lazily, imported
        write(Path(tmp) / "warm", 64, 1, 128, 64, 1.0)  # before the baseline (library code, not the checkpoint)
        rk.load_sparse(Path(tmp) / "warm")
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back first
    except OSError:
        pass
    file_bytes = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        reset = False
    base = _status_kb("VmRSS") * 1024
    model = rk.load_sparse(directory)
    peak = _status_kb("VmHWM") * 1024
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    from ria_kernels.sparse_linear import SparseLinear
    n_sparse = sum(isinstance(m, SparseLinear) for m in model.modules())
    dense_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"compressed_bytes": compressed, "file_bytes": file_bytes, "model_bytes": held,
            "baseline_rss": base, "peak_rss": peak, "import_peak_bytes": peak - base,
            "ratio_to_compressed": (peak - base) / compressed, "hwm_reset": reset, "sparse_linears": n_sparse,
            "dense_linear_params": dense_linear}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("directory", type=Path)
    w.add_argument("--hidden", type=int, default=1024)
    w.add_argument("--layers", type=int, default=4)
    w.add_argument("--intermediate", type=int)
    w.add_argument("--vocab", type=int, default=4096)
    w.add_argument("--shard-mb", type=float, default=16.0)
    ld = sub.add_parser("load")
    ld.add_argument("directory", type=Path)
    ld.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "write":
        out = write(args.directory, args.hidden, args.layers, args.intermediate or (args.hidden * 11 // 4) // 4 * 4,
                    args.vocab, args.shard_mb)
    else:
        out = load(args.directory)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
