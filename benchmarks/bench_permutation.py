#!/usr/bin/env python3
"""Channel-permutation time, like the RIA paper's Table A6 (A100: 6.2 / 8.1 / 11.5 / 15.3 s
for 4096² / 5120² / 6656² / 8192², 2:4, reallocation + LSA).

Rows: ria_kernels.channel_permutation (full LSA, and the fast variant with blocks=4/16)
and a faithful torch port of the official procedure's cost computation — a Python
loop over blocks, each building its column of the cost matrix with topk — run in
the same process. The official loop is timed on one LSA round and multiplied by M
(the number of rounds); the row says so.

    python benchmarks/bench_permutation.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_rows  # noqa: E402

from ria_kernels.permutation import channel_permutation, heuristic_allocation  # noqa: E402

PAPER_A100_S = {4096: 6.2, 5120: 8.1, 6656: 11.5, 8192: 15.3}


def official_cost_round(score, perm, n, m, p):
    """One round's cost matrix as the official code builds it: for every block, the
    retained N:M score with each candidate swapped in (loop over blocks)."""
    r, c = score.shape
    g = c // m
    grid = perm.reshape(g, m)
    cand = grid[:, p]
    cost = torch.empty(g, g, device=score.device)
    for b in range(g):
        others = torch.cat([grid[b, :p], grid[b, p + 1:]])
        fixed = score[:, others]  # [r, m-1]
        trial = torch.cat([fixed[:, None, :].expand(r, g, m - 1), score[:, cand][:, :, None]], dim=2)
        cost[:, b] = torch.topk(trial, m - n, dim=-1).values.sum(-1).sum(0)
    torch.cuda.synchronize()
    return cost


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sizes", default="4096,5120,6656,8192")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_permutation: needs a CUDA GPU; nothing measured")
        return 1
    rows = []
    channel_permutation(torch.rand(256, 256, device="cuda"), 2, 4)  # compile the kernel outside the timings
    for size in [int(s) for s in args.sizes.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(size)
        score = torch.rand(size, size, device="cuda", generator=g) * \
            torch.rand(size, device="cuda", generator=g) ** 3  # heavy-tailed channels, like RIA scores
        for blocks in (1, 4, 16):
            t, res = sync_time(lambda: channel_permutation(score, 2, 4, blocks=blocks))
            ident = res.retained["identity"]
            rows.append({"size": size, "method": "ria_kernels", "blocks": blocks, "time_s": t,
                         "paper_a100_s": PAPER_A100_S.get(size),
                         "retained_identity": ident, "retained_allocation": res.retained["allocation"],
                         "retained_lsa": res.retained["lsa"],
                         "gain_pct": 100 * (res.retained["lsa"] - ident) / ident})
            print(rows[-1], flush=True)
        perm = heuristic_allocation(score, 4)
        t1, _ = sync_time(lambda: official_cost_round(score, perm, 2, 4, 0))
        rows.append({"size": size, "method": "official_loop_port (1 round timed, x4)", "blocks": 1,
                     "time_s": 4 * t1, "paper_a100_s": PAPER_A100_S.get(size)})
        print(rows[-1], flush=True)
        for r in rows:
            if r["size"] == size and r["method"] == "ria_kernels":
                r["speedup_vs_official_port"] = rows[-1]["time_s"] / r["time_s"]
    write_rows(args.out, "permutation", rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = sorted({r["size"] for r in rows})
    for label, sel in (("ria_kernels full LSA", lambda r: r["method"] == "ria_kernels" and r["blocks"] == 1),
                       ("ria_kernels blocks=16", lambda r: r["method"] == "ria_kernels" and r["blocks"] == 16),
                       ("official loop (torch port)", lambda r: r["method"].startswith("official"))):
        ax.plot(sizes, [next(r["time_s"] for r in rows if r["size"] == s and sel(r)) for s in sizes], "o-",
                label=label)
    ax.plot(sizes, [PAPER_A100_S[s] for s in sizes], "k--", label="paper (A100)")
    ax.set_yscale("log")
    ax.set_xlabel("matrix size (square)")
    ax.set_ylabel("seconds (2:4, allocation + LSA)")
    ax.set_title(f"channel permutation time on {torch.cuda.get_device_name()}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out) / "permutation.png", dpi=110)
    print_table(rows, ["size", "method", "blocks", "time_s", "paper_a100_s", "gain_pct", "speedup_vs_official_port"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
