#!/usr/bin/env python3
"""Compile a slice's Triton kernels before its tests and benchmarks run (``benchmarks/gpu_check.sh``), and
report the compile time as its own line.

On a fresh GPU machine Triton's cache is cold: a decode sweep alone compiles several variants per shape
family (``USE_SPLIT``, ``EVEN_K``, ``BLOCK_T``), and inside the tests' or benchmarks' timeouts that compile
time is indistinguishable from a slow kernel. This step launches, once each, the representative launches
the package declares for the AOT gate (every module's ``aot_cases()``; for the extension slice also
``bench_decode.py``'s shape x token plan), with the default device set to the GPU, in ``--jobs`` processes
at once (compiling is CPU work and the machine has 16 cores). Triton writes every compiled variant to its
on-disk cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``), where the later test and benchmark
processes find it. Inputs are uninitialised (``torch.empty``): only the launch configuration matters here;
correctness is the tests' job.

Every case is called twice; the first call's time minus the second's is taken as its compile (and first-
load) time. The last line printed is::

    JIT compile: 184.2 s summed over 133 cases (first call minus repeat call), wall 27.5 s in 8 processes, 0 failed

    python3 benchmarks/warm_jit.py --slice kernels               # on the GPU machine
    python3 benchmarks/warm_jit.py --slice extension --dry-run   # list the cases (any machine)

A case that raises is named on a ``!! warm-up case failed`` line and makes the exit status 1 (the launch
would fail the same way in a benchmark); the other cases still run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The modules whose Triton kernels each slice's tests and benchmarks launch.
SLICE_MODULES = {
    "kernels": ("ria_kernels.ops.ria_score", "ria_kernels.ops.nm_mask", "ria_kernels.ops.prune_fused",
                "ria_kernels.ops.rms_norm", "ria_kernels.ops.sparse24_mm"),
    "extension": ("ria_kernels.ops.sparse24_mm",),
    "e2e": ("ria_kernels.ops.sparse24_mm", "ria_kernels.ops.rms_norm", "ria_kernels.permutation"),
}
RESULT_TAG = "WARM-RESULT "

Case = tuple[str, Callable[[], object]]


def _decode_plan_cases() -> list[Case]:
    """bench_decode.py's fp16 (N, K, T) launches: the sweep the extension slice times."""
    import torch

    import bench_decode
    from ria_kernels.ops.sparse24_mm import sparse24_mm

    def case(n: int, k: int, t: int) -> Case:
        def run():
            x = torch.empty((t, k), dtype=torch.float16)
            values = torch.empty((n, k // 2), dtype=torch.float16)
            meta = torch.zeros((n, k // 8), dtype=torch.uint8)
            return sparse24_mm(x, values, meta, backend="triton")
        return f"bench_decode sparse24_mm T={t} N={n} K={k} float16", run

    seen, cases = set(), []
    for row in bench_decode.plan(bench_decode.parse_args([])):
        key = (row["n"], row["k"], row["t"])
        if key not in seen:
            seen.add(key)
            cases.append(case(*key))
    return cases


def collect_cases(slice_: str, match: str | None = None) -> list[Case]:
    """The slice's warm-up launches, de-duplicated by label, optionally filtered by a regex on the label."""
    cases: list[Case] = []
    for name in SLICE_MODULES[slice_]:
        cases += list(importlib.import_module(name).aot_cases())
    if slice_ == "extension":
        cases += _decode_plan_cases()
    seen, unique = set(), []
    for label, fn in cases:
        if label not in seen and (match is None or re.search(match, label)):
            seen.add(label)
            unique.append((label, fn))
    return unique


def run_cases(cases: list[Case], sync: Callable[[], None], deadline: float | None = None) -> dict:
    """Call every case twice; per-case (first, repeat) seconds, the failures, and how many cases were not
    started because ``deadline`` (a ``time.time()``) had passed."""
    times, failed = [], []
    for i, (label, fn) in enumerate(cases):
        if deadline is not None and time.time() >= deadline:
            return {"times": times, "failed": failed, "not_reached": len(cases) - i}
        try:
            t0 = time.perf_counter()
            fn()
            sync()
            t1 = time.perf_counter()
            fn()
            sync()
            t2 = time.perf_counter()
        except Exception as exc:  # named, counted, and the next case runs
            failed.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        times.append((label, t1 - t0, t2 - t1))
    return {"times": times, "failed": failed, "not_reached": 0}


def summary(results: list[dict], wall_s: float, jobs: int) -> str:
    times = [t for r in results for t in r["times"]]
    failed = sum(len(r["failed"]) for r in results)
    compile_s = sum(max(0.0, first - repeat) for _, first, repeat in times)
    not_reached = sum(r.get("not_reached", 0) for r in results)
    return (f"JIT compile: {compile_s:.1f} s summed over {len(times)} cases (first call minus repeat call), "
            f"wall {wall_s:.1f} s in {jobs} process{'es' if jobs > 1 else ''}, {failed} failed"
            + (f", {not_reached} not reached within the budget (the tests compile those)" if not_reached else ""))


def _worker(slice_: str, shard: int, shards: int, device: str, match: str | None, deadline: float | None) -> int:
    import torch

    if device == "cuda":
        torch.set_default_device("cuda")  # the cases' torch.empty(...) allocate on the GPU
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731 - CPU (the interpreter, tests): nothing is asynchronous
    cases = collect_cases(slice_, match)[shard::shards]
    result = run_cases(cases, sync, deadline)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slice", required=True, choices=sorted(SLICE_MODULES))
    p.add_argument("--jobs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="processes compiling at once (default: half the cores, at most 8)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: run the cases on CPU tensors (TRITON_INTERPRET=1; CI's check of this script)")
    p.add_argument("--match", default=None, help="only the cases whose label matches this regex")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no case after this many seconds (the rest are counted as not reached; the step "
                        "ends inside its gpu_check.sh budget instead of being killed)")
    p.add_argument("--dry-run", action="store_true", help="list the cases and exit (no GPU needed)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "i/n": run shard i of n, print JSON
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # time.time() for workers
    args = p.parse_args(argv)
    if args.worker:
        shard, shards = (int(v) for v in args.worker.split("/"))
        return _worker(args.slice, shard, shards, args.device, args.match, args.deadline)
    cases = collect_cases(args.slice, args.match)
    if args.dry_run:
        print(f"DRY-RUN warm_jit: {len(cases)} cases for slice {args.slice} in {args.jobs} process(es)")
        for label, _ in cases:
            print(f"  {label}")
        return 0 if cases else 1
    if not cases:
        print(f"!! warm_jit: no cases for slice {args.slice} (match {args.match!r})")
        return 1
    jobs = max(1, min(args.jobs, len(cases)))
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--slice", args.slice, "--device", args.device]
    if args.match:
        cmd += ["--match", args.match]
    if args.budget_s is not None:
        cmd += ["--deadline", repr(time.time() + args.budget_s)]
    procs = [subprocess.Popen(cmd + ["--worker", f"{i}/{jobs}"], stdout=subprocess.PIPE, text=True)
             for i in range(jobs)]
    results, status = [], 0
    for i, proc in enumerate(procs):
        out, _ = proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            print(f"!! warm-up process {i}/{jobs} exited {proc.returncode} without a result")
            status = 1
            continue
        results.append(json.loads(lines[-1][len(RESULT_TAG):]))
    for r in results:
        for f in r["failed"]:
            print(f"!! warm-up case failed: {f}")
            status = 1
    slowest = sorted((t for r in results for t in r["times"]), key=lambda t: t[1] - t[2], reverse=True)[:3]
    for label, first, repeat in slowest:
        print(f"   slowest first call: {label}: {first:.2f} s (repeat {repeat * 1e3:.2f} ms)")
    print(summary(results, time.perf_counter() - t0, jobs))
    return status


if __name__ == "__main__":
    sys.exit(main())
