"""``SparseLinear``: a drop-in ``nn.Linear`` replacement for a pruned 2:4 weight.

``SparseLinear.from_linear(linear, *, backend=None)`` validates the pattern and
compresses the weight once for the backends this module may run:

- ``cusparselt``: this extension's cuSPARSELt matmul (searched algorithm config per token bucket),
- ``cutlass``: this extension's CUTLASS 2:4 kernel,
- ``torch_semi_structured``: torch's ``to_sparse_semi_structured`` (its own cuSPARSELt or CUTLASS),
- ``dense``: ``F.linear`` of the masked weight.

Backend selection (:func:`choose_backend` is the one dispatch point; :func:`requested_backend`
applies the precedence): an explicit ``backend=`` argument, else the env override
``RIA_KERNELS_SPARSE_BACKEND`` (read when the module is built), else automatic. A forced
backend that cannot run raises ``BackendUnavailableError`` naming the reason.
Automatic: CPU tensors run dense; on CUDA, per token bucket (next power of two of the
token count), the fastest of the available sparse backends and dense according to a
measured table; a sparse backend is chosen only when it measured at least
``SPARSE_MARGIN`` faster than dense, so small (decode) batches never run slower than dense.
The table is filled by timing on the first eager use of a bucket (CUDA events) or ahead of
time by :meth:`SparseLinear.tune` / :func:`tune_model`, and persisted as JSON in
``$RIA_KERNELS_CACHE_DIR/sparse_linear.json`` (default ``~/.cache/ria_kernels``), keyed by
device, torch and cuSPARSELt versions; searched cuSPARSELt configs are stored with it, so
plans are reusable across processes. Under ``torch.compile`` tracing or CUDA-graph capture
nothing is timed: a bucket with a table entry uses it, any other runs dense. Warm up (or
``tune``) every token count before capturing a CUDA graph: plan creation must not happen
during capture. ``RIA_KERNELS_SPARSE_AUTOTUNE=0`` disables timing on first use.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import BackendUnavailableError, RiaInputError
from ._logging import log_once, logger
from .ops import sparse_mm

BACKENDS = ("cusparselt", "cutlass", "torch_semi_structured", "dense")
SPARSE_BACKENDS = BACKENDS[:3]
ENV_BACKEND = "RIA_KERNELS_SPARSE_BACKEND"
ENV_CACHE_DIR = "RIA_KERNELS_CACHE_DIR"
ENV_AUTOTUNE = "RIA_KERNELS_SPARSE_AUTOTUNE"
# a sparse backend must beat dense by this fraction of dense's time to be chosen: timing
# noise must not flip a bucket to a kernel that is in fact as slow or slower
SPARSE_MARGIN = 0.03
# (out_features, in_features) multiples each extension backend accepts for fp16/bf16; for
# cutlass the sm80 kernel's, the loosest-to-state bound when the GPU's kernel is not known yet
# (sparse_mm.CUTLASS_SHAPE_MULTIPLES per kernel; torch's own path: its
# SparseSemiStructuredTensor*._DTYPE_SHAPE_CONSTRAINTS)
SHAPE_MULTIPLES = {"cusparselt": (16, 16), "cutlass": sparse_mm.CUTLASS_SHAPE_MULTIPLES["sm80"]}
# cuSPARSELt config used when none was searched for a bucket and searching is not possible
# (tracing / capture): algorithm 0, no split-K -- never triggers a search
DEFAULT_CSLT_CONFIG = (0, 1, 0)


# --------------------------------------------------------------------------- pattern
def check_2to4(weight: torch.Tensor, name: str = "weight") -> None:
    """RiaInputError unless every group of 4 consecutive input weights has at most 2 non-zeros."""
    if not isinstance(weight, torch.Tensor):
        raise RiaInputError(f"{name} must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise RiaInputError(f"{name} must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if weight.shape[1] % 4 != 0:
        raise RiaInputError(f"{name}: in_features={weight.shape[1]} is not divisible by 4 (2:4 sparsity)")
    bad, groups = _groups_over_2(weight)
    if bad:
        raise RiaInputError(f"{name} is not 2:4 sparse: {bad} of {groups} groups of 4 consecutive input "
                            "weights have more than 2 non-zeros (prune with sparsity '2:4' first)")


def is_2to4(weight: torch.Tensor) -> bool:
    """:func:`check_2to4` as a test: a 2-D tensor, in_features % 4 == 0, at most 2 non-zeros per group of 4."""
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] % 4 == 0
            and _groups_over_2(weight)[0] == 0)


def _groups_over_2(weight: torch.Tensor) -> tuple[int, int]:
    """(groups of 4 consecutive input weights with more than 2 non-zeros, number of groups)."""
    nnz = (weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1)
    return int((nnz > 2).sum()), nnz.numel()


def token_bucket(tokens) -> int:
    """Next power of two >= ``tokens`` (>= 1). A loop, so it also works on a SymInt."""
    b = 1
    while b < tokens:
        b *= 2
    return b


# --------------------------------------------------------------------------- availability
def requested_backend(backend: str | None = None) -> str | None:
    """The forced backend: ``backend`` argument, else env ``RIA_KERNELS_SPARSE_BACKEND``,
    else ``None`` (automatic). ``"auto"`` means automatic."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_BACKEND) or None
        source = f"env {ENV_BACKEND}"
    if backend is None:
        return None
    if not isinstance(backend, str):
        raise RiaInputError(f"backend must be a string, one of {BACKENDS} or 'auto', got {backend!r}")
    name = backend.strip().lower()
    if name == "auto":
        return None
    if name not in BACKENDS:
        raise RiaInputError(f"{source} must be one of {BACKENDS} or 'auto', got {backend!r}")
    return name


