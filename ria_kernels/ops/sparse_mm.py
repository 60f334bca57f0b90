"""2:4-sparse matmul ops of the CUDA extension ``ria_kernels._C``: checked Python
wrappers, their fake (meta) implementations, and the torch reference.

Every matmul computes ``y = alpha[n] * (x @ W^T) + bias[n]`` for a 2:4-sparse
``W [N, K]`` (2 non-zeros in every 4 consecutive entries along K), ``x [T, K]``
row-major, ``y [T, N]`` row-major in x's dtype (float16 / bfloat16); ``bias``
([N], x's dtype) and ``alpha`` ([N], float32) are optional.

The extension is never imported at package import time: :func:`load_ops` loads it
on first use (through ``ria_kernels._build.load_extension``), then registers the
fake implementations with ``torch.library.register_fake`` so the ops trace under
``torch.compile``. Host-only queries (``cslt_available``, ``cslt_version``,
``cslt_cache_stats``, ``cslt_clear_cache``, ``cutlass_available``, ``cutlass90_available``) take no tensors
and are never traced, so they get no fake.

``cslt_search`` / ``cslt_mm`` configs are ``[alg_id, split_k, split_k_mode]`` as
returned by ``cslt_search`` (their exact meaning is documented with the C++ op);
``alg_id = -1`` asks the extension for its in-memory searched config of this
problem key, searching on first use (never do that inside CUDA-graph capture).

``cutlass_sparse_mm`` configs are rows of :data:`CUTLASS_CONFIGS` (the C++ table
``csrc/cutlass_sparse_configs.h``): config 0 is the prefill tile, the others narrow
token tiles (16/32/64) with serial split-K (sm80) or stream-K (sm90) for decode, all
over the same compact values and device-ordered metadata; :func:`cutlass_config_for`
is the static default by token bucket (a measured table may override it). Split
configs take a workspace allocated by the caller (:func:`cutlass_workspace_size`), so
the launch allocates nothing and can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _device
from .._errors import BackendUnavailableError, RiaInputError
from .._logging import log_once, logger

SPARSE_DTYPES = (torch.float16, torch.bfloat16)
# alg_id -1: the extension's own searched config for this key (see module docstring)
AUTO_CONFIG = (-1, 1, 0)

_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "reason": "not loaded yet"}
_fakes_registered: set[str] = set()


# --------------------------------------------------------------------------- loading
def load_ops() -> bool:
    """Load the extension once (never on a machine without CUDA) and register fakes.

    Returns whether the ``ria_kernels`` ops are usable; :func:`extension_status`
    says why not.
    """
    with _lock:
        if _state["tried"]:
            return _state["module"] is not None
        _state["tried"] = True
        if not torch.cuda.is_available():
            _state["reason"] = "no CUDA device (the extension's ops are CUDA-only)"
            return False
        try:
            from .. import _build  # written with the C++ sources; may be missing in a partial checkout
        except ImportError as exc:
            _state["reason"] = f"ria_kernels._build is not importable ({exc})"
            return False
        try:
            mod = _build.load_extension()
        except Exception as exc:  # a broken build must say why, not crash the dense path
            _state["reason"] = f"loading the extension failed: {type(exc).__name__}: {exc}"
            return False
        if mod is None:
            status = getattr(_build, "extension_status", None)
            _state["reason"] = status() if callable(status) else "extension not built"
            # A GPU machine without its 2:4 kernels is worth a warning, not just a debug line.
            logger.warning("ria_kernels: CUDA is available but the extension ria_kernels._C is not usable (%s); "
                           "the cuSPARSELt/CUTLASS 2:4 backends are off. Build it with "
                           "`pip install --no-build-isolation -e .`", _state["reason"])
            return False
        _state["module"] = mod
        _state["reason"] = "loaded"
        _register_fakes()
        return True


def extension_available() -> bool:
    return load_ops()


def extension_status() -> str:
    """Why the extension is (not) usable, for error messages and test skip reasons."""
    load_ops()
    return _state["reason"]


def _reset_for_tests() -> None:
    """Forget the load attempt (tests monkeypatch ``_build``); fakes stay registered."""
    with _lock:
        _state.update(tried=False, module=None, reason="not loaded yet")


def _require(op: str) -> None:
    if not load_ops():
        raise BackendUnavailableError(f"ria_kernels.{op}: the CUDA extension is unavailable: {_state['reason']}")


# --------------------------------------------------------------------------- fakes
def _fake_mm_out(x: torch.Tensor, n) -> torch.Tensor:
    torch._check(x.dim() == 2, lambda: f"x must be 2-D [tokens, in_features], got {x.dim()}-D")
    return x.new_empty((x.shape[0], n))


def _register_fakes(namespace: str = "ria_kernels") -> None:
    """register_fake for every tensor-returning op of ``namespace`` (once, after the extension
    loaded; tests pass a scratch namespace with the same schemas)."""
    if namespace in _fakes_registered:
        return
    ns = getattr(torch.ops, namespace)

    def reg(name, fn):
        if not hasattr(ns, name):
            logger.warning("%s has no op %r; no fake registered", namespace, name)
            return
        try:
            torch.library.register_fake(f"{namespace}::{name}")(fn)
        except RuntimeError as exc:  # e.g. the C++ side already registered a Meta kernel
            logger.info("fake for %s::%s not registered from Python: %s", namespace, name, exc)

    def cslt_compress_fake(weight):
        # the compressed size is a cuSPARSELt property (values + metadata + padding): unbacked
        size = torch.library.get_ctx().new_dynamic_size()
        return weight.new_empty((size,), dtype=torch.uint8)

    def cslt_search_fake(x, compressed, out_features, bias=None, alpha=None):
        raise RuntimeError(f"{namespace}::cslt_search times kernels on the device and cannot be traced; "
                           "call it (or SparseLinear.tune) eagerly before torch.compile / graph capture")

    def cslt_mm_fake(x, compressed, out_features, bias=None, alpha=None, alg_id=-1, split_k=1, split_k_mode=0):
        return _fake_mm_out(x, out_features)

    def cutlass_compress_fake(weight):
        n, k = weight.shape
        # csrc/cutlass_meta.cpp: values [N, K/2]; metadata [N, K/16] int16 (one 16-bit code per 16 inputs)
        return [weight.new_empty((n, k // 2)), weight.new_empty((n, k // 16), dtype=torch.int16)]

    def cutlass_sparse_mm_fake(x, values, meta, bias=None, alpha=None, config=0, split_k=1, workspace=None):
        return _fake_mm_out(x, values.shape[0])

    def cutlass90_compress_fake(weight):
        n, k = weight.shape
        # csrc/cutlass_sparse_sm90.cu (CUTLASS sm90 compressor, shapes pinned by static_asserts there):
        # values [N, K/2] in weight's dtype; metadata [round_up(N, 64), round_up(K, 128) / 8] uint8
        meta_rows = (n + 63) // 64 * 64
        meta_cols = (k + 127) // 128 * 128 // 8
        return [weight.new_empty((n, k // 2)), weight.new_empty((meta_rows, meta_cols), dtype=torch.uint8)]

    def cutlass90_sparse_mm_fake(x, values, meta, bias=None, alpha=None, config=0, split_k=1, workspace=None):
        return _fake_mm_out(x, values.shape[0])

    reg("cslt_compress", cslt_compress_fake)
    reg("cslt_search", cslt_search_fake)
    reg("cslt_mm", cslt_mm_fake)
    reg("cutlass_compress", cutlass_compress_fake)
    reg("cutlass_sparse_mm", cutlass_sparse_mm_fake)
    reg("cutlass90_compress", cutlass90_compress_fake)
    reg("cutlass90_sparse_mm", cutlass90_sparse_mm_fake)
    _fakes_registered.add(namespace)


# --------------------------------------------------------------------------- checks
def _check_weight(weight: torch.Tensor, op: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise RiaInputError(f"{op}: weight must be a 2-D tensor [out_features, in_features], "
                            f"got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in SPARSE_DTYPES:
        raise RiaInputError(f"{op}: weight dtype must be float16 or bfloat16, got {weight.dtype}")
    if weight.device.type != "cuda":
        raise RiaInputError(f"{op}: weight must be a CUDA tensor, got device {weight.device}")
    if not weight.is_contiguous():
        raise RiaInputError(f"{op}: weight must be contiguous (row-major [N, K])")
    if weight.shape[1] % 4:
        raise RiaInputError(f"{op}: in_features={weight.shape[1]} must be divisible by 4 (2:4 groups)")


def _check_mm(op: str, x: torch.Tensor, n: int, device: torch.device,
              bias: torch.Tensor | None, alpha: torch.Tensor | None) -> None:
    if x.dim() != 2:
        raise RiaInputError(f"{op}: x must be 2-D [tokens, in_features], got shape {tuple(x.shape)}")
    if x.dtype not in SPARSE_DTYPES:
        raise RiaInputError(f"{op}: x dtype must be float16 or bfloat16, got {x.dtype}")
    if x.device != device:
        raise RiaInputError(f"{op}: x is on {x.device} but the compressed weight is on {device}")
    if not x.is_contiguous():
        raise RiaInputError(f"{op}: x must be row-major contiguous, got strides {x.stride()}")
    if x.shape[0] < 1:
        raise RiaInputError(f"{op}: x needs at least 1 token, got {x.shape[0]}")
    if n < 1:
        raise RiaInputError(f"{op}: out_features must be >= 1, got {n}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype or bias.device != x.device):
        raise RiaInputError(f"{op}: bias must be [{n}] {x.dtype} on {x.device}, "
                            f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
    if alpha is not None and (alpha.shape != (n,) or alpha.dtype != torch.float32 or alpha.device != x.device):
        raise RiaInputError(f"{op}: alpha must be [{n}] float32 on {x.device}, "
                            f"got {tuple(alpha.shape)} {alpha.dtype} on {alpha.device}")


# --------------------------------------------------------------------------- wrappers
def cslt_available() -> bool:
    """True when the extension loaded and was built with cuSPARSELt."""
    return load_ops() and bool(torch.ops.ria_kernels.cslt_available())


def cutlass_available() -> bool:
    """True when the extension loaded and was built with its CUTLASS 2:4 kernel."""
    return load_ops() and bool(torch.ops.ria_kernels.cutlass_available())


def cslt_version() -> int:
    """cusparseLtGetVersion of the extension's cuSPARSELt, 0 when not built with it / not loaded."""
    return int(torch.ops.ria_kernels.cslt_version()) if load_ops() else 0


