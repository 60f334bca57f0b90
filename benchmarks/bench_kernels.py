#!/usr/bin/env python3
"""Per-kernel benchmark (GPU) for issue 3: fused RIA score + prune, block-wise N:M top-k,
the RIA score kernel, and the permutation-aware RMSNorm.

Shapes: the LLaMA2-7B/13B/70B linear shapes [out, in] (4096², 11008×4096, 4096×11008,
5120², 13824×5120, 8192², 28672×8192, 8192×28672), fp16 weights; RMSNorm at 8192 tokens
× the LLaMA hidden sizes (4096, 5120, 8192). In the same run, for every kernel:
  - ``torch_eager``:   the op's own torch reference (imported from the op module),
  - ``torch_compile``: that same reference under ``torch.compile``,
  - ``official``:      (N:M kernels) the official RIA repository's N:M procedure, faithfully
                       re-implemented in torch: a Python loop over every column with
                       ``topk(largest=False)`` on each M-column strip (``official_ria_nm``),
  - RMSNorm instead: (a) the same Triton kernel unpermuted (``triton_unpermuted``; the
    permuted kernel's target is <= 1.05x its time), (b) ``torch_compile_rms_index_select``:
    ``F.rms_norm`` in the input dtype under ``torch.compile`` followed by ``index_select``
    (``rms_norm_index_select_baseline``, the strongest torch path a user has), (c)
    ``torch_eager``: the float32 reference. The permutation is passed as int64, as a model
    holds it; the kernel narrows it to int16 once (cached).
Every kernel's output is checked against its reference on the benchmark input before it
is timed. Median times come from ``triton.testing.do_bench`` (L2 flushed between runs).

Bytes counted (the traffic each kernel must move; small per-row/column vectors ignored):
  fused N:M prune (RIA):  2 reads of W (|W| sums pass + select pass) + 1 write of W + 1 mask byte
                          (2:4 and 4:8; targets >= 80% / >= 60% of copy, see triton_aot.md)
  fused unstructured:     2 reads of W + f32 score write + read, + mask + W write (kth select extra)
  N:M top-k on scores:    read f32 scores + 1 mask byte + f32 sum per group
  score kernel:           2 reads of W + f32 score write
  RMSNorm:                read x (+ residual), write y (+ h)
GB/s = bytes / median time; ``pct_copy`` = that / a measured device-to-device copy (read+write).

    python benchmarks/bench_kernels.py --out benchmarks/results          # all (~4 min on an H100)
    python benchmarks/bench_kernels.py --quick                           # 8192x28672 + RMSNorm 8192x8192
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (add_dry_run_argument, bench_ms, copy_bandwidth_gbps, dry_run_plan, print_table,  # noqa: E402
                     save_figure, write_rows)

from ria_kernels.ops.nm_mask import nm_topk_blocks, nm_topk_blocks_reference  # noqa: E402
from ria_kernels.ops.prune_fused import fused_prune, fused_prune_reference  # noqa: E402
from ria_kernels.ops.ria_score import _pruning_score_triton, pruning_score_reference  # noqa: E402
from ria_kernels.ops.rms_norm import (permuted_rms_norm, permuted_rms_norm_reference,  # noqa: E402
                                      rms_norm_index_select_baseline)

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (5120, 5120), (13824, 5120), (8192, 8192),
          (28672, 8192), (8192, 28672)]
ACCEPT_SHAPE = (8192, 28672)
RMS_HIDDEN = (4096, 5120, 8192)
RMS_TOKENS = 8192
KERNELS = ("fused_prune", "nm_topk", "score", "rms_norm")
DEV = "cuda"  # "cpu" only in --smoke mode (code-path check under TRITON_INTERPRET=1)
# mask agreement needed before timing: scores depend on the |W| sums, whose float32
# summation order differs between the kernel and torch; a near-tie may flip (rare).
MIN_AGREEMENT = 0.9999


def spec_is_nm(sparsity) -> bool:
    return isinstance(sparsity, str) and ":" in sparsity


def official_ria_nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The official RIA repo's N:M selection (``prune_ria``): loop over every column and,
    at each M-column strip, mark the ``n`` lowest scores with ``topk(largest=False)``.
    Returns the keep-mask (True = kept)."""
    w_mask = torch.zeros_like(score, dtype=torch.bool)
    for ii in range(score.shape[1]):
        if ii % m == 0:
            tmp = score[:, ii:(ii + m)].float()
            w_mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    return ~w_mask


