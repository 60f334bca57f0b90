"""Per-round assignment times of the channel-permutation search: scipy vs the sparse solver's
starts (zero prices, column reduction, auto) and a warm start from the previous round's prices.

Runs ``channel_permutation`` once (solver ``sparse``, blocks=1) on ``make_score``'s heavy-tailed
matrix of ``--shape``, keeps every round's gain matrix, then times each solver variant on each
round's matrix (one call each) and checks it reaches scipy's objective. One row per (round,
variant) with the seconds, the objective's relative difference from scipy's, and the sparse
solver's stats (augmentations, heap pops, relaxations, bound refreshes, final edges).

    OMP_NUM_THREADS=2 python benchmarks/bench_sparse_lap.py --shape 8192x8192 --pattern 2:4 \\
        --out benchmarks/results --name sparse_lap_rounds_8192
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_rows  # noqa: E402
from bench_permutation import machine, make_score  # noqa: E402

VARIANTS = ("scipy", "zero", "column", "auto", "warm")


def round_gains(score: torch.Tensor, n: int, m: int) -> list[torch.Tensor]:
    """The gain matrix of every LSA round of the search, in order."""
    from ria_kernels import permutation as P
    gains: list[torch.Tensor] = []
    orig = P.linear_sum_assignment

    def keep(gain, solver=None):
        gains.append(gain.clone())
        return orig(gain, solver=solver)

    P.linear_sum_assignment = keep
    try:
        P.channel_permutation(score, n, m, solver="sparse")
    finally:
        P.linear_sum_assignment = orig
    return gains


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="8192x8192", help="RxC of the score matrix")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="sparse_lap_rounds")
    args = ap.parse_args()
    rows_, cols_ = (int(v) for v in args.shape.lower().split("x"))
    n, m = (int(v) for v in args.pattern.split(":"))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    from scipy.optimize import linear_sum_assignment as scipy_lsa
    from ria_kernels.lsa_sparse import sparse_lap
    sparse_lap(torch.rand(8, 8, dtype=torch.float64))  # build / load the native solver
    score = make_score(rows_, "cpu", cols=cols_)
    t0 = time.perf_counter()
    gains = round_gains(score, n, m)
    extra = {"machine": machine(), "command": " ".join([Path(sys.executable).name] + sys.argv),
             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "search_s": time.perf_counter() - t0,
             "score_matrix": "make_score: rand(rows, cols) * rand(cols)**3, seeded by the shape"}
    out, prev_v = [], None
    for p, gain in enumerate(gains):
        g = gain.numpy()
        r_ref, c_ref = scipy_lsa(g, maximize=True)   # the reference objective (timed as 'scipy' below too)
        ref = float(g[r_ref, c_ref].sum())
        for variant in variants:
            if variant == "warm" and prev_v is None:
                continue
            row = {"shape": args.shape, "pattern": args.pattern, "round": p, "g": gain.shape[0], "variant": variant,
                   "loadavg_before": list(os.getloadavg())}
            t1 = time.perf_counter()
            if variant == "scipy":
                rr, cc = scipy_lsa(g, maximize=True)
                row["time_s"] = time.perf_counter() - t1
                total = float(g[rr, cc].sum())
            else:
                kw = {"start": "prices", "prices": prev_v} if variant == "warm" else {"start": variant}
                res = sparse_lap(gain, **kw)
                row["time_s"] = time.perf_counter() - t1
                total = float(gain[torch.arange(gain.shape[0]), res.cols].sum())
                row.update(gap=res.gap, **{f"stat_{k}": v for k, v in res.stats.items()})
                if variant == "auto":
                    auto_v = res.v
            row["rel_diff_vs_scipy"] = (total - ref) / abs(ref) if ref else total - ref
            out.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        prev_v = auto_v if "auto" in variants else sparse_lap(gain).v
    extra["machine_after"] = machine()
    write_rows(args.out, args.name, out, extra=extra)
    print_table(out, ["round", "g", "variant", "time_s", "rel_diff_vs_scipy", "stat_augments", "stat_relaxations",
                      "stat_refreshes", "stat_edges"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