@_device.guarded  # the inputs' device and stream (issue 20)
def cslt_compress(weight: torch.Tensor) -> torch.Tensor:
    """Compress a 2:4 ``weight [N, K]`` once into cuSPARSELt's opaque uint8 buffer."""
    _check_weight(weight, "cslt_compress")
    _require("cslt_compress")
    return torch.ops.ria_kernels.cslt_compress(weight)


@_device.guarded  # the inputs' device and stream (issue 20)
def cslt_search(x: torch.Tensor, compressed: torch.Tensor, out_features: int,
                bias: torch.Tensor | None = None, alpha: torch.Tensor | None = None) -> list[int]:
    """cusparseLtMatmulSearch for this problem; returns ``[alg_id, split_k, split_k_mode]``."""
    _check_mm("cslt_search", x, out_features, compressed.device, bias, alpha)
    _require("cslt_search")
    return [int(v) for v in torch.ops.ria_kernels.cslt_search(x, compressed, out_features, bias, alpha)]


@_device.guarded  # the inputs' device and stream (issue 20)
def cslt_mm(x: torch.Tensor, compressed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
            alpha: torch.Tensor | None = None, config: tuple[int, int, int] | list[int] = AUTO_CONFIG
            ) -> torch.Tensor:
    """``alpha * (x @ W^T) + bias`` with W as compressed by :func:`cslt_compress`."""
    _check_mm("cslt_mm", x, out_features, compressed.device, bias, alpha)
    if len(config) != 3:
        raise RiaInputError(f"cslt_mm: config must be [alg_id, split_k, split_k_mode], got {config}")
    _require("cslt_mm")
    alg_id, split_k, split_k_mode = (int(c) for c in config)
    return torch.ops.ria_kernels.cslt_mm(x, compressed, out_features, bias, alpha, alg_id, split_k, split_k_mode)


