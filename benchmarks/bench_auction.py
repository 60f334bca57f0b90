#!/usr/bin/env python3
"""Assignment solvers on permutation-round gains: the batched Triton auction
(``ria_kernels.ops.auction``, solver ``auction_triton``) vs the torch auction and scipy.

Gains: ``B`` problems of size ``g``, each the gain matrix of one LSA round built by
``permutation.lsa_gain`` from a heavy-tailed (log-normal) score with ``rows = 4 g`` (the 2:4
search's shape: candidates vs the thresholds of the fixed channels), or uniform random
(``--kind random``). Per solver: wall time of the whole batch (CUDA synchronised; the Triton
solver once to warm its JIT first), bidding iterations, launches, and the worst relative gap
to scipy's optimum.

    python benchmarks/bench_auction.py --device cuda --sizes 256,512,1024,2048 --batch 1,4
    python benchmarks/bench_auction.py --device cpu --sizes 64 --batch 2 --solvers scipy,auction

Rows carry the date, device, versions and load average (``benchmarks/_common.environment``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ria_kernels.lsa import linear_sum_assignment, linear_sum_assignment_batched  # noqa: E402
from ria_kernels.ops.auction import auction_batched  # noqa: E402
from ria_kernels.permutation import lsa_gain_reference  # noqa: E402


def make_batch(kind: str, b: int, g: int, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.rand(b, g, g, generator=gen, dtype=torch.float64).to(device)
    out = []
    for _ in range(b):
        score = torch.exp(2.0 * torch.randn(4 * g, 2 * g, generator=gen, dtype=torch.float64)).to(device)
        out.append(lsa_gain_reference(score[:, :g], score[:, g:]))
    return torch.stack(out)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_solver(solver: str, gains: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """cols [B, g] and the solver's counters."""
    if solver == "auction_triton":
        res = auction_batched(gains, backend="triton")
        return res.cols, {"iterations": res.iterations.tolist(), "launches": res.launches, "phases": res.phases}
    if solver == "auction":
        from ria_kernels.lsa import auction
        cols, its = [], []
        for i in range(gains.shape[0]):
            r = auction(gains[i])
            cols.append(r.cols)
            its.append(r.iterations)
        return torch.stack(cols), {"iterations": its}
    rows, cols = linear_sum_assignment_batched(gains, solver=solver)
    return cols, {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--kind", default="heavy", choices=("heavy", "random"))
    ap.add_argument("--solvers", default=None,
                    help="comma list (default: auction_triton,auction,scipy on CUDA; auction,scipy on the CPU)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    solvers = (args.solvers or ("auction_triton,auction,scipy" if args.device.startswith("cuda")
                                else "auction,scipy")).split(",")
    from _common import environment
    env = environment()
    rows = []
    for g in (int(s) for s in args.sizes.split(",")):
        for b in (int(s) for s in args.batch.split(",")):
            gains = make_batch(args.kind, b, g, args.device, seed=g + b)
            opt = []
            for i in range(b):
                r, c = linear_sum_assignment(gains[i].cpu(), solver="scipy")
                opt.append(float(gains[i].cpu()[r, c].sum()))
            for solver in solvers:
                if solver == "auction_triton":
                    run_solver(solver, gains[:, :min(g, 8), :min(g, 8)].contiguous())  # JIT warm-up
                load = os.getloadavg()[0]
                _sync(args.device)
                t0 = time.perf_counter()
                cols, extra = run_solver(solver, gains)
                _sync(args.device)
                dt = time.perf_counter() - t0
                gap = max((opt[i] - float(gains[i].cpu()[torch.arange(g), cols[i].cpu()].sum())) / max(abs(opt[i]), 1e-300)
                          for i in range(b))
                row = {"kind": args.kind, "g": g, "batch": b, "solver": solver, "seconds": round(dt, 4),
                       "max_rel_gap": gap, "loadavg_before": load, "loadavg_after": os.getloadavg()[0], **extra}
                rows.append(row)
                print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "command": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
