"""The backends a :class:`SparseLinear` can run, what each needs, and the one dispatch point
(:func:`choose_backend`) that picks one per call.

Backends: ``sparse24`` (the compact-format kernel), ``cusparselt``, ``cutlass`` (sm90 wgmma kernel on
Hopper, else sm80), ``torch_semi_structured`` (torch's own 2:4 tensor; forced only), ``dense``.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, Mapping, Sequence

import torch

from .._errors import BackendUnavailableError, RiaInputError
from ..ops import sparse_mm
from ..ops.sparse24_layout import meta_layout_for
from ..ops.sparse24_mm import KERNEL_META_LAYOUTS
from .format import SPARSE24_DTYPES, positive_zeros

BACKENDS = ("sparse24", "cusparselt", "cutlass", "torch_semi_structured", "dense")
# backends on sparse tensor cores (CUDA only)
TENSOR_CORE_BACKENDS = ("cusparselt", "cutlass", "torch_semi_structured")
# those that run from a compressed copy of their own; cutlass reads the compact values and the metadata
# laid out in its order, so it costs no memory. torch_semi_structured is forced-only: it plans inside
# every call, so it cannot honour the CUDA-graph rules.
COPY_BACKENDS = ("cusparselt", "torch_semi_structured")
ENV_BACKEND = "RIA_KERNELS_SPARSE_BACKEND"
# a tensor-core backend must beat the compact kernel by this fraction of its time to be chosen:
# timing noise must not flip a bucket to a kernel that is in fact as slow or slower
SPARSE_MARGIN = 0.03
# With no measured entry for a bucket and no timing possible (tracing, capture, autotune off), the static
# default: CUTLASS on the compact weight from this token bucket up, the compact Triton kernel below. Why
# 16, from the two static estimates (H200 model, not measurements) on 4096x4096: the Triton kernel
# 1.75x / 1.68x / 1.45x / 1.23x / 0.51x dense at T = 1 / 4 / 16 / 64 / 256
# (benchmarks/results/sparse24_mm_static.md); CUTLASS sm90 1.52x at T = 1 (128x16 stream-K), 1.51x at
# T = 16, 1.50x at T = 64 (128x64 stream-K), 0.65x at T = 256 (128x128)
# (benchmarks/results/cutlass_sparse_instantiations.md): Triton leads at 1-4 tokens, CUTLASS from 16.
# A measured entry (first eager use, or tune()) wins.
STATIC_TENSOR_CORE_MIN_TOKENS = 16
# (out_features, in_features) multiples each extension backend accepts for fp16/bf16; for
# cutlass the sm80 kernel's, the loosest-to-state bound when the GPU's kernel is not known yet
# (sparse_mm.CUTLASS_SHAPE_MULTIPLES per kernel; torch's own path: its
# SparseSemiStructuredTensor*._DTYPE_SHAPE_CONSTRAINTS)
SHAPE_MULTIPLES = {"cusparselt": (16, 16), "cutlass": sparse_mm.CUTLASS_SHAPE_MULTIPLES["sm80"]}
# cuSPARSELt config used by a forced cusparselt under torch.compile tracing when no config was
# searched for the bucket: algorithm 0, no split-K -- never triggers a search
DEFAULT_CSLT_CONFIG = (0, 1, 0)
# cuSPARSELt pads the token count to a multiple of this (csrc/cslt_matmul.cpp kDenseMultiple);
# its plans are cached per padded count
CSLT_TOKEN_MULTIPLE = 8


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
    return cls.from_dense(positive_zeros(weight).contiguous())


def backend_unavailable_reasons(device: torch.device, dtype: torch.dtype, out_features: int,
                                in_features: int, backends: Sequence[str] = BACKENDS) -> dict[str, str | None]:
    """``{backend: None if it can run this weight here, else why not}``. Never loads the extension
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
        if b == "sparse24":  # the compact format: Triton kernel on CUDA, its torch reference elsewhere
            out[b] = None if dtype in SPARSE24_DTYPES else f"the compact 2:4 format needs one of {SPARSE24_DTYPES}, got {dtype}"
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

def cutlass_meta_layout(device: torch.device, dtype: torch.dtype, out_features: int, in_features: int) -> str:
    """The metadata order (``ops/sparse24_layout``) of the CUTLASS kernel that runs this weight on ``device``:
    ``"sm90"`` / ``"sm80"``, or ``"rowmajor"`` when the cutlass backend cannot run it there (a CPU, no
    extension, a shape or dtype it does not take, or only the sm80 kernel on Hopper)."""
    device = torch.device(device)
    if device.type != "cuda" or \
            backend_unavailable_reasons(device, dtype, out_features, in_features, ("cutlass",))["cutlass"] is not None:
        return "rowmajor"
    layout = meta_layout_for(torch.cuda.get_device_capability(device), out_features, in_features, dtype)
    return layout if layout == sparse_mm.cutlass_arch(device) else "rowmajor"


def compact_kernel_reads(device: torch.device, layout: str) -> bool:
    """Whether the compact kernel that runs on ``device`` reads metadata in ``layout``: the Triton kernel
    on CUDA reads ``KERNEL_META_LAYOUTS``; the torch reference (elsewhere) reads every order."""
    return torch.device(device).type != "cuda" or layout in KERNEL_META_LAYOUTS