def _torch_semi_class(dtype: torch.dtype):
    """The SparseSemiStructuredTensor subclass torch itself would pick now."""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, \
        SparseSemiStructuredTensorCUTLASS
    use_cutlass = SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.backends.cusparselt.is_available()
    return SparseSemiStructuredTensorCUTLASS if use_cutlass else SparseSemiStructuredTensorCUSPARSELT


def torch_semi_structured(weight: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """``weight`` as torch's 2:4 tensor; ``impl`` ``"cusparselt"`` / ``"cutlass"`` forces torch's
    backend (``None``: torch's own pick, honouring ``SparseSemiStructuredTensor._FORCE_CUTLASS``)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS
    cls = {None: _torch_semi_class(weight.dtype), "cusparselt": SparseSemiStructuredTensorCUSPARSELT,
           "cutlass": SparseSemiStructuredTensorCUTLASS}.get(impl)
    if cls is None:
        raise RiaInputError(f"impl must be None, 'cusparselt' or 'cutlass', got {impl!r}")
    return cls.from_dense(weight.contiguous())


def backend_unavailable_reasons(device: torch.device, dtype: torch.dtype, out_features: int,
                                in_features: int, backends: Sequence[str] = BACKENDS) -> dict[str, str | None]:
    """``{backend: None if it can run this weight, else why not}``. Never loads the extension
    without CUDA (so CPU-only machines never try to build it)."""
    device = torch.device(device)
    out: dict[str, str | None] = {}
    common = None
    if device.type != "cuda":
        common = ("CUDA is not available on this machine" if not torch.cuda.is_available()
                  else f"the weight is on {device}, sparse backends need a CUDA device")
    elif dtype not in sparse_mm.SPARSE_DTYPES:
        common = f"sparse backends need float16/bfloat16 weights, got {dtype}"
    else:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            common = (f"2:4 sparse tensor cores need compute capability >= 8.0, "
                      f"{torch.cuda.get_device_name(device)} is {major}.{minor}")
    for b in backends:
        if b == "dense":
            out[b] = None
            continue
        if common is not None:
            out[b] = common
            continue
        if b == "torch_semi_structured":
            cls = _torch_semi_class(dtype)
            lim = cls._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
            mr, mc = (lim.sparse_min_rows, lim.sparse_min_cols) if lim else (0, 0)
            if lim is None:
                out[b] = f"torch's {cls.__name__} does not support {dtype}"
            elif out_features % mr or in_features % mc:
                out[b] = (f"torch's {cls.__name__} needs out_features % {mr} == 0 and in_features % {mc} == 0, "
                          f"got [{out_features}, {in_features}]")
            else:
                out[b] = None
            continue
        mn, mk = SHAPE_MULTIPLES[b]
        kernel = b
        if b == "cutlass" and sparse_mm.load_ops():  # the kernel (and its limits) depends on the GPU
            arch = sparse_mm.cutlass_arch(device)
            if arch is not None:
                mn, mk = sparse_mm.CUTLASS_SHAPE_MULTIPLES[arch]
                kernel = f"cutlass ({arch} kernel)"
        if out_features % mn or in_features % mk:
            out[b] = (f"{kernel} needs out_features % {mn} == 0 and in_features % {mk} == 0, "
                      f"got [{out_features}, {in_features}]")
        elif not sparse_mm.load_ops():
            out[b] = f"the ria_kernels CUDA extension is not available: {sparse_mm.extension_status()}"
        elif b == "cusparselt" and not sparse_mm.cslt_available():
            out[b] = "the ria_kernels extension was built without cuSPARSELt"
        elif b == "cutlass" and not sparse_mm.cutlass_available():
            out[b] = "the ria_kernels extension was built without its CUTLASS kernel"
        else:
            out[b] = None
    return out


# --------------------------------------------------------------------------- the dispatch point
def choose_backend(requested: str | None, *, device_type: str, unavailable: Mapping[str, str | None],
                   timings: Mapping[str, float] | None = None,
                   measure: Callable[[list[str]], Mapping[str, float]] | None = None,
                   margin: float = SPARSE_MARGIN) -> tuple[str, str]:
    """Pick the backend for one call; returns ``(backend, why)``.

    ``requested``: the forced backend from :func:`requested_backend` (``None``: automatic).
    ``unavailable``: the module's candidate backends, each mapped to ``None`` (can run) or the
    reason it cannot. ``timings``: measured medians in ms for this (shape, dtype, token bucket),
    or ``None``; ``measure(backends)`` produces them when allowed (``None`` during tracing or
    graph capture). Rules: forced wins (raises when unavailable); CPU runs dense; otherwise the
    fastest measured sparse backend if it beats dense by ``margin``, else dense.
    """
    if requested is not None:
        if requested not in BACKENDS:
            raise RiaInputError(f"backend must be one of {BACKENDS}, got {requested!r}")
        if requested not in unavailable:
            raise BackendUnavailableError(f"backend {requested!r} was not prepared for this module")
        if unavailable[requested] is not None:
            raise BackendUnavailableError(f"backend {requested!r} forced but unavailable: {unavailable[requested]}")
        return requested, "forced"
    if device_type != "cuda":
        return "dense", f"{device_type} tensors run dense"
    usable = [b for b in SPARSE_BACKENDS if b in unavailable and unavailable[b] is None]
    if not usable:
        why = "; ".join(f"{b}: {r}" for b, r in unavailable.items() if r is not None) or "none prepared"
        return "dense", f"no sparse backend can run ({why})"
    if timings is None:
        if measure is None:
            return "dense", "no measured entry for this token bucket and timing is not possible now " \
                            "(torch.compile tracing / CUDA-graph capture / autotune off)"
        timings = measure(usable + ["dense"])
    if "dense" not in timings:
        return "dense", "no dense timing to compare against"
    timed = [(timings[b], b) for b in usable if b in timings and math.isfinite(timings[b])]
    if not timed:
        return "dense", "no sparse backend was timed"
    best_ms, best = min(timed)
    dense_ms = timings["dense"]
    if best_ms <= dense_ms * (1.0 - margin):
        return best, f"measured {best} {best_ms:.4g} ms vs dense {dense_ms:.4g} ms"
    return "dense", f"dense {dense_ms:.4g} ms; best sparse {best} {best_ms:.4g} ms is not {margin:.0%} faster"


# --------------------------------------------------------------------------- measured table
def default_cache_path() -> Path:
    root = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "ria_kernels")
    return Path(root) / "sparse_linear.json"


class TuneTable:
    """Measured per-shape timings: ``{section: {key: entry}}`` persisted as JSON.

    section = device + torch + cuSPARSELt versions (:func:`device_section`);
    key = :func:`shape_key`; entry = ``{"ms": {backend: median ms}, "choice": str,
    "cslt_config": [alg_id, split_k, split_k_mode] | None, "tokens": int, "date": str}``.
    """

    VERSION = 1

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
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sparse_linear.", suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": self.VERSION, "sections": merged}, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
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


def _time_ms(fn: Callable[[], object], target_ms: float = 5.0, groups: int = 5) -> float:
    """Median ms per call of ``fn`` over ``groups`` groups of back-to-back calls (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = max(1, min(50, int(target_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(groups):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    times.sort()
    return times[len(times) // 2]


def _autotune_enabled() -> bool:
    return os.environ.get(ENV_AUTOTUNE, "1") != "0"


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# --------------------------------------------------------------------------- the module
class SparseLinear(nn.Module):
    """``y = x W^T + b`` with a 2:4-sparse ``W [out_features, in_features]``; drop-in for ``nn.Linear``.

    Memory kept: the masked dense ``weight`` (a parameter) only when ``dense`` may run
    (automatic mode, or ``backend="dense"``; ``weight`` is ``None`` for a forced sparse
    backend), plus one compressed copy per prepared sparse backend (about 0.56x the dense
    weight each: half the values + metadata). Automatic mode prepares one sparse backend, the
    first that can run of cusparselt > cutlass > torch_semi_structured (about 1.56x the dense
    weight in all, since dense must stay available for decode-sized inputs); ``candidates``
    names the sparse backends to prepare and time instead; :meth:`release_unused` frees
    those no tuned bucket chose.
    Compressed copies are plain attributes built on the weight's device: build the module on
    the device it will run on (``.to()`` moves only ``weight`` / ``bias``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None, *,
                 candidates: Sequence[str] | None = None):
        super().__init__()
        check_2to4(weight)
        n, k = weight.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
            raise RiaInputError(f"bias must have shape [{n}], got {getattr(bias, 'shape', type(bias))}")
        if not weight.dtype.is_floating_point:
            raise RiaInputError(f"weight must be floating point, got {weight.dtype}")
        self.in_features, self.out_features = k, n
        self._dtype, self._device = weight.dtype, weight.device
        forced = requested_backend(backend)
        if candidates is not None:
            bad = [c for c in candidates if c not in SPARSE_BACKENDS]
            if bad:
                raise RiaInputError(f"candidates must be sparse backends from {SPARSE_BACKENDS}, got {bad}")
        wanted = (forced,) if forced else (*[b for b in SPARSE_BACKENDS if candidates is None or b in candidates],
                                           "dense")
        reasons = backend_unavailable_reasons(weight.device, weight.dtype, n, k, wanted)
        if forced is None and candidates is None:
            # memory: by default one compressed copy, of the first backend that can run in
            # preference order (ours first: cached plans, epilogue); candidates= times more
            first = next((b for b in SPARSE_BACKENDS if reasons.get(b, "") is None), None)
            for b in SPARSE_BACKENDS:
                if b != first and reasons.get(b, "") is None:
                    reasons[b] = f"not prepared: automatic mode prepares {first} only (pass candidates= to add it)"
        if forced is not None and reasons[forced] is not None:
            raise BackendUnavailableError(f"SparseLinear [{n}x{k} {weight.dtype}]: backend {forced!r} forced "
                                          f"but unavailable: {reasons[forced]}")
        # only backends that can run are prepared; unavailable ones keep their reason for the log
        self._unavailable = reasons
        self._forced = forced
        usable = [b for b in wanted if reasons[b] is None]
        self.backend = forced or ("auto" if any(b != "dense" for b in usable) else "dense")
        w = weight.detach()
        if not w.is_contiguous():
            w = w.contiguous()
        self.weight = nn.Parameter(w.clone(), requires_grad=False) if "dense" in usable else None
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype).clone(),
                                                           requires_grad=False)
        self._cslt = self._cutlass = self._torch_sparse = None
        if "cusparselt" in usable:
            self._cslt = sparse_mm.cslt_compress(w)
        if "cutlass" in usable:
            self._cutlass = sparse_mm.cutlass_compress(w)
        if "torch_semi_structured" in usable:
            self._torch_sparse = torch_semi_structured(w)
        # token bucket -> (backend, cslt config); read as a plain dict under torch.compile
        self._memo: dict[int, tuple[str, tuple[int, int, int] | None]] = {}
        self._section = device_section(weight.device) if weight.device.type == "cuda" else None
        skipped = {b: r for b, r in reasons.items() if r is not None}
        log_once(("SparseLinear.build", n, k, str(weight.dtype), self.backend, tuple(sorted(skipped))),
                 "SparseLinear [%dx%d %s]: mode=%s, prepared=%s%s", n, k, weight.dtype, self.backend, usable,
                 f", unavailable: {skipped}" if skipped else "")
        if self.backend == "auto":
            self._load_memo()
            log_once(("SparseLinear.compile_note",),
                     "SparseLinear: under torch.compile / CUDA-graph capture nothing is timed; token buckets "
                     "without a measured entry run dense there (tune() first)")

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, backend: str | None = None,
                    candidates: Sequence[str] | None = None) -> "SparseLinear":
        """Build from a pruned ``nn.Linear`` (validates the 2:4 pattern, compresses once)."""
        if not isinstance(linear, nn.Linear):
            raise RiaInputError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, backend, candidates=candidates)

    # ----------------------------------------------------------------- selection
    def _key(self, bucket: int) -> str:
        return shape_key(self.out_features, self.in_features, self._dtype, self.bias is not None, bucket)

    def _load_memo(self) -> None:
        """Pre-fill the per-bucket choices from the on-disk table (so compiled code sees them)."""
        prefix = self._key(0).rsplit("T=", 1)[0]
        for key, entry in get_tune_table().entries(self._section).items():
            if key.startswith(prefix):
                self._decide(int(key.rsplit("T=", 1)[1]), entry, measure=None)

    def _decide(self, bucket: int, entry: dict | None, measure) -> tuple[str, tuple | None]:
        timings = _timings(entry)
        backend, why = choose_backend(self._forced, device_type=self._device.type, unavailable=self._unavailable,
                                      timings=timings, measure=measure)
        if measure is not None and timings is None:
            entry = get_tune_table().get(self._section, self._key(bucket))  # written by the measurement
            timings = _timings(entry)
        cfg = None
        if backend == "cusparselt":
            cfg = tuple(entry["cslt_config"]) if entry and entry.get("cslt_config") else None
        log_once(("SparseLinear", self.out_features, self.in_features, str(self._dtype), bucket, backend),
                 "SparseLinear [%dx%d %s] tokens<=%d: backend=%s (%s)", self.out_features, self.in_features,
                 self._dtype, bucket, backend, why)
        decided = timings is not None or self._device.type != "cuda" or why.startswith("no sparse backend")
        if decided:  # a "cannot time now" dense pick is not memoised: a later eager call may measure
            self._memo[bucket] = (backend, cfg)
        return backend, cfg

    def _select(self, tokens) -> tuple[str, tuple | None]:
        if self.backend == "dense":
            return "dense", None
        bucket = token_bucket(tokens)
        hit = self._memo.get(bucket)
        if hit is not None:
            return hit
        if torch.compiler.is_compiling():
            if self._forced is not None:
                return self._forced, DEFAULT_CSLT_CONFIG if self._forced == "cusparselt" else None
            return "dense", None  # no timing while tracing (logged once at construction)
        return self._select_eager(int(bucket))

    def _select_eager(self, bucket: int) -> tuple[str, tuple | None]:
        capturing = _capturing(self._device)
        if self._forced is not None:
            cfg = None
            if self._forced == "cusparselt":
                entry = get_tune_table().get(self._section, self._key(bucket))
                if entry and entry.get("cslt_config"):
                    cfg = tuple(entry["cslt_config"])
                elif capturing:
                    cfg = DEFAULT_CSLT_CONFIG  # no search inside capture
                else:
                    cfg = self._search_cslt(bucket)
                    merged = dict(entry or {"ms": {}, "choice": None, "tokens": bucket})
                    merged.update(cslt_config=list(cfg), date=_now())
                    get_tune_table().put(self._section, self._key(bucket), merged)
                    get_tune_table().save()
            log_once(("SparseLinear", self.out_features, self.in_features, str(self._dtype), bucket, self._forced),
                     "SparseLinear [%dx%d %s] tokens<=%d: backend=%s (forced)", self.out_features,
                     self.in_features, self._dtype, bucket, self._forced)
            if not capturing or cfg != DEFAULT_CSLT_CONFIG:
                self._memo[bucket] = (self._forced, cfg)
            return self._forced, cfg
        entry = get_tune_table().get(self._section, self._key(bucket))
        measure = None
        if _timings(entry) is None and not capturing and _autotune_enabled():
            measure = lambda cands: self._measure(bucket, cands)["ms"]  # noqa: E731
        return self._decide(bucket, entry, measure)

    # ----------------------------------------------------------------- measurement
    def _example(self, tokens: int) -> torch.Tensor:
        g = torch.Generator(device=self._device).manual_seed(tokens)
        return torch.randn(tokens, self.in_features, device=self._device, dtype=self._dtype, generator=g)

    def _search_cslt(self, tokens: int) -> tuple[int, int, int]:
        x = self._example(tokens)
        return tuple(sparse_mm.cslt_search(x, self._cslt, self.out_features, self.bias, None))

    def _measure(self, bucket: int, backends: Sequence[str]) -> dict:
        """Time ``backends`` at ``bucket`` tokens; store and persist the entry; return it."""
        x = self._example(bucket)
        cfg = self._search_cslt(bucket) if "cusparselt" in backends else None
        ms = {b: _time_ms(lambda b=b: self._run(b, x, cfg)) for b in backends}
        choice, _ = choose_backend(None, device_type="cuda", unavailable=self._unavailable, timings=ms)
        entry = {"ms": ms, "choice": choice, "cslt_config": None if cfg is None else list(cfg), "tokens": bucket,
                 "date": _now()}
        table = get_tune_table()
        table.put(self._section, self._key(bucket), entry)
        table.save()
        return entry

    def tune(self, token_counts: Iterable[int], *, remeasure: bool = False) -> dict[int, str]:
        """Measure (or search, for a forced cuSPARSELt) every token bucket of ``token_counts`` now,
        eagerly; returns ``{bucket: backend}``. Call before ``torch.compile`` / graph capture."""
        out = {}
        for t in token_counts:
            if int(t) < 1:
                raise RiaInputError(f"token_counts must be >= 1, got {t}")
            b = token_bucket(int(t))
            if remeasure:
                self._memo.pop(b, None)
            if self.backend == "auto" and b not in self._memo:  # measures even with autotune-on-use off
                entry = None if remeasure else get_tune_table().get(self._section, self._key(b))
                if _timings(entry) is None:
                    entry = self._measure(b, [c for c in BACKENDS if self._unavailable.get(c, "") is None])
                self._decide(b, entry, measure=None)
            out[b] = self._select(b)[0]
        return out

    def backend_for(self, tokens: int) -> str:
        """The backend ``forward`` uses for ``tokens`` rows (eager; may time the bucket first)."""
        return self._select(int(tokens))[0]

    def release_unused(self) -> list[str]:
        """Free the compressed copies of sparse backends no memoised bucket uses; returns them."""
        if self._forced is not None:
            return []
        used = {b for b, _ in self._memo.values()}
        freed = []
        for b, attr in (("cusparselt", "_cslt"), ("cutlass", "_cutlass"), ("torch_semi_structured", "_torch_sparse")):
            if getattr(self, attr) is not None and b not in used:
                setattr(self, attr, None)
                self._unavailable[b] = "released by release_unused()"
                freed.append(b)
        return freed

    # ----------------------------------------------------------------- compute
    def _run(self, backend: str, x2: torch.Tensor, cfg) -> torch.Tensor:
        if backend == "dense":
            return F.linear(x2, self.weight, self.bias)
        if backend == "cusparselt":
            alg, split_k, mode = cfg if cfg is not None else DEFAULT_CSLT_CONFIG
            return torch.ops.ria_kernels.cslt_mm(x2, self._cslt, self.out_features, self.bias, None,
                                                 alg, split_k, mode)
        if backend == "cutlass":
            values, meta = self._cutlass
            return sparse_mm.cutlass_mm_op(meta)(x2, values, meta, self.bias, None)
        return F.linear(x2, self._torch_sparse, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RiaInputError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype != self._dtype:
            raise RiaInputError(f"x dtype {x.dtype} != SparseLinear dtype {self._dtype}")
        x2 = x.reshape(-1, self.in_features)  # a view when x is contiguous
        tokens = x2.shape[0]
        if tokens == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        backend, cfg = self._select(tokens)
        if backend == "dense":
            return F.linear(x, self.weight, self.bias)
        if x.device != self._device:
            raise RiaInputError(f"x is on {x.device} but this SparseLinear's compressed weight is on {self._device}")
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        return self._run(backend, x2, cfg).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"backend={self.backend}")


def tune_model(model: nn.Module, token_counts: Iterable[int]) -> dict[str, dict[int, str]]:
    """:meth:`SparseLinear.tune` on every ``SparseLinear`` of ``model`` (the table is shared by
    shape, so repeated shapes are measured once)."""
    counts = list(token_counts)
    return {name: m.tune(counts) for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def _timings(entry: dict | None) -> dict | None:
    """An entry's timings, or None when it has none to compare (e.g. only a searched config)."""
    ms = None if entry is None else entry.get("ms")
    return ms if ms and "dense" in ms else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
