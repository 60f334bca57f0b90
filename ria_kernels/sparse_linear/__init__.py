"""``SparseLinear``: a drop-in ``nn.Linear`` replacement holding ONE compressed 2:4 weight.

Storage. The weight is kept in the compressed 2:4 format of :mod:`ria_kernels.ops.sparse24_mm`
(kept values ``[N, K/2]`` + packed 2-bit in-group indices), as the registered buffers ``values``
and ``meta`` -- so ``.to()``, ``state_dict``, ``torch.compile`` and CUDA graphs see them -- and
**no dense copy** unless asked. What else a module holds is its *memory mode*, chosen at conversion
(``SparseLinear.from_linear(..., memory=)``, ``to_sparse_inference(..., memory=)``):

- ``"compact"`` (the default): only the compressed format, 0.5625x the dense fp16/bf16 weight bytes
  (half the values + 4 bits of indices per group of 4). On a GPU whose CUTLASS 2:4 kernel takes the
  weight, the metadata is held in that kernel's order (``meta_layout`` ``"sm80"`` on A100-class,
  ``"sm90"`` on Hopper; :mod:`ria_kernels.ops.sparse24_layout`), so the sparse tensor cores (backend
  ``cutlass``) and the compact kernel read the same ONE copy; elsewhere (CPU, odd shapes, float32,
  an sm90 shape whose metadata would need padding) it stays row-major. ``state_dict`` and checkpoints
  always hold the row-major order (portable). The compact Triton kernel reads both CUTLASS orders
  (``ops.sparse24_mm.KERNEL_META_LAYOUTS``); were an order not among them, the module would keep
  row-major ``meta`` plus that order in ``cutlass_meta`` (+1/16 of the dense bytes, logged as a warning).
- ``"cusparselt"`` (formerly ``"fast"``, still accepted with a warning): compact + cuSPARSELt's copy
  (its buffer is opaque, so it cannot share the compact one), built from the compact format (a
  transient dense weight per linear at build time only), about 1.125x the dense weight bytes
  (<= 1.15x). Opt-in: it runs for the token buckets where it measured faster than the alternatives.
- ``"dense"``: compact + the masked dense weight, run by ``F.linear`` -- for reference and debugging
  only (about 1.56x the dense bytes).

The dense weight is never rebuilt at run time. Decode (a few tokens per step) is memory-bound, its time
is the weight bytes read, so the format that reads 0.5625x the bytes is the one expected fastest at small
token counts (limit 1/0.5625 = 1.78x dense); at large token counts (prefill, compute-bound) sparse tensor
cores can win -- and with the metadata in the device's order, CUTLASS runs on the same bytes. No GPU
number is claimed here: the benchmarks measure it.

Backends: ``sparse24`` (compact kernel), ``cusparselt``, ``cutlass`` (sm90 wgmma kernel on Hopper,
else sm80), ``torch_semi_structured`` (torch's own 2:4 tensor; forced only), ``dense``.

Backend selection (:func:`choose_backend` is the one dispatch point; :func:`requested_backend`
applies the precedence): an explicit ``backend=`` argument, else the env override
``RIA_KERNELS_SPARSE_BACKEND`` (read when the module is built), else automatic. A forced
backend that cannot run raises ``BackendUnavailableError`` naming the reason.
Automatic: the compact kernel, unless a tensor-core backend the module can run (CUTLASS on the compact
weight, cuSPARSELt's copy) measured at least ``SPARSE_MARGIN`` faster than it for this token bucket (next
power of two of the token count); with nothing measured and no timing possible, the static default
(CUTLASS from ``STATIC_TENSOR_CORE_MIN_TOKENS`` tokens, see ``backends.py``). The table is filled by
timing on the first eager use of a bucket (CUDA events, L2 flushed before every timed call so every candidate streams its weight from
memory) or ahead of time by :meth:`SparseLinear.tune` / :func:`tune_model`, and persisted as JSON in
``$RIA_KERNELS_CACHE_DIR/sparse_linear.json`` (default ``~/.cache/ria_kernels``), keyed by device,
torch and cuSPARSELt versions; searched cuSPARSELt configs are stored with it.

CUDA graphs: nothing is timed, searched or planned during capture. A bucket without a table entry runs
the static default; a cuSPARSELt bucket runs only if its plan (per token count padded to 8, config and
bias pointer) was created by an eager call before the capture, else the compact kernel runs (logged);
a *forced* cuSPARSELt without that plan refuses with ``BackendUnavailableError``. Warm up (one eager
call at each token count you will capture) or :meth:`SparseLinear.prepare_capture` first.
``RIA_KERNELS_SPARSE_AUTOTUNE=0`` disables timing on first use.

Signed zeros: every compression (compact format, cuSPARSELt, CUTLASS, torch's 2:4 tensor) gets its
weight through :func:`positive_zeros` first (-0.0 -> +0.0; CUTLASS's compressor mishandles -0.0).
"""
from __future__ import annotations

# Parts: format.py (the compressed format and the pattern checks), backends.py (what each backend
# needs and the one dispatch point), tuning.py (per-bucket timing and its persisted table), module.py
# (SparseLinear itself). Test seams are patched where they are looked up (module.py / tuning.py /
# backends.py), not here.
from .._io import ENV_CACHE_DIR  # where the tuning table lives
from .backends import (BACKENDS, COPY_BACKENDS, CSLT_TOKEN_MULTIPLE, DEFAULT_CSLT_CONFIG, ENV_BACKEND,
                       SHAPE_MULTIPLES, SPARSE_MARGIN, STATIC_TENSOR_CORE_MIN_TOKENS, TENSOR_CORE_BACKENDS,
                       backend_unavailable_reasons, choose_backend, compact_kernel_reads, cutlass_meta_layout,
                       requested_backend, torch_semi_structured)
from .format import (META_LAYOUTS, SPARSE24_DTYPES, check_2to4, compact_to_layout, compress_24, decompress_24,
                     is_2to4, layout_to_compact, positive_zeros)
from .module import (DEFAULT_MEMORY, MEMORY_ALIASES, MEMORY_MODES, SparseLinear, linear_bytes, resolve_memory,
                     tune_model)
from .tuning import (DEFAULT_L2_BYTES, ENV_AUTOTUNE, TuneTable, default_cache_path, device_section,
                     get_tune_table, l2_cache_bytes, l2_flusher, set_tune_table, shape_key, token_bucket)

__all__ = [
    "BACKENDS", "COPY_BACKENDS", "CSLT_TOKEN_MULTIPLE", "DEFAULT_CSLT_CONFIG", "DEFAULT_L2_BYTES", "DEFAULT_MEMORY",
    "ENV_AUTOTUNE", "ENV_BACKEND", "ENV_CACHE_DIR", "MEMORY_ALIASES", "MEMORY_MODES", "META_LAYOUTS",
    "SHAPE_MULTIPLES", "SPARSE24_DTYPES", "SPARSE_MARGIN", "STATIC_TENSOR_CORE_MIN_TOKENS", "TENSOR_CORE_BACKENDS",
    "SparseLinear", "TuneTable", "backend_unavailable_reasons", "check_2to4", "choose_backend",
    "compact_kernel_reads", "compact_to_layout", "compress_24", "cutlass_meta_layout", "decompress_24",
    "default_cache_path", "device_section", "get_tune_table", "is_2to4", "l2_cache_bytes", "l2_flusher",
    "layout_to_compact", "linear_bytes", "positive_zeros", "requested_backend", "resolve_memory", "set_tune_table",
    "shape_key", "token_bucket", "torch_semi_structured", "tune_model",
]
