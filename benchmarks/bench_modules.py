#!/usr/bin/env python3
"""Per-module 2:4 speedup (the paper's Table 5): LLaMA2-7B / 13B / 70B linear shapes.

For every module shape (q/k/v/o, gate/up, down; 70B's k/v are GQA [1024, 8192]) and token
count T, times (medians of ``triton.testing.do_bench``, one run, float16 by default):

  dense                 cuBLAS ``F.linear`` of the masked weight (the baseline)
  cusparselt            this extension's cuSPARSELt matmul, config searched for this T
  cutlass               this extension's CUTLASS 2:4 kernel
  torch_cslt            torch's ``to_sparse_semi_structured`` with its cuSPARSELt backend
  torch_cutlass         torch's ``to_sparse_semi_structured`` with its CUTLASS backend
  dispatched            ``SparseLinear`` in automatic mode (tuned at T) -- what a model runs

Every backend's output is checked against the float32 reference
(``ria_kernels.ops.sparse_mm.sparse_mm_reference``) before it is timed; a failing backend is
not timed and the run exits 1. TFLOP/s are dense-equivalent: 2*T*N*K / time (the sparse
kernels do half the multiply-adds; the number says how fast the layer runs, not MMA utilisation).

torch's own 2:4 paths are baselines only: one that raises on this GPU (torch's CUTLASS 2:4 ops
are sm8x-only, so ``torch_cutlass`` fails on compute capability 9.0) is recorded as skipped with
its error in the row (``<name>_skipped``) and not tried again for that shape. One of our own
backends raising is a failure (exit 1).

Acceptance quantities printed at the end: LLaMA2-13B @ 1024 tokens overall speedup
(sum of dense times / sum of dispatched times over q,k,v,o,gate,up,down), the minimum
dispatched/dense speedup at <= 32 tokens, and dispatched vs torch's own 2:4 path per shape.

    python benchmarks/bench_modules.py --out benchmarks/results [--quick]
    python benchmarks/bench_modules.py --table5 --out gpu_out   # the paper's Table 5: 7B/13B, 8 x 128 tokens
    python benchmarks/bench_modules.py --table5 --dry-run       # plan only (no GPU)

Writes modules.json (rows, acceptance, and the dispatcher's tune table of this run) and modules.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_dry_run_argument, bench_ms, dry_run_plan, print_table, save_figure, write_rows  # noqa: E402

from ria_kernels import sparse_linear as sl  # noqa: E402
from ria_kernels.ops import sparse_mm  # noqa: E402
from ria_kernels.ops.sparse_mm import sparse_mm_reference  # noqa: E402

# (model, module group, [modules], N=out_features, K=in_features); groups share one shape
MODELS = {
    "llama2-7b": [("qkvo", ["q", "k", "v", "o"], 4096, 4096), ("gate_up", ["gate", "up"], 11008, 4096),
                  ("down", ["down"], 4096, 11008)],
    "llama2-13b": [("qkvo", ["q", "k", "v", "o"], 5120, 5120), ("gate_up", ["gate", "up"], 13824, 5120),
                   ("down", ["down"], 5120, 13824)],
    "llama2-70b": [("qo", ["q", "o"], 8192, 8192), ("kv", ["k", "v"], 1024, 8192),
                   ("gate_up", ["gate", "up"], 28672, 8192), ("down", ["down"], 8192, 28672)],
}
TOKENS = (1, 16, 128, 1024, 4096, 16384)
QUICK_TOKENS = (1, 16, 1024)
# The paper's Table 5: LLaMA2 modules at batch 8 x sequence 128 = 1024 tokens per linear.
TABLE5_MODELS = ("llama2-7b", "llama2-13b")
TABLE5_TOKENS = (1024,)
BACKENDS = ("cusparselt", "cutlass", "torch_cslt", "torch_cutlass", "dispatched")
BASELINES = ("torch_cslt", "torch_cutlass")  # torch's own 2:4 paths: skipped (with the reason) if they raise
SHAPE_MULTIPLE = 64  # N and K of every case: the strictest kernel limit (CUTLASS sm80: N % 32, K % 64)
# ||y - ref|| / ||ref|| a backend must meet before it is timed
REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def pruned_weight(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random [n, k] weight with 2 kept of every 4 consecutive input weights (2:4)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g)
    keep = torch.rand(n, k // 4, 4, device="cuda", generator=g).argsort(-1).argsort(-1) < 2
    return (w * keep.reshape(n, k)).to(dtype)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-12))


def shape_runners(w: torch.Tensor) -> tuple[dict, dict]:
    """Callables ``fn(x, T) -> y`` per available backend (compressed once), and skip reasons."""
    n, k = w.shape
    runners, skipped = {}, {}
    reasons = sl.backend_unavailable_reasons(w.device, w.dtype, n, k)
    if reasons["cusparselt"] is None:
        comp = sparse_mm.cslt_compress(w)
        configs: dict[int, list[int]] = {}

        def cslt(x, t):
            if t not in configs:  # searched for this exact T, outside the timed region
                configs[t] = sparse_mm.cslt_search(x, comp, n, None, None)
            return torch.ops.ria_kernels.cslt_mm(x, comp, n, None, None, *configs[t])
        cslt.configs = configs
        runners["cusparselt"] = cslt
    else:
        skipped["cusparselt"] = reasons["cusparselt"]
    if reasons["cutlass"] is None:
        values, meta = sparse_mm.cutlass_compress(w)
        op = sparse_mm.cutlass_mm_op(meta)  # the sm90 kernel on Hopper when built, else sm80
        runners["cutlass"] = lambda x, t: op(x, values, meta, None, None)
    else:
        skipped["cutlass"] = reasons["cutlass"]
    for name, impl in (("torch_cslt", "cusparselt"), ("torch_cutlass", "cutlass")):
        if impl == "cusparselt" and not torch.backends.cusparselt.is_available():
            skipped[name] = "torch was built without cuSPARSELt"
            continue
        try:
            ws = sl.torch_semi_structured(w, impl)
        except (RuntimeError, ValueError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        runners[name] = lambda x, t, ws=ws: F.linear(x, ws)
    module = sl.SparseLinear(w, None, memory="cusparselt")  # automatic: compact kernel, CUTLASS on the same copy, cuSPARSELt where faster

    def dispatched(x, t):
        return module(x)
    dispatched.module = module
    runners["dispatched"] = dispatched
    return runners, skipped


def checked_first_call(name: str, fn, x: torch.Tensor, t: int) -> tuple[torch.Tensor | None, str | None]:
    """A backend's first output at this T, or ``(None, reason)`` when a torch baseline raises
    (e.g. torch's CUTLASS 2:4 ops on compute capability 9.0). Our own backends' errors propagate."""
    if name not in BASELINES:
        return fn(x, t), None
    try:
        return fn(x, t), None
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def bench_shape(model, group, modules, n, k, tokens, dtype, rows, failures, warmup, rep):
    w = pruned_weight(n, k, dtype, seed=n * 7 + k)
    runners, skipped = shape_runners(w)
    for name, why in skipped.items():
        print(f"  {model} {group}: {name} skipped: {why}")
    module = runners["dispatched"].module
    for t in tokens:
        x = torch.randn(t, k, device="cuda", dtype=dtype)
        ref = sparse_mm_reference(x, w)
        row = {"model": model, "group": group, "modules": ",".join(modules), "count": len(modules), "N": n,
               "K": k, "tokens": t, "dtype": str(dtype).replace("torch.", ""), "gpu": torch.cuda.get_device_name()}
        flops = 2.0 * t * n * k
        dense = lambda: F.linear(x, w)  # noqa: E731
        row["dense_err"] = rel_err(dense(), ref)
        row["dense_ms"] = bench_ms(dense, warmup, rep)
        row["dense_tflops"] = flops / (row["dense_ms"] * 1e-3) / 1e12
        module.tune([t], remeasure=True)  # the dispatcher measures its candidates at this bucket (outside timing)
        row["dispatched_choice"] = module.backend_for(t)
        for name, fn in list(runners.items()):
            y, why = checked_first_call(name, fn, x, t)
            if y is None:
                print(f"  {model} {group} T={t}: {name} skipped: {why}")
                skipped[name] = why
                del runners[name]  # it raises for this weight at every T
                continue
            err = rel_err(y, ref)
            row[f"{name}_err"] = err
            if err > REL_TOL[dtype]:
                failures.append(f"{model} {group} T={t} {name}: relative error {err:.3e} > {REL_TOL[dtype]:.0e}")
                print("  FAIL", failures[-1])
                continue
            ms = bench_ms(lambda fn=fn: fn(x, t), warmup, rep)
            row[f"{name}_ms"] = ms
            row[f"{name}_speedup"] = row["dense_ms"] / ms
            row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
        if "cusparselt" in runners:
            row["cusparselt_config"] = runners["cusparselt"].configs.get(t)
        for name, why in skipped.items():
            row[f"{name}_skipped"] = why
        rows.append(row)
        print({c: (round(v, 4) if isinstance(v, float) else v) for c, v in row.items()
               if c in ("model", "group", "tokens", "dense_ms", "dispatched_choice") or c.endswith("_speedup")},
              flush=True)


def acceptance(rows: list[dict]) -> dict:
    """The issue's acceptance quantities, computed from the rows of this run."""
    out: dict = {}
    r13 = [r for r in rows if r["model"] == "llama2-13b" and r["tokens"] == 1024 and "dispatched_ms" in r]
    if r13:
        dense = sum(r["count"] * r["dense_ms"] for r in r13)
        disp = sum(r["count"] * r["dispatched_ms"] for r in r13)
        out["llama2_13b_1024_overall_speedup"] = dense / disp
        out["llama2_13b_1024_overall_pass"] = dense / disp >= 1.3
        per_shape = {}
        for r in r13:
            torch_times = {b: r[f"{b}_ms"] for b in ("torch_cslt", "torch_cutlass") if f"{b}_ms" in r}
            if torch_times:
                per_shape[r["group"]] = {f"vs_{b}": t / r["dispatched_ms"] for b, t in torch_times.items()}
        out["llama2_13b_1024_dispatched_vs_torch"] = per_shape
        ratios = [v for d in per_shape.values() for v in d.values()]
        if ratios:
            out["llama2_13b_1024_min_vs_torch"] = min(ratios)
            out["llama2_13b_1024_vs_torch_pass"] = min(ratios) >= 1.0
    small = [r["dispatched_speedup"] for r in rows if r["tokens"] <= 32 and "dispatched_speedup" in r]
    if small:
        out["min_dispatched_speedup_le32_tokens"] = min(small)
        out["le32_tokens_pass"] = min(small) >= 0.98
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    ncol = max(len(MODELS[m]) for m in models)
    fig, axes = plt.subplots(len(models), ncol, figsize=(4.2 * ncol, 3.4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j in range(ncol):
            ax = axes[i][j]
            if j >= len(MODELS[model]):
                ax.axis("off")
                continue
            group, modules, n, k = MODELS[model][j]
            sel = sorted((r for r in rows if r["model"] == model and r["group"] == group), key=lambda r: r["tokens"])
            for b in BACKENDS:
                pts = [(r["tokens"], r[f"{b}_speedup"]) for r in sel if f"{b}_speedup" in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", lw=2.5 if b == "dispatched" else 1.2, label=b)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{model} {'/'.join(modules)} [{n}x{k}]", fontsize=9)
            ax.set_xlabel("tokens")
            ax.set_ylabel("speedup vs dense cuBLAS")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    save_figure(fig, path, f"2:4 per-module speedup vs dense on {torch.cuda.get_device_name()} ({rows[0]['dtype']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for modules.json / modules.png")
    ap.add_argument("--quick", action="store_true", help=f"token counts {QUICK_TOKENS} instead of {TOKENS}")
    ap.add_argument("--table5", action="store_true",
                    help=f"the paper's Table 5: models {', '.join(TABLE5_MODELS)} at {TABLE5_TOKENS[0]} tokens "
                         "(batch 8 x sequence 128)")
    ap.add_argument("--tokens", type=int, nargs="+", help="token counts (overrides --quick / --table5's)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="default: all (--table5: 7B and 13B)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--warmup", type=int, default=10, help="do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=50, help="do_bench measurement time (ms)")
    add_dry_run_argument(ap)
    args = ap.parse_args()
    models = args.models or list(TABLE5_MODELS if args.table5 else MODELS)
    tokens = tuple(args.tokens or (TABLE5_TOKENS if args.table5 else QUICK_TOKENS if args.quick else TOKENS))
    if min(tokens) < 1 or args.warmup < 0 or args.rep < 1:
        ap.error("--tokens must be >= 1, --warmup >= 0, --rep >= 1")
    cases = [f"{model} {group} ({'/'.join(mods)}) N={n} K={k} T={t} {args.dtype}"
             for model in models for group, mods, n, k in MODELS[model] for t in tokens]
    bad = [f"{m} {g} [{n}x{k}]" for m in models for g, _, n, k in MODELS[m] if n % SHAPE_MULTIPLE or k % SHAPE_MULTIPLE]
    if bad:
        ap.error(f"shapes not multiples of {SHAPE_MULTIPLE}: {', '.join(bad)}")
    if args.dry_run:
        return dry_run_plan("bench_modules", cases, ["modules.json", "modules.png"])
    if not torch.cuda.is_available():
        print("bench_modules: needs a CUDA GPU (this machine has none); nothing measured")
        return 1
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    # the dispatcher's measurements of this run: a scratch table, stored inside modules.json at the end
    # (one JSON per benchmark), not in ~/.cache
    tune_path = Path(tempfile.mkdtemp(prefix="bench_modules_")) / "sparse_linear_tune.json"
    sl.set_tune_table(sl.TuneTable(tune_path))
    print(f"extension: {sparse_mm.extension_status()}; cuSPARSELt (ours) {sparse_mm.cslt_version()}, "
          f"torch's {torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None}")
    rows: list[dict] = []
    failures: list[str] = []
    for model in models:
        for group, modules, n, k in MODELS[model]:
            bench_shape(model, group, modules, n, k, tokens, dtype, rows, failures, args.warmup, args.rep)
            torch.cuda.empty_cache()  # this shape's weights and compressed copies are gone with its frame
    acc = acceptance(rows)
    extra = {"acceptance": acc, "failures": failures, "extension_status": sparse_mm.extension_status(),
             "torch_cusparselt": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available()
             else None, "flops_note": "TFLOP/s are dense-equivalent: 2*T*N*K / time",
             "table5": args.table5, "tune_table": json.loads(tune_path.read_text()) if tune_path.exists() else None}
    write_rows(out, "modules", rows, extra)
    print_table(rows, ["model", "group", "tokens", "dense_ms"] + [f"{b}_speedup" for b in BACKENDS]
                + ["dispatched_choice"])
    print("ACCEPTANCE " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in acc.items() if not isinstance(v, dict)))
    for group, ratios in acc.get("llama2_13b_1024_dispatched_vs_torch", {}).items():
        print(f"  13B @1024 {group}: dispatched vs torch's 2:4 path " +
              ", ".join(f"{b}={v:.3f}x" for b, v in ratios.items()))
    try:
        plot(rows, out / "modules.png")
    except ImportError as exc:  # the JSON above is the result; the plot is a view of it
        print(f"bench_modules: no plot ({exc})")
    if failures:
        print(f"bench_modules: {len(failures)} backend outputs failed the reference check")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
