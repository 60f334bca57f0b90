"""Shared benchmark plumbing: environment rows, median timing, copy bandwidth,
JSON output and plots. Every benchmark imports its baseline from the op's
reference module; this file only measures and records."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Callable, Iterable

import torch


def environment() -> dict:
    """Device and versions to stamp on every result file."""
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except Exception:
        pass
    try:
        from ria_kernels import _build
        env["cusparselt"] = _build.cusparselt_version()
    except Exception:
        env["cusparselt"] = None
    return env


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