def official_ria_nm(weight: torch.Tensor, act_norm: torch.Tensor, n: int, m: int, a: float = 0.5):
    """Official procedure end to end: RIA score (torch), the strip loop, then ``W[mask] = 0``."""
    keep = official_ria_nm_mask(pruning_score_reference(weight, act_norm, "ria", a), n, m)
    pruned = weight.clone()
    pruned[~keep] = 0
    return pruned, keep


def official_nm_topk(score: torch.Tensor, n: int, m: int):
    """The same strip loop on a score matrix, plus the retained score per group."""
    keep = official_ria_nm_mask(score, n, m)
    kept = torch.where(keep, score.float(), 0.0)
    return keep, kept.reshape(score.shape[0], -1, m).sum(-1)


class Runner:
    def __init__(self, quick: bool, smoke: bool = False):
        self.quick = quick
        self.rows: list[dict] = []
        self.gpu = "cpu-smoke (timings meaningless)" if smoke else torch.cuda.get_device_name()
        self.copy = 1.0 if smoke else copy_bandwidth_gbps()
        self._compiled: dict = {}
        print(f"{self.gpu}: measured D2D copy bandwidth {self.copy:.0f} GB/s", flush=True)

    def compiled(self, fn):
        if fn not in self._compiled:
            self._compiled[fn] = torch.compile(fn, dynamic=True)
        return self._compiled[fn]

    def time_compiled(self, fn, *args):
        """Median ms of the compiled reference, or None (reason recorded) if it fails to compile:
        a missing baseline is reported, never silently replaced."""
        try:
            cmp = self.compiled(fn)
            return _slow(lambda: cmp(*args))
        except Exception as exc:  # noqa: BLE001 - report any compile failure and go on
            print(f"torch.compile({fn.__name__}) failed: {type(exc).__name__}: {exc}"[:300], flush=True)
            return None

    def record(self, kernel, variant, shape, dtype, timings: dict, nbytes: int, extra: dict | None = None):
        base = timings["triton"]
        extra = dict(extra or {})
        for impl in [k for k, v in timings.items() if v is None]:
            extra[f"{impl}_failed"] = True
            del timings[impl]
        for impl, ms in timings.items():
            row = {"kernel": kernel, "variant": variant, "rows": shape[0], "cols": shape[1], "dtype": dtype,
                   "impl": impl, "median_ms": ms, "gbps": nbytes / (ms * 1e-3) / 1e9, "copy_gbps": self.copy,
                   "speedup_of_triton": ms / base, "gpu": self.gpu}
            row["pct_copy"] = 100 * row["gbps"] / self.copy
            row.update(extra)
            self.rows.append(row)
        msg = "  ".join(f"{k}={v:.3f}ms" for k, v in timings.items())
        print(f"{kernel:12s} {variant:10s} {shape[0]}x{shape[1]}: {msg}  "
              f"triton {nbytes / (base * 1e-3) / 1e9:.0f} GB/s", flush=True)


def _slow(fn):
    """A baseline that takes 10s-100s of ms per call: few repetitions."""
    return bench_ms(fn, warmup=1, rep=20)


