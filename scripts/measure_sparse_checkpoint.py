"""Measure a compressed 2:4 checkpoint of the embedded model against the dense one (issue #11 acceptance).

Prunes the embedded model to 2:4 (RIA, its calibration text), writes the dense HF checkpoint
(``save_pretrained``) and the compressed one (``save_sparse``), and reports:

- the bytes of the linear weights on disk in each (read from the safetensors headers: the dense
  ``<linear>.weight`` tensors vs the compressed ``<linear>.values`` + ``<linear>.meta``), their ratio,
  and the total file sizes;
- the perplexity on the embedded evaluation text of the masked dense model, of the converted model,
  and of the model read back by ``load_sparse`` (must be identical to the converted one).

    PYTHONPATH=$PWD python3 scripts/measure_sparse_checkpoint.py --dtype float32 [--permute]
        [--max-eval-windows N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def tensor_bytes(path: Path) -> dict[str, int]:
    """{tensor name: bytes} from a safetensors file's header (no tensor data read)."""
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--permute", action="store_true", help="channel permutation when pruning")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--max-eval-windows", type=int, help="evaluate on the first N windows only (CPU time)")
    ap.add_argument("--out", help="directory for the two checkpoints (default: a temporary one)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)

    import ria_kernels as rk
    from ria_kernels.calibration import calibration_from_file
    from ria_kernels.embedded import embedded_text_path, load_embedded
    from ria_kernels.evaluation import eval_tokens, perplexity
    from ria_kernels.sparse_linear import SparseLinear

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model, tok = load_embedded(dtype=dtype)
    calib = calibration_from_file(tok, embedded_text_path("calib"), args.nsamples, args.seqlen, 0)
    report = rk.prune_model(model, calib, method="ria", sparsity="2:4", permute=args.permute, progress=False)
    eval_ids = eval_tokens(tok, path=embedded_text_path("eval"))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ria_sparse_ckpt_"))
    dense_dir, sparse_dir = out / "dense", out / "sparse"
    result = {"command": "python3 scripts/measure_sparse_checkpoint.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, CPU",
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__, "dtype": args.dtype,
              "permute": args.permute, "eval_tokens": int(eval_ids.numel()), "seqlen": args.seqlen}
    ev = dict(max_windows=args.max_eval_windows)
    result["eval_windows"] = min(eval_ids.numel() // args.seqlen, args.max_eval_windows or 1 << 62)
    result["masked_dense_ppl"] = perplexity(model, eval_ids, args.seqlen, **ev)
    model.save_pretrained(dense_dir)
    tok.save_pretrained(dense_dir)
    rk.to_sparse_inference(model, report)
    result["converted_ppl"] = perplexity(model, eval_ids, args.seqlen, **ev)
    rk.save_sparse(model, sparse_dir, report=report, tokenizer=tok, overwrite=True)
    sparse_paths = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    # a gathered linear's SparseLinear is <path>.linear; its dense weight was <path>.weight
    dense_names = {(p[: -len(".linear")] if p.endswith(".linear") else p) + ".weight" for p in sparse_paths}
    dense_t, sparse_t = tensor_bytes(dense_dir / "model.safetensors"), tensor_bytes(sparse_dir / "model.safetensors")
    result["linear_weight_bytes_dense"] = sum(dense_t[n] for n in dense_names)
    result["linear_weight_bytes_sparse"] = sum(sparse_t[f"{p}.{s}"] for p in sparse_paths for s in ("values", "meta"))
    result["linear_weight_ratio"] = result["linear_weight_bytes_sparse"] / result["linear_weight_bytes_dense"]
    result["sparse_linears"] = len(sparse_paths)
    result["checkpoint_bytes_dense"] = dir_bytes(dense_dir)
    result["checkpoint_bytes_sparse"] = dir_bytes(sparse_dir)
    t = time.perf_counter()
    loaded = rk.load_sparse(sparse_dir)
    result["load_sparse_s"] = time.perf_counter() - t
    result["reloaded_ppl"] = perplexity(loaded, eval_ids, args.seqlen, **ev)
    result["reloaded_identical"] = result["reloaded_ppl"] == result["converted_ppl"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
