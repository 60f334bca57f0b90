"""Shared benchmark plumbing: environment rows, median timing, copy bandwidth,
JSON output and plots. Every benchmark imports its baseline from the op's
reference module; this file only measures and records."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch


def environment() -> dict:
    """Device and versions to stamp on every result file (the package versions are the run
    report's, ``ria_kernels.run_report.versions``)."""
    from ria_kernels.run_report import versions
    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **versions(),
           "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        env["driver"] = _driver_version()
    try:
        from ria_kernels import _build
        env["cusparselt"] = _build.cusparselt_version()
    except Exception:
        env["cusparselt"] = None
    return env


def _driver_version() -> str | None:
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def bench_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median time in ms of ``fn`` (CUDA events via triton.testing.do_bench)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


_COPY_GBPS: float | None = None


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written)."""
    global _COPY_GBPS
    if _COPY_GBPS is None:
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src))
        _COPY_GBPS = 2 * src.numel() / (ms * 1e-3) / 1e9
        del src, dst
    return _COPY_GBPS


def write_rows(out_dir: str | os.PathLike, name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Write ``{"env": ..., "rows": [...]}`` to ``out_dir/name.json`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"env": environment(), "rows": rows}
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}")
    return path


def save_figure(fig, path: str | os.PathLike, title: str) -> None:
    """Title, lay out and write a matplotlib figure (every benchmark's plot ends this way)."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def print_table(rows: Iterable[dict], cols: list[str]) -> None:
    rows = list(rows)
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---- --dry-run: every benchmark supports it (benchmarks/gpu_check.sh runs them all with it on a CPU
# machine before a GPU lease is spent): parse the arguments, import everything the run uses, build and
# validate the case list, print the plan, exit 0. No GPU, no files written.
def add_dry_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="parse arguments, import everything, build and print the case list, then exit 0 "
                             "without a GPU and without writing anything")


def dry_run_plan(name: str, cases: Sequence[object], outputs: Sequence[str]) -> int:
    """Print a benchmark's plan (``cases``: one printable item per measured case; ``outputs``: the
    file names it writes into ``--out``) and return the exit status 0. Raises ``ValueError`` on an
    empty case list: a benchmark that would measure nothing is an argument error."""
    if not cases:
        raise ValueError(f"{name}: the arguments select no cases")
    print(f"DRY-RUN {name}: {len(cases)} cases; would write {' '.join(outputs)}")
    for case in cases:
        print(f"  {case}")
    return 0
