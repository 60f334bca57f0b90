"""Per-token-bucket timing of a :class:`SparseLinear`'s backends and the persisted table of the
measurements (``$RIA_KERNELS_CACHE_DIR/sparse_linear.json``), keyed by device, torch and cuSPARSELt
versions."""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Callable

import torch

from .._io import atomic_write_text, cache_dir
from .._logging import logger
from ..ops import sparse_mm

ENV_AUTOTUNE = "RIA_KERNELS_SPARSE_AUTOTUNE"


def token_bucket(tokens) -> int:
    """Next power of two >= ``tokens`` (>= 1). A loop, so it also works on a SymInt."""
    b = 1
    while b < tokens:
        b *= 2
    return b

# --------------------------------------------------------------------------- measured table
def default_cache_path() -> Path:
    return cache_dir() / "sparse_linear.json"


class TuneTable:
    """Measured per-shape timings: ``{section: {key: entry}}`` persisted as JSON.

    section = device + torch + cuSPARSELt versions (:func:`device_section`);
    key = :func:`shape_key`; entry = ``{"ms": {backend: median ms (always "sparse24")}, "choice": str,
    "cslt_config": [alg_id, split_k, split_k_mode] | None, "tokens": int, "date": str}``.
    """

    VERSION = 2  # 2: timings are compared against the compact kernel ("sparse24"), not dense

    def __init__(self, path: str | os.PathLike | None = None, data: dict | None = None):
        self.path = None if path is None else Path(path)
        self.data: dict[str, dict[str, dict]] = data if data is not None else {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "TuneTable":
        path = default_cache_path() if path is None else Path(path)
        return cls(path, cls._read(path))

    @classmethod
    def _read(cls, path: Path) -> dict:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable SparseLinear tuning cache %s: %s", path, exc)
            return {}
        if not isinstance(raw, dict) or raw.get("version") != cls.VERSION or not isinstance(raw.get("sections"), dict):
            logger.warning("ignoring SparseLinear tuning cache %s: not version %d", path, cls.VERSION)
            return {}
        return raw["sections"]

    def get(self, section: str, key: str) -> dict | None:
        return self.data.get(section, {}).get(key)

    def entries(self, section: str) -> dict[str, dict]:
        return dict(self.data.get(section, {}))

    def put(self, section: str, key: str, entry: dict) -> None:
        with self._lock:
            self.data.setdefault(section, {})[key] = entry

    def save(self) -> None:
        """Merge with what is on disk now (another process may have added entries) and
        replace the file atomically."""
        if self.path is None:
            return
        with self._lock:
            merged = self._read(self.path)
            for sec, entries in self.data.items():
                merged.setdefault(sec, {}).update(entries)
            self.data = merged
            try:
                atomic_write_text(self.path, json.dumps({"version": self.VERSION, "sections": merged}, indent=1,
                                                        sort_keys=True))
            except OSError as exc:  # a read-only cache dir must not break inference
                logger.warning("could not write SparseLinear tuning cache %s: %s", self.path, exc)


_TABLE: TuneTable | None = None


def get_tune_table() -> TuneTable:
    global _TABLE
    if _TABLE is None:
        _TABLE = TuneTable.load()
    return _TABLE


def set_tune_table(table: TuneTable | None) -> None:
    """Replace the process-wide table (``None``: reload from the default path on next use)."""
    global _TABLE
    _TABLE = table


def device_section(device: torch.device) -> str:
    """Cache section: device name + capability, torch version, cuSPARSELt versions (ours / torch's)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"{device.type}|torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(device)
    torch_cslt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else 0
    return (f"{torch.cuda.get_device_name(device)} sm{major}{minor}|torch {torch.__version__}|"
            f"cusparselt {sparse_mm.cslt_version()}/{torch_cslt}")


def shape_key(out_features: int, in_features: int, dtype: torch.dtype, has_bias: bool, bucket: int) -> str:
    return f"N={out_features},K={in_features},{str(dtype).replace('torch.', '')},bias={int(has_bias)},T={bucket}"


# --------------------------------------------------------------------------- timing
# L2 size assumed when the device does not report one (bigger than any current NVIDIA L2)
DEFAULT_L2_BYTES = 128 << 20
_FLUSH_BUFFERS: dict[tuple[str, int], torch.Tensor] = {}


def l2_cache_bytes(device: torch.device) -> int:
    """The L2 size of ``device`` (``DEFAULT_L2_BYTES`` when unknown or not CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_L2_BYTES
    size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
    return int(size) if size and size > 0 else DEFAULT_L2_BYTES


def l2_flusher(device: torch.device, nbytes: int | None = None) -> Callable[[], None]:
    """A function that overwrites a buffer of ``nbytes`` (default twice the L2 size) on ``device``,
    evicting whatever the previous call left in L2. The buffer is allocated once per size."""
    device = torch.device(device)
    size = int(nbytes) if nbytes is not None else 2 * l2_cache_bytes(device)
    key = (str(device), size)
    buf = _FLUSH_BUFFERS.get(key)
    if buf is None:
        buf = _FLUSH_BUFFERS[key] = torch.empty(size, dtype=torch.uint8, device=device)
    return buf.zero_


def _cuda_event() -> "torch.cuda.Event":
    return torch.cuda.Event(enable_timing=True)


def _time_ms(fn: Callable[[], object], *, flush: Callable[[], object], target_ms: float = 5.0,
             min_reps: int = 5, max_reps: int = 100, new_event: Callable[[], object] = _cuda_event,
             synchronize: Callable[[], None] = torch.cuda.synchronize) -> float:
    """Median device ms of ONE call of ``fn``: every rep is ``flush(); start; fn(); end`` with its own
    event pair, so every call streams its weight from memory (not from an L2 the previous call
    filled -- back-to-back calls on one small compressed weight would favour it at decode sizes) and
    the flush is not timed. ``new_event`` / ``synchronize`` are seams for CPU tests."""
    fn()  # warm-up: compilation, plan creation
    synchronize()
    flush()
    start, end = new_event(), new_event()
    start.record()
    fn()
    end.record()
    synchronize()
    reps = max(min_reps, min(max_reps, int(target_ms / max(start.elapsed_time(end), 1e-3))))
    pairs = [(new_event(), new_event()) for _ in range(reps)]
    for start, end in pairs:
        flush()
        start.record()
        fn()
        end.record()
    synchronize()
    times = sorted(s.elapsed_time(e) for s, e in pairs)
    return times[len(times) // 2]


def _autotune_enabled() -> bool:
    return os.environ.get(ENV_AUTOTUNE, "1") != "0"

def _timings(entry: dict | None) -> dict | None:
    """An entry's timings, or None when it has none to compare (e.g. only a searched config)."""
    ms = None if entry is None else entry.get("ms")
    return ms if ms and "sparse24" in ms else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