# --------------------------------------------------------------------------- the dispatch point
def choose_backend(requested: str | None, *, device_type: str, unavailable: Mapping[str, str | None],
                   timings: Mapping[str, float] | None = None,
                   measure: Callable[[list[str]], Mapping[str, float]] | None = None,
                   margin: float = SPARSE_MARGIN, bucket: int | None = None) -> tuple[str, str]:
    """Pick the backend for one call; returns ``(backend, why)``.

    ``requested``: the forced backend from :func:`requested_backend` (``None``: automatic).
    ``unavailable``: the module's backends, each mapped to ``None`` (held and can run) or the
    reason it cannot. ``timings``: measured medians in ms for this (shape, dtype, token bucket),
    or ``None``; ``measure(backends)`` produces them when allowed (``None`` during tracing, graph
    capture or with autotune off). Rules: forced wins (raises when unavailable); otherwise the
    compact kernel (``sparse24``, always held) unless a held tensor-core backend measured at least
    ``margin`` faster than it on CUDA. With nothing measured and nothing measurable, the static default
    for ``bucket``: CUTLASS (when usable) from ``STATIC_TENSOR_CORE_MIN_TOKENS`` tokens up. Never dense in
    automatic mode: it is not held.
    """
    if requested is not None:
        if requested not in BACKENDS:
            raise RiaInputError(f"backend must be one of {BACKENDS}, got {requested!r}")
        if requested not in unavailable:
            raise BackendUnavailableError(f"backend {requested!r} was not prepared for this module")
        if unavailable[requested] is not None:
            raise BackendUnavailableError(f"backend {requested!r} forced but unavailable: {unavailable[requested]}")
        return requested, "forced"
    usable = [b for b in TENSOR_CORE_BACKENDS if b in unavailable and unavailable[b] is None]
    if not usable:
        why = "; ".join(f"{b}: {r}" for b, r in unavailable.items() if r is not None) or "compact memory mode"
        return "sparse24", f"compact 2:4 kernel (no tensor-core copy: {why})"
    if device_type != "cuda":
        return "sparse24", f"{device_type} tensors run the compact 2:4 kernel"
    if timings is None:
        if measure is None:
            if "cutlass" in usable and bucket is not None and bucket >= STATIC_TENSOR_CORE_MIN_TOKENS:
                return "cutlass", (f"static default: CUTLASS on the compact weight for >= "
                                   f"{STATIC_TENSOR_CORE_MIN_TOKENS} tokens (nothing measured for this bucket)")
            return "sparse24", ("compact 2:4 kernel: no measured entry for this token bucket and timing is not "
                                "possible now (torch.compile tracing / CUDA-graph capture / autotune off)")
        timings = measure(usable + ["sparse24"])
    if "sparse24" not in timings:
        return "sparse24", "compact 2:4 kernel: no compact-kernel timing to compare against"
    timed = [(timings[b], b) for b in usable if b in timings and math.isfinite(timings[b])]
    if not timed:
        return "sparse24", "compact 2:4 kernel: no tensor-core backend was timed"
    best_ms, best = min(timed)
    base_ms = timings["sparse24"]
    if best_ms <= base_ms * (1.0 - margin):
        return best, f"measured {best} {best_ms:.4g} ms vs compact {base_ms:.4g} ms"
    return "sparse24", f"compact {base_ms:.4g} ms; best tensor-core {best} {best_ms:.4g} ms is not {margin:.0%} faster"

def _cslt_matmul(x2: torch.Tensor, compressed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
                 cfg: tuple[int, int, int]) -> torch.Tensor:
    """The extension's cuSPARSELt matmul (unchecked hot path; a seam for CPU tests)."""
    alg, split_k, mode = cfg
    return torch.ops.ria_kernels.cslt_mm(x2, compressed, out_features, bias, None, alg, split_k, mode)


def _cutlass_matmul(x2: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """The extension's CUTLASS matmul on the compact values + metadata in its order (the metadata dtype
    says which kernel: sparse_mm.cutlass_mm_op). The tile by token count is ``sparse_mm.cutlass_config_for``
    (narrow token tiles with split-K / stream-K up to 64 tokens, the prefill tile above); a narrow config's
    workspace is allocated per call from the stream-ordered caching allocator (so overlapping streams never
    share it, and a CUDA-graph capture takes it from the graph's pool). Under torch.compile tracing the
    prefill tile runs (it needs no workspace-size query). Unchecked hot path; a seam for CPU tests."""
    op = sparse_mm.cutlass_mm_op(meta)
    if torch.compiler.is_compiling():
        return op(x2, values, meta, bias, None)
    arch = "sm90" if meta.dtype == torch.uint8 else "sm80"
    t, n, k = int(x2.shape[0]), int(values.shape[0]), int(x2.shape[1])
    config, split_k = sparse_mm.cutlass_config_for(arch, t, n, k, _sm_count(x2.device))
    if config == 0:
        return op(x2, values, meta, bias, None)
    size = sparse_mm.cutlass_workspace_size(arch, n, t, k, config, split_k)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=x2.device)
    return op(x2, values, meta, bias, None, config, split_k, workspace)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _compress_for_backend(backend: str, dense: torch.Tensor):
    """The compressed copy ``backend`` runs, from the (2:4, signed-zero-normalised here) dense
    weight: cuSPARSELt's opaque buffer or torch's 2:4 tensor."""
    dense = positive_zeros(dense).contiguous()
    if backend == "cusparselt":
        return sparse_mm.cslt_compress(dense)
    if backend == "torch_semi_structured":
        return torch_semi_structured(dense)
    raise RiaInputError(f"{backend!r} holds no copy of its own (copy backends: {COPY_BACKENDS})")
