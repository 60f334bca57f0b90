#!/usr/bin/env python3
"""Per-kernel benchmark (GPU): fused RIA score + prune, and the permutation-aware RMSNorm.

Baselines come from the ops' own torch references (eager, and under torch.compile)
and, for N:M pruning, the official RIA repository's procedure: a Python loop of
``torch.topk(largest=False)`` over every M-column strip of the score matrix.

Bytes counted (the traffic each kernel is designed to move):
  fused N:M prune: 2 reads of W + 1 write of W + 1 byte of mask per element
  RMSNorm: read x (+ residual) once, write y (+ h) once
GB/s = bytes / median time; "% copy" is that over a measured device-to-device copy.

    python benchmarks/bench_kernels.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_ms, copy_bandwidth_gbps, print_table, write_rows  # noqa: E402

from ria_kernels.ops.prune_fused import fused_prune, fused_prune_reference  # noqa: E402
from ria_kernels.ops.ria_score import pruning_score_reference  # noqa: E402
from ria_kernels.ops.rms_norm import permuted_rms_norm, permuted_rms_norm_reference  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (5120, 5120), (13824, 5120), (8192, 8192),
          (28672, 8192), (8192, 28672)]


def official_ria_nm(weight, act_norm, n, m, a=0.5):
    """The RIA repository's N:M step, in torch: score, then a Python loop over every
    M-column strip with topk(largest=False) marking the N pruned weights."""
    score = pruning_score_reference(weight, act_norm, "ria", a)
    w_mask = torch.zeros_like(score, dtype=torch.bool)
    for ii in range(score.shape[1]):
        if ii % m == 0:
            tmp = score[:, ii:(ii + m)].float()
            w_mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    pruned = weight.clone()
    pruned[w_mask] = 0
    return pruned, ~w_mask


def bench_prune(rows, quick):
    compiled = torch.compile(fused_prune_reference, dynamic=True)
    copy = copy_bandwidth_gbps()
    shapes = SHAPES[-2:] if quick else SHAPES
    for r, c in shapes:
        w = torch.randn(r, c, device="cuda", dtype=torch.float16)
        act = torch.rand(c, device="cuda") + 0.1
        # correctness first: the measured kernel must equal its reference
        got = fused_prune(w, act, "ria", 0.5, "2:4", backend="triton")
        ref = fused_prune_reference(w, act, "ria", 0.5, "2:4")
        agree = float((got[1] == ref[1]).float().mean())
        for sparsity in ("2:4", 0.5):
            nbytes = w.numel() * (3 * w.element_size() + 1) if sparsity == "2:4" else \
                w.numel() * (2 * w.element_size() + 4 * 2 + 1)
            t_tri = bench_ms(lambda: fused_prune(w, act, "ria", 0.5, sparsity, backend="triton"))
            t_ref = bench_ms(lambda: fused_prune_reference(w, act, "ria", 0.5, sparsity), warmup=5, rep=50)
            t_cmp = bench_ms(lambda: compiled(w, act, "ria", 0.5, sparsity), warmup=5, rep=50)
            row = {"kernel": "fused_prune", "pattern": str(sparsity), "rows": r, "cols": c, "dtype": "float16",
                   "triton_ms": t_tri, "torch_eager_ms": t_ref, "torch_compile_ms": t_cmp,
                   "gbps": nbytes / (t_tri * 1e-3) / 1e9, "copy_gbps": copy,
                   "speedup_vs_eager": t_ref / t_tri, "speedup_vs_compile": t_cmp / t_tri,
                   "mask_agreement_vs_reference": agree}
            row["pct_copy"] = 100 * row["gbps"] / copy
            if sparsity == "2:4" and (not quick or c == 28672):
                t_off = bench_ms(lambda: official_ria_nm(w, act, 2, 4), warmup=1, rep=20)
                row["official_ms"] = t_off
                row["speedup_vs_official"] = t_off / t_tri
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        del w


def bench_rmsnorm(rows):
    copy = copy_bandwidth_gbps()

    def torch_rms_gather(x, w, perm, eps=1e-6):
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)
        return y.index_select(-1, perm)
    compiled = torch.compile(torch_rms_gather, dynamic=True)
    for tokens in (1024, 8192):
        for h in (4096, 8192):
            x = torch.randn(tokens, h, device="cuda", dtype=torch.float16)
            w = torch.rand(h, device="cuda", dtype=torch.float16)
            perm = torch.randperm(h, device="cuda")
            w_p = w[perm].contiguous()
            out = torch.empty_like(x)
            torch.testing.assert_close(permuted_rms_norm(x, w, perm, backend="triton").float(),
                                       permuted_rms_norm_reference(x, w, perm).float(), rtol=2e-2, atol=2e-2)
            t_perm = bench_ms(lambda: permuted_rms_norm(x, w_p, perm, backend="triton", validate=False,
                                                        weight_permuted=True, out=out))
            t_plain = bench_ms(lambda: permuted_rms_norm(x, w, None, backend="triton", out=out))
            t_eager = bench_ms(lambda: torch_rms_gather(x, w, perm))
            t_cmp = bench_ms(lambda: compiled(x, w, perm))
            nbytes = 2 * x.numel() * x.element_size()
            row = {"kernel": "permuted_rms_norm", "tokens": tokens, "hidden": h, "dtype": "float16",
                   "triton_permuted_ms": t_perm, "triton_unpermuted_ms": t_plain, "torch_eager_ms": t_eager,
                   "torch_compile_ms": t_cmp, "permuted_over_unpermuted": t_perm / t_plain,
                   "speedup_vs_eager": t_eager / t_perm, "speedup_vs_compile": t_cmp / t_perm,
                   "gbps": nbytes / (t_perm * 1e-3) / 1e9, "copy_gbps": copy}
            row["pct_copy"] = 100 * row["gbps"] / copy
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    pr = [r for r in rows if r["kernel"] == "fused_prune"]
    for pattern, marker in (("2:4", "o"), ("0.5", "s")):
        sel = [r for r in pr if r["pattern"] == pattern]
        axes[0].plot([f"{r['rows']}x{r['cols']}" for r in sel], [r["pct_copy"] for r in sel], marker=marker,
                     label=f"fused prune {pattern}: % of copy bandwidth")
    axes[0].set_ylabel("% of measured D2D copy bandwidth")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend()
    axes[0].set_title("fused RIA score + prune (fp16)")
    rr = [r for r in rows if r["kernel"] == "permuted_rms_norm"]
    labels = [f"{r['tokens']}x{r['hidden']}" for r in rr]
    xs = range(len(rr))
    for key, off in (("triton_permuted_ms", -0.3), ("triton_unpermuted_ms", -0.1), ("torch_eager_ms", 0.1),
                     ("torch_compile_ms", 0.3)):
        axes[1].bar([x + off for x in xs], [r[key] for r in rr], width=0.2, label=key.replace("_ms", ""))
    axes[1].set_xticks(list(xs), labels)
    axes[1].set_ylabel("median ms")
    axes[1].legend()
    axes[1].set_title("RMSNorm with permuted output (fp16)")
    dev = torch.cuda.get_device_name()
    fig.suptitle(f"ria-kernels per-kernel benchmark on {dev}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for kernels.json / kernels.png")
    ap.add_argument("--quick", action="store_true", help="only the two largest prune shapes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (this machine has none); nothing measured")
        return 1
    rows: list[dict] = []
    bench_rmsnorm(rows)
    bench_prune(rows, args.quick)
    write_rows(args.out, "kernels", rows)
    plot(rows, Path(args.out) / "kernels.png")
    print_table([r for r in rows if r["kernel"] == "fused_prune"],
                ["pattern", "rows", "cols", "triton_ms", "torch_eager_ms", "torch_compile_ms", "official_ms",
                 "pct_copy", "speedup_vs_official"])
    print_table([r for r in rows if r["kernel"] == "permuted_rms_norm"],
                ["tokens", "hidden", "triton_permuted_ms", "triton_unpermuted_ms", "torch_eager_ms",
                 "torch_compile_ms", "permuted_over_unpermuted", "speedup_vs_eager"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