def cslt_cache_stats() -> tuple[int, int, int]:
    """``(plan_hits, plan_misses, searches)`` since the extension loaded."""
    _require("cslt_cache_stats")
    return tuple(int(v) for v in torch.ops.ria_kernels.cslt_cache_stats())


def cslt_clear_cache() -> None:
    _require("cslt_clear_cache")
    torch.ops.ria_kernels.cslt_clear_cache()


# (out_features, in_features) multiples each CUTLASS kernel accepts (csrc/cutlass_sparse_sm80.cu, _sm90.cu)
CUTLASS_SHAPE_MULTIPLES = {"sm80": (32, 64), "sm90": (8, 16)}


def cutlass_arch(device: torch.device) -> str | None:
    """Which CUTLASS 2:4 kernel the ``cutlass`` backend runs on ``device``: ``"sm90"`` (the
    warp-specialized wgmma collective, Hopper only, when built) else ``"sm80"`` (SparseGemm,
    any sm80+ GPU); None when the extension has neither. The one place this is decided."""
    if not load_ops():
        return None
    ops = torch.ops.ria_kernels
    if torch.cuda.get_device_capability(device) == (9, 0) and hasattr(ops, "cutlass90_available") \
            and ops.cutlass90_available():
        arch = "sm90"
    elif ops.cutlass_available():
        arch = "sm80"
    else:
        return None
    log_once(("cutlass_arch", str(device), arch), "cutlass 2:4 kernel on %s: %s", device, arch)
    return arch