def _wall_ms(fn, warmup: int = 1, rep: int = 3) -> float:
    """--smoke only: wall-clock median on the CPU (not a measurement of anything)."""
    import statistics
    import time
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_fused_prune(run: Runner, shapes):
    for r, c in shapes:
        w = torch.randn(r, c, device=DEV, dtype=torch.float16)
        act = torch.rand(c, device=DEV) + 0.1
        out = torch.empty_like(w)
        mask = torch.empty(r, c, device=DEV, dtype=torch.bool)
        for sparsity in ("2:4", "4:8") + (() if run.quick else (0.5,)):
            got_w, got_m = fused_prune(w, act, "ria", 0.5, sparsity, backend="triton", out=out, mask_out=mask)
            ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, sparsity)
            agree = float((got_m == ref_m).float().mean())
            if agree < MIN_AGREEMENT or not torch.equal(got_w, torch.where(got_m, w, 0)):
                raise SystemExit(f"fused_prune {sparsity} {r}x{c}: mask agreement {agree} vs reference")
            del ref_w, ref_m
            t = {"triton": bench_ms(lambda: fused_prune(w, act, "ria", 0.5, sparsity, backend="triton",
                                                        out=out, mask_out=mask)),
                 "torch_eager": _slow(lambda: fused_prune_reference(w, act, "ria", 0.5, sparsity))}
            t["torch_compile"] = run.time_compiled(fused_prune_reference, w, act, "ria", 0.5, sparsity)
            extra = {"mask_agreement_vs_reference": agree}
            if sparsity == "2:4":
                off_w, off_m = official_ria_nm(w, act, 2, 4)
                extra["official_mask_agreement"] = float((off_m == got_m).float().mean())
                del off_w, off_m
                t["official"] = _slow(lambda: official_ria_nm(w, act, 2, 4))
                nbytes = w.numel() * (3 * w.element_size() + 1)
            elif spec_is_nm(sparsity):
                nbytes = w.numel() * (3 * w.element_size() + 1)
            else:
                nbytes = w.numel() * (3 * w.element_size() + 2 * 4 + 1)
            run.record("fused_prune", str(sparsity), (r, c), "float16", t, nbytes, extra)
        del w, out, mask
        torch.cuda.empty_cache()


def bench_nm_topk(run: Runner, shapes):
    for r, c in shapes:
        s = torch.rand(r, c, device=DEV, dtype=torch.float32)
        mask, sums = nm_topk_blocks(s, 2, 4, backend="triton")
        ref_mask, ref_sums = nm_topk_blocks_reference(s, 2, 4)
        if not torch.equal(mask, ref_mask):
            raise SystemExit(f"nm_topk {r}x{c}: mask differs from the reference")
        torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)
        del mask, sums, ref_mask, ref_sums
        t = {"triton": bench_ms(lambda: nm_topk_blocks(s, 2, 4, backend="triton")),
             "torch_eager": _slow(lambda: nm_topk_blocks_reference(s, 2, 4)),
             "torch_compile": run.time_compiled(nm_topk_blocks_reference, s, 2, 4),
             "official": _slow(lambda: official_nm_topk(s, 2, 4))}
        run.record("nm_topk", "2:4", (r, c), "float32", t, s.numel() * (4 + 1) + s.numel() // 4 * 4)
        del s
        torch.cuda.empty_cache()


def bench_score(run: Runner, shapes):
    for r, c in shapes:
        w = torch.randn(r, c, device=DEV, dtype=torch.float16)
        act = torch.rand(c, device=DEV) + 0.1
        out = torch.empty(r, c, device=DEV, dtype=torch.float32)
        torch.testing.assert_close(_pruning_score_triton(w, act, "ria", 0.5, out=out),
                                   pruning_score_reference(w, act, "ria", 0.5), rtol=2e-5, atol=0)
        t = {"triton": bench_ms(lambda: _pruning_score_triton(w, act, "ria", 0.5, out=out)),
             "torch_eager": bench_ms(lambda: pruning_score_reference(w, act, "ria", 0.5)),
             "torch_compile": run.time_compiled(pruning_score_reference, w, act, "ria", 0.5)}
        run.record("score", "ria", (r, c), "float16", t, w.numel() * (2 * w.element_size() + 4))
        del w, out
        torch.cuda.empty_cache()


def bench_rms_norm(run: Runner, hiddens):
    for h in hiddens:
        x = torch.randn(RMS_TOKENS, h, device=DEV, dtype=torch.float16)
        res = torch.randn_like(x)
        w = torch.rand(h, device=DEV, dtype=torch.float16) + 0.5
        perm = torch.randperm(h, device=DEV)
        w_p = w[perm].contiguous()
        out, h_out = torch.empty_like(x), torch.empty_like(x)
        for residual in (None, res):
            variant = "plain" if residual is None else "residual"
            args = dict(validate=False, weight_permuted=True, out=out, backend="triton")
            if residual is not None:
                args["residual_out"] = h_out
            got = permuted_rms_norm(x, w_p, perm, 1e-6, residual, **args)
            ref = permuted_rms_norm_reference(x, w, perm, 1e-6, residual)
            for g, e in zip(got if residual is not None else (got,), ref if residual is not None else (ref,)):
                torch.testing.assert_close(g.float(), e.float(), rtol=2e-3, atol=2e-3)
            plain_args = {k: v for k, v in args.items() if k != "weight_permuted"}
            base = rms_norm_index_select_baseline(x, w, perm, 1e-6, residual)
            for g, e in zip(base if residual is not None else (base,), ref if residual is not None else (ref,)):
                torch.testing.assert_close(g.float(), e.float(), rtol=2e-2, atol=2e-2)  # input-dtype arithmetic
            t = {"triton": bench_ms(lambda: permuted_rms_norm(x, w_p, perm, 1e-6, residual, **args)),
                 "triton_unpermuted": bench_ms(lambda: permuted_rms_norm(x, w, None, 1e-6, residual, **plain_args)),
                 "torch_compile_rms_index_select": run.time_compiled(rms_norm_index_select_baseline, x, w, perm,
                                                                     1e-6, residual),
                 "torch_eager": bench_ms(lambda: permuted_rms_norm_reference(x, w, perm, 1e-6, residual))}
            nbytes = (2 if residual is None else 4) * x.numel() * x.element_size()
            run.record("rms_norm", variant, (RMS_TOKENS, h), "float16", t, nbytes)
        del x, res, out, h_out
        torch.cuda.empty_cache()


def _ms(rows, kernel, variant, shape, impl):
    for r in rows:
        if (r["kernel"], r["variant"], r["rows"], r["cols"], r["impl"]) == (kernel, variant, *shape, impl):
            return r["median_ms"], r
    return None, None


def acceptance(rows) -> dict:
    """The GPU acceptance quantities (issues 3 and 10), from this run's rows."""
    res = {}
    for sparsity, target in (("2:4", 80), ("4:8", 60)):
        tri, row = _ms(rows, "fused_prune", sparsity, ACCEPT_SHAPE, "triton")
        if tri is not None:
            res[f"fused_prune_{sparsity}_pct_copy_8192x28672"] = row["pct_copy"]
            res[f"fused_prune_{sparsity}_pct_copy_ok (>= {target})"] = row["pct_copy"] >= target
    tri, _ = _ms(rows, "fused_prune", "2:4", ACCEPT_SHAPE, "triton")
    off, _ = _ms(rows, "fused_prune", "2:4", ACCEPT_SHAPE, "official")
    if tri is not None and off is not None:
        res["fused_prune_speedup_vs_official_8192x28672"] = off / tri
        res["fused_prune_speedup_ok (>= 20)"] = off / tri >= 20
    for variant in ("plain", "residual"):
        perm, _ = _ms(rows, "rms_norm", variant, (RMS_TOKENS, 8192), "triton")
        if perm is None:
            continue
        plain, _ = _ms(rows, "rms_norm", variant, (RMS_TOKENS, 8192), "triton_unpermuted")
        comp, _ = _ms(rows, "rms_norm", variant, (RMS_TOKENS, 8192), "torch_compile_rms_index_select")
        eager, _ = _ms(rows, "rms_norm", variant, (RMS_TOKENS, 8192), "torch_eager")
        res[f"rms_{variant}_permuted_over_unpermuted_8192x8192"] = perm / plain
        res[f"rms_{variant}_permuted_over_unpermuted_ok (<= 1.05)"] = perm / plain <= 1.05
        if comp is not None:
            res[f"rms_{variant}_speedup_vs_compiled_rms_norm_index_select_8192x8192"] = comp / perm
        res[f"rms_{variant}_speedup_vs_fp32_reference_8192x8192"] = eager / perm
    return res


def plot(rows, path: Path, gpu: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(19, 5))
    ax = axes[0]
    for kernel, variant, marker in (("fused_prune", "2:4", "o"), ("fused_prune", "4:8", "D"), ("fused_prune", "0.5", "s"),
                                    ("nm_topk", "2:4", "^"), ("score", "ria", "v")):
        sel = [r for r in rows if (r["kernel"], r["variant"], r["impl"]) == (kernel, variant, "triton")]
        if sel:
            ax.plot([f"{r['rows']}x{r['cols']}" for r in sel], [r["pct_copy"] for r in sel], marker=marker,
                    label=f"{kernel} {variant}")
    ax.axhline(80, color="grey", ls="--", lw=0.8, label="80% (target, fused 2:4)")
    ax.axhline(60, color="grey", ls=":", lw=0.8, label="60% (target, fused 4:8)")
    ax.set_ylabel("% of measured D2D copy bandwidth")
    ax.set_title("Triton kernels: achieved bandwidth")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    ax = axes[1]
    for impl, marker in (("official", "o"), ("torch_eager", "s"), ("torch_compile", "^")):
        sel = [r for r in rows if (r["kernel"], r["variant"], r["impl"]) == ("fused_prune", "2:4", impl)]
        if sel:
            ax.plot([f"{r['rows']}x{r['cols']}" for r in sel], [r["speedup_of_triton"] for r in sel],
                    marker=marker, label=f"vs {impl}")
    ax.axhline(20, color="grey", ls="--", lw=0.8, label="20x (acceptance vs official)")
    ax.set_yscale("log")
    ax.set_ylabel("speedup of the Triton fused 2:4 prune")
    ax.set_title("fused RIA score + 2:4 prune vs baselines (fp16)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    ax = axes[2]
    rr = [r for r in rows if r["kernel"] == "rms_norm"]
    groups = sorted({(r["cols"], r["variant"]) for r in rr})
    impls = ("triton", "triton_unpermuted", "torch_compile_rms_index_select", "torch_eager")
    for i, impl in enumerate(impls):
        vals = [next((r["median_ms"] for r in rr if (r["cols"], r["variant"], r["impl"]) == (*g, impl)), 0)
                for g in groups]
        ax.bar([j + (i - 1.5) * 0.2 for j in range(len(groups))], vals, width=0.2,
               label="triton permuted" if impl == "triton" else impl)
    ax.set_xticks(list(range(len(groups))), [f"{RMS_TOKENS}x{h}\n{v}" for h, v in groups])
    ax.set_ylabel("median ms")
    ax.set_title("RMSNorm, permuted output (fp16)")
    ax.legend(fontsize=8)
    save_figure(fig, path, f"ria-kernels per-kernel benchmark on {gpu}")


def main() -> int:
    global DEV, RMS_TOKENS, bench_ms
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for kernels.json / kernels.png")
    ap.add_argument("--quick", action="store_true",
                    help=f"only {ACCEPT_SHAPE[0]}x{ACCEPT_SHAPE[1]} (2:4) and RMSNorm {RMS_TOKENS}x8192")
    ap.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS), help="subset to run")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU code-path check only (needs TRITON_INTERPRET=1): tiny shapes, wall-clock "
                         "timings that mean nothing; for testing this script without a GPU")
    add_dry_run_argument(ap)
    args = ap.parse_args()
    if args.dry_run:
        shapes = [ACCEPT_SHAPE] if args.quick else SHAPES
        hiddens = (8192,) if args.quick else RMS_HIDDEN
        cases = [f"rms_norm {RMS_TOKENS}x{h}" for h in hiddens if "rms_norm" in args.kernels]
        cases += [f"{k} {r}x{c}" for k in args.kernels if k != "rms_norm" for r, c in shapes]
        return dry_run_plan("bench_kernels", cases, ["kernels.json", "kernels.png"])
    if args.smoke:
        DEV, RMS_TOKENS, bench_ms = "cpu", 4, _wall_ms
        shapes, hiddens = [(8, 32), (5, 16)], (24,)
    elif not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (this machine has none); nothing measured")
        return 1
    else:
        shapes = [ACCEPT_SHAPE] if args.quick else SHAPES
        hiddens = (8192,) if args.quick else RMS_HIDDEN
    run = Runner(args.quick, args.smoke)
    if "rms_norm" in args.kernels:
        bench_rms_norm(run, hiddens)
    if "fused_prune" in args.kernels:
        bench_fused_prune(run, shapes)
    if "nm_topk" in args.kernels:
        bench_nm_topk(run, shapes)
    if "score" in args.kernels:
        bench_score(run, shapes)
    acc = acceptance(run.rows)
    write_rows(args.out, "kernels", run.rows, extra={"acceptance": acc, "quick": args.quick})
    plot(run.rows, Path(args.out) / "kernels.png", run.gpu)
    cols = ["kernel", "variant", "rows", "cols", "impl", "median_ms", "gbps", "pct_copy", "speedup_of_triton"]
    print_table(run.rows, cols)
    print("\nacceptance (issues 3 and 10):")
    for k, v in acc.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