@_device.guarded  # the inputs' device and stream (issue 20)
def cutlass_compress(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [N, K/2], metadata)`` in the layout the CUTLASS kernel for this device reads
    (sm90: metadata uint8; sm80: int16 -- which is how ``cutlass_sparse_mm`` tells them apart)."""
    _check_weight(weight, "cutlass_compress")
    _require("cutlass_compress")
    if cutlass_arch(weight.device) == "sm90":
        values, meta = torch.ops.ria_kernels.cutlass90_compress(weight)
    else:
        values, meta = torch.ops.ria_kernels.cutlass_compress(weight)
    return values, meta


@_device.guarded  # the inputs' device and stream (issue 20)
def cutlass_sparse_mm(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                      bias: torch.Tensor | None = None, alpha: torch.Tensor | None = None, config: int = 0,
                      split_k: int = 1, workspace: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * (x @ W^T) + bias`` on the CUTLASS kernel that ``meta``'s dtype names (sm90: uint8, sm80: int16).

    ``config`` is a ``config_id`` of :data:`CUTLASS_CONFIGS` for that arch (0: the prefill tile; the others
    narrow token tiles with split-K (sm80) / stream-K (sm90) for decode; :func:`cutlass_config_for` picks one
    by token count), ``split_k`` the K slices of a split config (sm90: 1 = CUTLASS's stream-K heuristic).
    ``workspace``: a uint8 CUDA tensor of at least :func:`cutlass_workspace_size` bytes, needed whenever that
    is > 0 except for config 0; pass one allocated beforehand to capture the call in a CUDA graph."""
    if values.dim() != 2 or values.shape[1] * 2 != x.shape[-1]:
        raise RiaInputError(f"cutlass_sparse_mm: values must be [N, K/2] = [N, {x.shape[-1] // 2}], "
                            f"got {tuple(values.shape)}")
    _check_mm("cutlass_sparse_mm", x, values.shape[0], values.device, bias, alpha)
    arch = "sm90" if meta.dtype == torch.uint8 else "sm80"
    cutlass_config(arch, config)  # RiaInputError for an unknown id
    if isinstance(split_k, bool) or not isinstance(split_k, numbers.Integral) or split_k < 1:
        raise RiaInputError(f"cutlass_sparse_mm: split_k must be an int >= 1, got {split_k!r}")
    if workspace is not None and (workspace.dtype != torch.uint8 or workspace.device != x.device
                                  or not workspace.is_contiguous()):
        raise RiaInputError(f"cutlass_sparse_mm: workspace must be a contiguous uint8 tensor on {x.device}, "
                            f"got {workspace.dtype} on {workspace.device}")
    _require("cutlass_sparse_mm")
    return cutlass_mm_op(meta)(x, values, meta, bias, alpha, int(config), int(split_k), workspace)


def cutlass_workspace_size(arch: str, n: int, t: int, k: int, config: int, split_k: int = 1) -> int:
    """Bytes of workspace the ``arch`` CUTLASS kernel needs for config ``config`` on an ``[n, k]`` weight and
    ``t`` tokens (sm90: on the current device, whose SM count the stream-K decomposition depends on). Asks the
    extension: the sizes are CUTLASS's own (split-K semaphores, stream-K partial tiles and locks)."""
    cutlass_config(arch, config)
    _require("cutlass_workspace_size")
    op = torch.ops.ria_kernels.cutlass90_workspace_size if arch == "sm90" else torch.ops.ria_kernels.cutlass_workspace_size
    return int(op(int(n), int(t), int(k), int(config), int(split_k)))


# --------------------------------------------------------------------------- CUTLASS configs (pure)
@dataclass(frozen=True)
class CutlassConfig:
    """One CUTLASS 2:4 GEMM instantiation of ``csrc/cutlass_sparse_configs.h`` (a CPU test checks that this
    table and that header agree). GEMM M = out_features (the weight is the sparse A operand), N = tokens:
    ``tile_t`` is the token tile. ``split``: ``"none"``, ``"serial"`` (sm80 serial split-K, fp32 partial
    sums) or ``"stream_k"`` (sm90 StreamKScheduler)."""

    arch: str
    config_id: int
    tile_m: int
    tile_t: int
    tile_k: int
    split: str
    warp: Optional[tuple[int, int, int]] = None  # sm80 warp tile (M, N, K)
    stages: Optional[int] = None  # sm80 pipeline stages (sm90: CUTLASS's StageCountAutoCarveout)


CUTLASS_CONFIGS: dict[str, tuple[CutlassConfig, ...]] = {
    "sm80": (
        CutlassConfig("sm80", 0, 128, 128, 64, "none", (64, 64, 64), 3),
        CutlassConfig("sm80", 1, 128, 16, 64, "serial", (32, 16, 64), 6),
        CutlassConfig("sm80", 2, 128, 32, 64, "serial", (32, 32, 64), 6),
        CutlassConfig("sm80", 3, 128, 64, 64, "serial", (64, 32, 64), 4),
    ),
    "sm90": (
        CutlassConfig("sm90", 0, 128, 128, 128, "none"),
        CutlassConfig("sm90", 1, 128, 16, 128, "stream_k"),
        CutlassConfig("sm90", 2, 128, 32, 128, "stream_k"),
        CutlassConfig("sm90", 3, 128, 64, 128, "stream_k"),
    ),
}
# Token counts up to this use the narrow decode tiles; larger T the prefill tile (config 0).
CUTLASS_DECODE_MAX_T = 64
# SM counts the static default assumes when the caller passes none: A100 (sm80), H100/H200 SXM (sm90).
DEFAULT_SM_COUNT = {"sm80": 108, "sm90": 132}
# Serial split-K keeps at least this many K tiles per slice (a slice shorter than the pipeline is all prologue).
MIN_K_TILES_PER_SPLIT = 4
MAX_SPLIT_K = 16
WAVE_FILL = 0.8


def cutlass_config(arch: str, config_id: int) -> CutlassConfig:
    """The :class:`CutlassConfig` with ``config_id`` for ``arch``; RiaInputError when there is none."""
    if arch not in CUTLASS_CONFIGS:
        raise RiaInputError(f"CUTLASS arch must be one of {sorted(CUTLASS_CONFIGS)}, got {arch!r}")
    for cfg in CUTLASS_CONFIGS[arch]:
        if not isinstance(config_id, bool) and config_id == cfg.config_id:
            return cfg
    ids = [c.config_id for c in CUTLASS_CONFIGS[arch]]
    raise RiaInputError(f"{arch} CUTLASS config must be one of {ids}, got {config_id!r}")


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise RiaInputError(f"cutlass_config_for: {name} must be an int >= 1, got {v!r}")
    return int(v)


def cutlass_config_for(arch: str, t: int, n: int, k: int, sm_count: Optional[int] = None) -> tuple[int, int]:
    """Static default ``(config_id, split_k)`` of the ``arch`` CUTLASS kernel for ``t`` tokens on an
    ``[n, k]`` weight: a pure function (no GPU timing; a measured table may override it).

    - ``t > CUTLASS_DECODE_MAX_T``: the prefill tile, config 0, no split.
    - ``t <= 64``: the narrowest token tile that holds ``t`` (16, 32 or 64), so at most one token tile along N
      and the least zero-padded MMA work.
    - sm80 (serial split-K) over ``tiles = ceil(n / tile_m)`` output tiles: the smallest ``split_k`` whose grid
      of ``tiles * split_k`` CTAs fills its last wave over the SMs to at least ``WAVE_FILL`` (an idle SM streams
      none of the weight; fewer slices write less fp32 partial traffic), else the best-filled one; at most
      ``MAX_SPLIT_K`` and so that each slice keeps ``MIN_K_TILES_PER_SPLIT`` K tiles.
    - sm90 (stream-K): ``split_k = 1``: CUTLASS's stream-K heuristic spreads the K iterations of the few output
      tiles over the SMs itself.

    ``sm_count`` defaults to :data:`DEFAULT_SM_COUNT` (A100: 108; H100/H200: 132).
    """
    if arch not in CUTLASS_CONFIGS:
        raise RiaInputError(f"cutlass_config_for: arch must be one of {sorted(CUTLASS_CONFIGS)}, got {arch!r}")
    t, n, k = _positive_int("t", t), _positive_int("n", n), _positive_int("k", k)
    sms = DEFAULT_SM_COUNT[arch] if sm_count is None else _positive_int("sm_count", sm_count)
    if t > CUTLASS_DECODE_MAX_T:
        return 0, 1
    narrow = sorted((c for c in CUTLASS_CONFIGS[arch] if c.split != "none"), key=lambda c: c.tile_t)
    cfg = next(c for c in narrow if c.tile_t >= t)
    if cfg.split == "stream_k":
        return cfg.config_id, 1
    tiles = math.ceil(n / cfg.tile_m) * math.ceil(t / cfg.tile_t)
    k_tiles = max(1, k // cfg.tile_k)
    cap = max(1, min(MAX_SPLIT_K, k_tiles // MIN_K_TILES_PER_SPLIT))
    return cfg.config_id, split_for_waves(tiles, sms, cap)


def wave_fill(ctas: int, sm_count: int) -> float:
    """Share of SM slots busy over the waves of ``ctas`` equal CTAs, one per SM at a time."""
    return ctas / (math.ceil(ctas / sm_count) * sm_count)


def split_for_waves(tiles: int, sm_count: int, cap: int) -> int:
    """The split-K slice count of :func:`cutlass_config_for` (sm80): smallest ``s <= cap`` with
    ``wave_fill(tiles * s) >= WAVE_FILL``, else the best-filled ``s`` (the smallest among equals)."""
    fills = [(wave_fill(tiles * s, sm_count), s) for s in range(1, cap + 1)]
    good = [s for f, s in fills if f >= WAVE_FILL]
    return good[0] if good else max(fills, key=lambda fs: (fs[0], -fs[1]))[1]


def cutlass_mm_op(meta: torch.Tensor):
    """The CUTLASS matmul op for weights compressed by :func:`cutlass_compress`: its metadata
    dtype says which kernel's layout it is in (sm90: uint8, sm80: int16). Unchecked: hot path."""
    ops = torch.ops.ria_kernels
    return ops.cutlass90_sparse_mm if meta.dtype == torch.uint8 else ops.cutlass_sparse_mm


# --------------------------------------------------------------------------- reference
def sparse_mm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        alpha: torch.Tensor | None = None) -> torch.Tensor:
    """float32 ``alpha * F.linear(x, W) + bias`` of the (already 2:4-masked) ``weight``.

    Accepts ``x [..., K]``; returns float32 ``[..., N]``: the reference every
    backend is compared against (and the benchmarks' correctness gate).
    """
    y = F.linear(x.float(), weight.float())
    if alpha is not None:
        y = y * alpha.float()
    if bias is not None:
        y = y + bias.float()
    return y
