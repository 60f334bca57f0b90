"""Matmul on a compressed 2:4 weight: ``y = x @ W^T + b`` with ``W`` stored as kept values + indices.

Compressed format (version 1; ``FORMAT_VERSION``), for ``W [N, K]`` with at most 2 non-zeros in
every group of 4 consecutive input columns (``K % 4 == 0``):

- ``values [N, K/2]`` (the weight's dtype): per group, the 2 kept entries in ascending column order.
  A group with fewer than 2 non-zeros keeps its non-zeros plus its lowest-index zero columns.
  Signed zeros are normalised to +0.0.
- ``meta [N, ceil(K/8)]`` uint8: per group a 4-bit code ``i0 | i1 << 2`` (the in-group column of
  each kept value, ``i0 < i1``); group ``g`` of a row lives in byte ``g // 2``, low nibble for even
  ``g``. Row-major and contiguous, so a tile of ``BLOCK_K`` columns of a row reads ``BLOCK_K/2``
  contiguous values and ``BLOCK_K/8`` contiguous metadata bytes.

Bytes per row: ``K/2 * itemsize + K/8`` = 0.5625x the dense fp16/bf16 row, so the memory-bound
limit of a decode GEMV is 1/0.5625 = 1.78x dense.

Reference: :func:`sparse24_mm_reference` (decompress, then ``F.linear`` in float32).

Kernel (:func:`sparse24_mm`, one Triton kernel for every token count T): each program streams
``[BLOCK_N, BLOCK_K/2]`` values (read as one 32-bit word per group: both kept entries) and the
matching metadata (read as int32 words, 8 group codes each, when ``K % 32 == 0``: the same bytes,
little-endian, so no second layout; or in the CUTLASS sm80 / sm90 orders of
:mod:`ria_kernels.ops.sparse24_layout`, ``meta_layout=``, by index arithmetic), expands them to
the dense ``[BLOCK_N, BLOCK_K]`` tile in registers (per group, two dense words from the value
word: 4 single-bit tests of the code + 6 word selects + 3 shifts/masks) and feeds
``tl.dot(W_tile, x_tile^T)`` with fp32 accumulation; the dense weight never exists in memory. Decode (T <= 64): one token tile, so every weight byte is read once, with split-K to fill
the SMs; prefill: a tiled GEMM. Configs: :func:`launch_config` (a pure function of T, N, K, the SM count and
the dtype; no run-time autotuning, so launches are CUDA-graph capturable and AOT-recordable:
:func:`aot_cases` compiles every variant :func:`reachable_configs` lists). Split-K partials and
arrival counters live in a per-call workspace zeroed on the launch stream, so overlapping launches
(two streams, a graph replay beside an eager call) never share a counter. float32 is a reference path (IEEE dot, no TF32).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .._backend import resolve_backend
from .. import _device
from .._errors import RiaInputError
from .sparse24_layout import layout_to_compact

FORMAT_VERSION = 1
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise RiaInputError(f"weight must be a 2-D tensor [out_features, in_features], got "
                            f"{getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise RiaInputError(f"weight dtype must be one of {SUPPORTED_DTYPES}, got {weight.dtype}")
    if weight.shape[1] % 4:
        raise RiaInputError(f"weight.shape[1] (in_features) must be divisible by 4 for 2:4, got {weight.shape[1]}")


def compress_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4-sparse ``weight [N, K]`` into ``(values [N, K/2], meta [N, ceil(K/8)] uint8)``.

    Raises ``RiaInputError`` if a group of 4 holds more than 2 non-zeros."""
    _check_weight(weight)
    n, k = weight.shape
    groups = weight.detach().reshape(n, k // 4, 4)
    nonzero = groups != 0
    per_group = nonzero.sum(-1)
    if bool((per_group > 2).any()):
        bad = int((per_group > 2).sum())
        raise RiaInputError(f"weight is not 2:4 sparse: {bad} group(s) of 4 hold more than 2 non-zeros")
    # keep the non-zeros first, then the lowest-index zeros; ascending column order inside a group
    rank_key = (~nonzero).to(torch.int8) * 4 + torch.arange(4, device=weight.device, dtype=torch.int8)
    idx = rank_key.argsort(dim=-1, stable=True)[..., :2].sort(dim=-1).values          # [N, G, 2]
    values = groups.gather(-1, idx)
    values = torch.where(values == 0, torch.zeros((), dtype=values.dtype, device=values.device), values)
    codes = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)                           # [N, G]
    if codes.shape[1] % 2:
        codes = torch.cat([codes, codes.new_zeros(n, 1)], dim=1)
    meta = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return values.reshape(n, k // 2).contiguous(), meta.contiguous()


def _check_compressed(values: torch.Tensor, meta: torch.Tensor) -> tuple[int, int]:
    if values.dim() != 2 or meta.dim() != 2:
        raise RiaInputError(f"values and meta must be 2-D, got {tuple(values.shape)} and {tuple(meta.shape)}")
    if values.dtype not in SUPPORTED_DTYPES:
        raise RiaInputError(f"values dtype must be one of {SUPPORTED_DTYPES}, got {values.dtype}")
    n, half_k = values.shape
    k = 2 * half_k
    if k % 4:
        raise RiaInputError(f"values.shape[1] must be even (in_features / 2 with in_features % 4 == 0), got {half_k}")
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (n, (k + 7) // 8):
        raise RiaInputError(f"meta must be uint8 of shape [{n}, {(k + 7) // 8}], got {meta.dtype} {tuple(meta.shape)}")
    if meta.device != values.device:
        raise RiaInputError(f"values and meta must be on one device, got {values.device} and {meta.device}")
    return n, k


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`compress_24`: the dense ``[N, K]`` weight (pruned entries +0.0)."""
    n, k = _check_compressed(values, meta)
    g = k // 4
    codes = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(n, -1)[:, :g].to(torch.int64)
    idx = torch.stack([codes & 3, codes >> 2], dim=-1)                                    # [N, G, 2]
    dense = torch.zeros(n, g, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, idx, values.reshape(n, g, 2))
    return dense.reshape(n, k)


def sparse24_mm_reference(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                          bias: Optional[torch.Tensor] = None, meta_layout: str = "rowmajor") -> torch.Tensor:
    """Plain-torch reference: decompress (``meta`` in ``meta_layout``), ``F.linear`` in float32, cast to
    ``x.dtype``."""
    if meta_layout != "rowmajor":
        meta = layout_to_compact(meta, values.shape[0], 2 * values.shape[1], meta_layout)
    w = decompress_24(values, meta).float()
    b = None if bias is None else bias.float()
    return F.linear(x.float(), w, b).to(x.dtype)


# --------------------------------------------------------------------------- public entry point
META_LAYOUTS = ("rowmajor", "sm80", "sm90")
# the orders the Triton kernel reads (every one; SparseLinear asks, ops/sparse24_layout.py defines them)
KERNEL_META_LAYOUTS = META_LAYOUTS


def _check_layout_meta(values: torch.Tensor, meta: torch.Tensor, meta_layout: str) -> tuple[int, int]:
    """``_check_compressed`` for a metadata buffer in a device order (``ops/sparse24_layout.py``):
    sm80 ``int16 [N, K/16]`` (N % 32 == 0, K % 32 == 0), sm90 ``uint8 [round_up(N, 64),
    round_up(K, 128) / 8]`` (K % 16 == 0)."""
    from . import sparse24_layout as L
    if meta_layout not in META_LAYOUTS:
        raise RiaInputError(f"meta_layout must be one of {META_LAYOUTS}, got {meta_layout!r}")
    if meta_layout == "rowmajor":
        return _check_compressed(values, meta)
    if values.dim() != 2 or meta.dim() != 2:
        raise RiaInputError(f"values and meta must be 2-D, got {tuple(values.shape)} and {tuple(meta.shape)}")
    if values.dtype not in SUPPORTED_DTYPES:
        raise RiaInputError(f"values dtype must be one of {SUPPORTED_DTYPES}, got {values.dtype}")
    n, k = values.shape[0], 2 * values.shape[1]
    mult = L.SM80_CONVERT_MULTIPLES if meta_layout == "sm80" else L.SM90_CONVERT_MULTIPLES
    dtype, want = L.layout_meta_spec(n, k, meta_layout)  # the layouts' one statement of dtype and shape
    if n <= 0 or k <= 0 or n % mult[0] or k % mult[1]:
        raise RiaInputError(f"{meta_layout} metadata needs out_features % {mult[0]} == 0 and in_features % "
                            f"{mult[1]} == 0 (both > 0), got [{n}, {k}]")
    if meta.dtype != dtype or tuple(meta.shape) != tuple(want):
        raise RiaInputError(f"{meta_layout} meta must be {dtype} of shape {list(want)}, got {meta.dtype} "
                            f"{list(meta.shape)}")
    if meta.device != values.device:
        raise RiaInputError(f"values and meta must be on one device, got {values.device} and {meta.device}")
    return n, k


def _check_inputs(x, values, meta, bias, out, meta_layout: str = "rowmajor") -> tuple[int, int]:
    n, k = _check_layout_meta(values, meta, meta_layout)
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise RiaInputError("x must be a tensor of shape [..., in_features]")
    if x.shape[-1] != k:
        raise RiaInputError(f"x.shape[-1] must equal in_features {k}, got {x.shape[-1]}")
    if x.dtype != values.dtype:
        raise RiaInputError(f"x dtype {x.dtype} must match the weight values' dtype {values.dtype}")
    if x.device != values.device:
        raise RiaInputError(f"x is on {x.device}, the weight on {values.device}")
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise RiaInputError(f"bias must have shape [{n}], got {tuple(bias.shape)}")
        if bias.device != values.device or bias.dtype not in SUPPORTED_DTYPES:
            raise RiaInputError(f"bias must be a float tensor on {values.device}, got {bias.dtype} on {bias.device}")
    if out is not None:
        want = (*x.shape[:-1], n)
        if tuple(out.shape) != want or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
            raise RiaInputError(f"out must be a contiguous {x.dtype} tensor of shape {list(want)} on {x.device}, "
                                f"got {out.dtype} {list(out.shape)} on {out.device}")
    return n, k


def sparse24_mm(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                bias: Optional[torch.Tensor] = None, *, backend: Optional[str] = None,
                out: Optional[torch.Tensor] = None, meta_layout: str = "rowmajor") -> torch.Tensor:
    """``x [..., K] @ W^T (+ bias) -> [..., N]`` in x's dtype, for the compressed 2:4 ``W``
    (see the module docstring); float32 accumulation.

    ``meta_layout`` names the order of ``meta``: ``"rowmajor"`` (the compact format), or the
    device orders of :mod:`ria_kernels.ops.sparse24_layout` (``"sm80"``: ``int16 [N, K/16]``,
    ``"sm90"``: ``uint8 [round_up(N, 64), round_up(K, 128) / 8]``), which the Triton kernel reads
    directly (index arithmetic on the 16-bit words; the values are shared by every order).

    The backend is chosen in one place (:func:`_dispatch`): Triton for CUDA tensors, the torch
    reference otherwise; ``backend="triton"|"torch"`` or env ``RIA_KERNELS_BACKEND`` forces one.
    Without ``out`` this goes through the custom op ``ria_kernels::sparse24_mm`` (fake impl
    registered: traceable by ``torch.compile``, capturable in CUDA graphs); ``out=`` (eager
    callers: tests, benchmarks) calls the dispatch directly.
    """
    if not isinstance(meta_layout, str):
        raise RiaInputError(f"meta_layout must be one of {META_LAYOUTS}, got {meta_layout!r}")
    _check_inputs(x, values, meta, bias, out, meta_layout)
    if backend is not None and backend.lower() not in ("triton", "torch"):
        raise RiaInputError(f"backend must be one of ('triton', 'torch'), got {backend!r}")
    if out is not None:
        return _dispatch(x, values, meta, bias, backend, out, meta_layout)
    return torch.ops.ria_kernels.sparse24_mm(x, values, meta, bias, backend, meta_layout)


def _dispatch(x, values, meta, bias, backend, out=None, meta_layout="rowmajor"):
    """The one backend decision for sparse24_mm."""
    if resolve_backend("sparse24_mm", x, backend) == "triton":
        return _sparse24_mm_triton(x, values, meta, bias, out=out, meta_layout=meta_layout)
    y = sparse24_mm_reference(x, values, meta, bias, meta_layout)  # converts a device order back
    return y if out is None else out.copy_(y)


@torch.library.custom_op("ria_kernels::sparse24_mm", mutates_args=())
def _sparse24_mm_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
                    backend: Optional[str], meta_layout: str = "rowmajor") -> torch.Tensor:
    return _dispatch(x, values, meta, bias, backend, None, meta_layout)


@_sparse24_mm_op.register_fake
def _(x, values, meta, bias, backend, meta_layout="rowmajor"):
    return x.new_empty((*x.shape[:-1], values.shape[0]))


# --------------------------------------------------------------------------- launch configs
class Sparse24Config(NamedTuple):
    """One launch of the kernel: tile sizes, split-K, warps/stages and the register cap
    (``maxnreg``, None: ptxas decides; see :func:`launch_config`)."""
    block_n: int
    block_t: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    maxnreg: Optional[int] = None


DEFAULT_NUM_SMS = 132  # H100/H200 SXM; used when no CUDA device is queried (CPU, AOT)
DECODE_MAX_T = 64
# decode programs are capped at 128 registers per thread up to T = 16: 4 blocks of 4 warps fit an
# SM's 64K registers (16 warps to hide the expansion's dependency chains and the DRAM latency). The
# wider token tiles (T = 17-64: a 64 x 32 / 64 x 64 fp32 accumulator, and the split-K epilogue's
# second one) spill under 128 in the AOT gate (odd N, bias, ragged K), so they get 168: 3 blocks.
DECODE_MAXNREG = 128
DECODE_MAXNREG_WIDE = 168
# split-K choice (see _choose_split): programs are placed in units of 2 blocks per SM, a
# program costs its K-steps plus ~1 step of fixed cost (pipeline fill, epilogue), and fewer than
# 4 programs per SM leave the SMs under-occupied
WAVE_BLOCKS_PER_SM = 2
FILL_BLOCKS_PER_SM = 4
PROGRAM_OVERHEAD_STEPS = 1


def launch_config(t: int, n: int, k: int, num_sms: int = DEFAULT_NUM_SMS,
                  dtype: torch.dtype = torch.float16) -> Sparse24Config:
    """The launch heuristic, a pure function of (T, N, K, SM count, dtype).

    Decode (T <= 64): one tile covers every token (BLOCK_T = T rounded up to a power of 2,
    at least 16 for ``tl.dot``), so each weight byte is read once; BLOCK_N = 64 rows, 4 warps,
    and for fp16/bf16 with K % 32 == 0 (every LLaMA shape) BLOCK_K = 128 up to T = 32 and 64
    at T = 33-64, 3 stages, capped at 128 registers up to T = 16 (``DECODE_MAXNREG``: 4 blocks
    per SM) and 168 above (``DECODE_MAXNREG_WIDE``: 3 blocks; 128 spills there): the AOT gate
    compiles these without spills on sm_80 and sm_90a. (sm_90a K-loop SASS after the word-wise
    expansion, aligned shape, per dense weight element per thread: 5.6 at 64 x 16 x 128 and
    64 x 32 x 128, 6.75 at 64 x 64 x 64; 64 x 16 x 256 is 5.4 but needs 146 registers, and
    spills on sm_80 under a 128 cap.) Weights are streamed by ``cdiv(N, 64) * split`` programs;
    ``split`` (:func:`_choose_split`) makes that count a whole number of 2-blocks-per-SM waves
    where it can, at >= 4 programs per SM, while keeping >= 2 K-steps per split and the fp32
    partials (2 * split * T * N * 4 bytes) under ~40% of the weight bytes (``split <= K / (18 T)``).
    Prefill (T > 64): a plain tiled GEMM, 128 x 128 (x 64 below T = 128) output tiles, BLOCK_K
    = 64, no split; the compressed weight tile is re-read per token tile from L2.

    Cases with their own tiles (the AOT gate compiles every config this returns and fails on a
    spill or on shared memory over the arch's limit):
    - ``K % 32 != 0``: the metadata is read byte by byte (its rows are not 4-byte aligned), which
      costs registers (under the 128 cap it spills): BLOCK_K 128 up to T = 16, 64 for larger
      decode tiles, no register cap; prefill 32 with 8 warps over 64 x 128 (T >= 128) or 128 x 64
      output tiles (128 x 128 spills with a bias and N % 16 != 0 under Triton 3.6).
    - float32 (the IEEE reference path): operands twice the size, so BLOCK_K 128 (64 with byte
      metadata) up to T = 16 and 32 with 8 warps and 2 stages above, no register cap, and 64 x 64
      prefill tiles (the fp16 tiles need 167,936 B of shared memory at T <= 16, over sm_80's
      166,912 B, and spill above).
    """
    words = k % 32 == 0
    fp32 = dtype == torch.float32
    if t <= DECODE_MAX_T:
        block_t = max(16, 1 << max(0, t - 1).bit_length())
        warps, maxnreg = 4, None
        if fp32:
            block_k = (128 if words else 64) if block_t <= 16 else 32
            stages = 3
            if block_t > 16:  # 3 stages spill under Triton 3.9 on sm_80 (byte metadata + bias)
                warps, stages = 8, 2
        elif words:
            block_k = 128 if block_t <= 32 else 64
            stages, maxnreg = 3, (DECODE_MAXNREG if block_t <= 16 else DECODE_MAXNREG_WIDE)
        else:
            block_k = 128 if block_t <= 16 else 64
            stages = 3 if block_t <= 16 else 4
        block_n = 64
        split = _choose_split(_cdiv(n, block_n), _cdiv(k, block_k), t, k, num_sms)
        return Sparse24Config(block_n, block_t, block_k, split, warps, stages, maxnreg)
    if fp32:
        return Sparse24Config(64, 64, 32, 1, 4, 3)
    block_t = 128 if t >= 128 else 64
    if not words:  # byte metadata: 8 warps over a 64 x 128 / 128 x 64 output tile
        return Sparse24Config(64, 128, 32, 1, 8, 3) if block_t == 128 else Sparse24Config(128, 64, 32, 1, 8, 3)
    return Sparse24Config(128, block_t, 64, 1, 8 if block_t == 128 else 4, 3)


def split_cost(tiles: int, steps: int, split: int, t: int, k: int, num_sms: int) -> float:
    """The static cost :func:`_choose_split` minimises, relative to an ideal launch (1.0): the
    SM time of ``tiles * split`` programs of ``cdiv(steps, split)`` K-steps (+ the fixed cost
    per program) placed in whole waves of ``WAVE_BLOCKS_PER_SM`` blocks on every SM (a partly
    filled wave costs a full one), over the useful ``tiles * steps``; divided by the occupancy
    while fewer than ``FILL_BLOCKS_PER_SM`` programs per SM run; plus the fp32 partials' bytes
    (written and read back) over the compressed weight's ``N * K * 9/8`` bytes. ``split`` must
    leave no split empty (``split == cdiv(steps, cdiv(steps, split))``)."""
    per = _cdiv(steps, split)
    programs = tiles * split
    unit = WAVE_BLOCKS_PER_SM * num_sms
    slots = _cdiv(programs, unit) * unit
    waves = slots * (per + PROGRAM_OVERHEAD_STEPS) / (tiles * steps)
    fill = min(1.0, programs / (FILL_BLOCKS_PER_SM * num_sms))
    partials = 0.0 if split == 1 else 2 * split * t * 4 / (k * 9 / 8)
    return waves / fill + partials


def _choose_split(tiles: int, steps: int, t: int, k: int, num_sms: int) -> int:
    """The split-K count of a decode launch: the cheapest :func:`split_cost` among the splits that
    keep >= 2 K-steps per split, the fp32 partials under ~40% of the weight bytes
    (``split <= K / (18 T)``; they are written and read back once, mostly in L2, and the cost
    counts them) and no split empty; ties go to the smaller split."""
    cap = max(1, min(steps // 2, k // (18 * t)))
    best, best_cost = 1, split_cost(tiles, steps, 1, t, k, num_sms)
    for split in range(2, cap + 1):
        if _cdiv(steps, _cdiv(steps, split)) != split:  # an empty split: the same launch as a smaller one
            continue
        cost = split_cost(tiles, steps, split, t, k, num_sms)
        if cost < best_cost - 1e-12:
            best, best_cost = split, cost
    return best


def launch_grid(t: int, n: int, k: int, cfg: Sparse24Config) -> tuple[tuple[int, int, int], int]:
    """``(grid, k_per_split)`` of the launch for ``cfg``: grid (cdiv(N, BLOCK_N), splits,
    cdiv(T, BLOCK_T)); split ``s`` reduces columns ``[s * k_per_split, min((s + 1) * k_per_split,
    K))`` in BLOCK_K steps (the kernel stops at K: no fully masked step), and ``splits`` is
    ``cfg.split_k`` lowered so that no split is empty."""
    steps = _cdiv(k, cfg.block_k)
    k_per_split = _cdiv(steps, cfg.split_k) * cfg.block_k
    return (_cdiv(n, cfg.block_n), _cdiv(k, k_per_split), _cdiv(t, cfg.block_t)), k_per_split


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- Triton kernel
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a hard dependency
    triton = None

if triton is not None:
    @triton.jit
    def _meta_codes(m, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, META_BITS: tl.constexpr):
        """Metadata tile -> ``[BLOCK_N, BLOCK_K/4]`` uint32 group codes ``i0 | i1 << 2`` (bits 4-31 unused).

        ``m`` holds the tile's groups in logical (row, column) order, as ``[BLOCK_N, BLOCK_K/8]``
        bytes (META_BITS 8), ``[BLOCK_N, BLOCK_K/16]`` 16-bit words (16: the device orders) or
        ``[BLOCK_N, BLOCK_K/32]`` int32 words (32: row-major bytes read 4 at a time); little-endian,
        so the low nibble of a word is its first group. Word loads are >= 4 bytes per thread, which
        the pipeliner can stream with async copies like the values. Unsigned, so the shifts are
        logical (no sign extensions), and no group is masked to 4 bits: the expansion tests single
        bits 0-3 only."""
        if META_BITS == 32:
            m = m.to(tl.uint32, bitcast=True)
            m = tl.reshape(tl.join(m, m >> 16), (BLOCK_N, BLOCK_K // 16))
            m = tl.reshape(tl.join(m, m >> 8), (BLOCK_N, BLOCK_K // 8))
        elif META_BITS == 16:
            m = m.to(tl.uint16, bitcast=True).to(tl.uint32)
            m = tl.reshape(tl.join(m, m >> 8), (BLOCK_N, BLOCK_K // 8))
        else:
            m = m.to(tl.uint32)
        return tl.reshape(tl.join(m, m >> 4), (BLOCK_N, BLOCK_K // 4))  # low nibble = even group

    @triton.jit
    def _expand_24(p, code, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr):
        """Compressed tile -> dense tile in registers, two dense entries per machine word.

        ``p [BLOCK_N, BLOCK_K/4]`` one word per group holding both kept values (v0 in the low
        HALF bits, v1 in the high: the values row read as 2*HALF-bit integers), ``code`` the
        group codes -> ``[BLOCK_N, BLOCK_K]`` (HALF-bit floats) with every kept value at its
        column and zeros elsewhere. The dense group is the word pair (d0 | d1 << HALF, d2 | d3 << HALF).
        With codes c = i0 | i1 << 2, i0 < i1, the six valid codes are told apart by single bits
        (c0..c3 = bits 0..3): column 0 is v0 unless i0 > 0 (c0 | c1); column 1 is v0 iff c0, else
        v1 iff i1 == 1 (!c3); column 2 is v0 iff c1, else v1 iff i1 == 2 (!c2); column 3 is v1 iff
        c2 & c3. Per word:
          w01 = c0 ? v0 << HALF : c1 ? 0 : c3 ? v0 : p
          w23 = c1 ? p : !c2 ? v1 : c3 ? v1 << HALF : 0
        4 bit tests + 6 word selects + 3 shifts/masks per group of 4, on whole words, instead of
        6 compares + 6 selects on single values (and their unpacking and repacking)."""
        c0 = (code & 1) != 0
        c1 = (code & 2) != 0
        c2 = (code & 4) != 0
        c3 = (code & 8) != 0
        lo = p & ((1 << HALF) - 1)          # v0 at column 0 (or 2)
        hi_up = p ^ lo                      # v1 at column 1 (or 3)
        zero = tl.zeros_like(p)
        w01 = tl.where(c0, p << HALF, tl.where(c1, zero, tl.where(c3, lo, p)))
        w23 = tl.where(c1, p, tl.where(c2, tl.where(c3, hi_up, zero), p >> HALF))
        words = tl.reshape(tl.join(w01, w23), (BLOCK_N, BLOCK_K // 2))   # word 2g + j = columns 4g + 2j, +1
        if HALF == 16:
            halves = tl.join(words.to(tl.uint16), (words >> 16).to(tl.uint16))
        else:
            halves = tl.join(words.to(tl.uint32), (words >> 32).to(tl.uint32))
        return tl.reshape(halves, (BLOCK_N, BLOCK_K))

    # T (tokens), split_k and split_stride (T * N) are run-time values, not specialised on (== 1, % 16):
    # one compiled kernel per tile config serves every decode step and every split count, so
    # generation never stalls on a JIT compile when the batch size changes
    @triton.jit(do_not_specialize=["T", "split_k", "split_stride"])
    def _sparse24_mm_kernel(x_ptr, v_ptr, m_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                            T, N, K, KV, KM, stride_xt, stride_vn, stride_mn, stride_ot, K_PER_SPLIT, split_stride,
                            split_k, HAS_BIAS: tl.constexpr, USE_SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                            IEEE: tl.constexpr, META_WORDS: tl.constexpr, META_LAYOUT: tl.constexpr,
                            HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                            BLOCK_K: tl.constexpr):
        """out[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) with W streamed compressed.

        Grid (cdiv(N, BLOCK_N), split_k, cdiv(T, BLOCK_T)). Each program expands its weight
        tiles to dense in registers and feeds ``tl.dot(W_tile [BN, BK], x_tile^T [BK, BT])``
        (tensor cores; at decode the token dim is padded to 16, compute is free there).
        USE_SPLIT (split_k > 1): each split stores its fp32 partial tile in ``ws [split_k, T, N]``, then
        bumps the tile's counter (``cnt [tiles]``, zeroed per call by the launcher: see
        ``_split_workspace``); the last split to arrive sums the partials in split order
        (deterministic, whatever the arrival order), adds the bias and writes ``out``.
        META_LAYOUT "sm80" / "sm90": ``m_ptr`` is the metadata's 16-bit words in that device order
        (``ops/sparse24_layout.py``) and ``stride_mn`` the stride of its outer column block (sm80:
        a pair of words, ``2N``; sm90: an atom of 8 words, ``8 * round_up(N, 64)``); the word of
        (row r, 16-column word c) is at ``row_off(r) + col_off(c)``, the layout formula split in its
        row and column parts, so the row part is computed once per program."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_t = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        n_ok = offs_n < N
        t_ok = offs_t < T
        rows = offs_n.to(tl.int64)
        v_rows = v_ptr + rows[:, None] * stride_vn
        if META_LAYOUT == "sm80":    # reorder_meta's row interleave in 32-row blocks + its 2x2 swizzle
            m_rows = m_ptr + ((rows // 32) * 64 + (rows % 8) * 8 + ((rows % 32) // 16) * 4 + (rows // 8) % 2)[:, None]
        elif META_LAYOUT == "sm90":  # TensorEAtom_16bit: 64-row x 8-word atoms of 1024 B, along M first
            m_rows = m_ptr + ((rows // 64) * 512 + ((rows % 64) // 16) * 128 + (rows % 8) * 8
                              + (rows // 8) % 2)[:, None]
        else:
            m_rows = m_ptr + rows[:, None] * stride_mn
        x_cols = x_ptr + offs_t.to(tl.int64)[None, :] * stride_xt
        k_begin = pid_k * K_PER_SPLIT
        k_end = tl.minimum(k_begin + K_PER_SPLIT, K)  # the last split may be shorter: no fully masked step
        acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for k0 in range(k_begin, k_end, BLOCK_K):
            offs_v = k0 // 4 + tl.arange(0, BLOCK_K // 4)  # one value-pair word per group
            if META_LAYOUT == "sm80":    # 16-bit word c: pair c // 2, slot c % 2
                cw = (k0 // 16 + tl.arange(0, BLOCK_K // 16)).to(tl.int64)
                offs_m = (cw // 2) * stride_mn + (cw % 2) * 2
            elif META_LAYOUT == "sm90":  # atom column c // 8, then c % 2 (128 B), then (c % 8) // 2 (4 B)
                cw = (k0 // 16 + tl.arange(0, BLOCK_K // 16)).to(tl.int64)
                offs_m = (cw // 8) * stride_mn + (cw % 2) * 64 + ((cw % 8) // 2) * 2
            elif META_WORDS:  # meta_ptr is int32, K % 32 == 0 and BLOCK_K % 32 == 0
                offs_m = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            else:
                offs_m = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                v = tl.load(v_rows + offs_v[None, :], mask=n_ok[:, None], other=0)
                m = tl.load(m_rows + offs_m[None, :], mask=n_ok[:, None], other=0)
                xt = tl.load(x_cols + offs_k[:, None], mask=t_ok[None, :], other=0.0)
            else:
                v = tl.load(v_rows + offs_v[None, :], mask=n_ok[:, None] & (offs_v < KV)[None, :], other=0)
                if META_LAYOUT == "rowmajor":
                    m_in = offs_m < KM
                else:  # KM = K / 16 words per row
                    m_in = (k0 // 16 + tl.arange(0, BLOCK_K // 16)) < KM
                m = tl.load(m_rows + offs_m[None, :], mask=n_ok[:, None] & m_in[None, :], other=0)
                xt = tl.load(x_cols + offs_k[:, None], mask=(offs_k < K)[:, None] & t_ok[None, :], other=0.0)
            if HALF == 16:
                v = v.to(tl.uint32, bitcast=True)
            else:
                v = v.to(tl.uint64, bitcast=True)
            META_BITS: tl.constexpr = 16 if META_LAYOUT != "rowmajor" else (32 if META_WORDS else 8)
            w = _expand_24(v, _meta_codes(m, BLOCK_N, BLOCK_K, META_BITS), BLOCK_N, BLOCK_K, HALF)
            w = w.to(xt.dtype, bitcast=True)
            if IEEE:
                acc = tl.dot(w, xt, acc, input_precision="ieee")
            else:
                acc = tl.dot(w, xt, acc)
        out_ptrs = out_ptr + offs_t.to(tl.int64)[None, :] * stride_ot + offs_n[:, None]
        out_ok = n_ok[:, None] & t_ok[None, :]
        if not USE_SPLIT:
            if HAS_BIAS:
                acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
        else:
            ws_tile = offs_t.to(tl.int64)[None, :] * N + offs_n[:, None]
            tl.store(ws_ptr + pid_k.to(tl.int64) * split_stride + ws_tile, acc, mask=out_ok)
            tile = pid_t * tl.num_programs(0) + pid_n
            # every thread's partial stores are ordered before the (single-thread) counter bump by
            # the CTA barrier, and made visible GPU-wide by its release; the last arriver's
            # acquire (then .cg loads that bypass L1) sees all partials
            tl.debug_barrier()
            arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == split_k - 1:
                total = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
                s = 0
                while s < split_k:  # in split order: the sum does not depend on the arrival order
                    total += tl.load(ws_ptr + s * split_stride + ws_tile, mask=out_ok, other=0.0,
                                     cache_modifier=".cg")
                    s += 1
                if HAS_BIAS:
                    total += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
                tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=out_ok)


# split-K workspace: one allocation per call from the caching allocator on the launch stream, holding
# the fp32 partials [split, T, N] and then one int32 arrival counter per output tile, zeroed on that
# stream before the kernel runs. Per-call counters make overlapping launches independent (two
# streams, a graph replay beside an eager call): nothing is shared between launches, and a launch
# that dies half-way leaves nothing dirty for the next one. Inside a CUDA-graph capture the
# allocation comes from the graph's private pool and the zeroing is a captured memset node, so the
# graph owns its workspace and no buffer it holds is ever replaced or freed behind its back.
def _split_workspace(device: torch.device, split: int, t: int, n: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partials [split, T, N] float32, counters [tiles] int32 == 0)`` in one fresh allocation."""
    partial = split * t * n
    head = _cdiv(partial, 4) * 4  # counters 16-byte aligned, as Triton specialises pointers on it
    buf = torch.empty(head + tiles, dtype=torch.float32, device=device)
    counters = buf[head:].view(torch.int32)
    counters.zero_()  # on the current (= launch) stream of ``device``
    return buf[:partial].view(split, t, n), counters


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


@_device.guarded  # the inputs' device and stream (issue 20)
def _sparse24_mm_triton(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                        bias: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None,
                        config: Optional[Sparse24Config] = None, meta_layout: str = "rowmajor") -> torch.Tensor:
    """Launch the Triton kernel (inputs already checked, ``meta`` in ``meta_layout``). ``config``
    overrides the heuristic (tests use small tiles to reach masked edges cheaply under the interpreter)."""
    n, k = values.shape[0], 2 * values.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    t = x2.shape[0]
    y = torch.empty((t, n), dtype=x.dtype, device=x.device) if out is None else out.view(t, n)
    if t == 0 or n == 0:
        return y.reshape(*lead, n)
    if k == 0:
        y.copy_((bias if bias is not None else torch.zeros(n, device=x.device)).to(x.dtype).expand(t, n))
        return y.reshape(*lead, n)
    values = values if values.stride(-1) == 1 else values.contiguous()
    meta = meta if meta.stride(-1) == 1 else meta.contiguous()
    cfg = config or launch_config(t, n, k, _num_sms(x.device), x.dtype)
    if meta_layout != "rowmajor" and cfg.maxnreg is not None:
        # the device orders' address arithmetic costs registers: under 128 the T <= 16 tile spills
        # (AOT, sm_90a, odd N + bias + ragged K), so they run with the wide tiles' cap (3 blocks/SM)
        cfg = cfg._replace(maxnreg=max(cfg.maxnreg, DECODE_MAXNREG_WIDE))
    grid, k_per_split = launch_grid(t, n, k, cfg)
    split = grid[1]
    if split > 1:
        ws, counters = _split_workspace(x.device, split, t, n, grid[0] * grid[2])
    else:
        ws, counters = y, y  # unused
    # 4 metadata bytes per load where rows allow it (every LLaMA shape: K % 32 == 0); a view whose
    # rows are not 4-byte aligned is copied, so the words path is exactly K % 32 == 0, the case
    # launch_config sizes its tiles for
    meta_words = meta_layout == "rowmajor" and k % 32 == 0 and cfg.block_k % 32 == 0
    meta_cols, meta_stride = meta.shape[1], meta.stride(0)
    if meta_words:
        if meta.stride(0) % 4 or meta.storage_offset() % 4:
            meta = meta.clone(memory_format=torch.contiguous_format)
        meta = meta.view(torch.int32)
        meta_cols, meta_stride = meta.shape[1], meta.stride(0)
    elif meta_layout != "rowmajor":
        # the device orders are addressed as a whole buffer of 16-bit words (the layout formula)
        meta = meta.contiguous()
        if meta.storage_offset() % 2:
            meta = meta.clone()
        meta = meta.view(torch.int16)
        meta_cols = k // 16
        meta_stride = 2 * n if meta_layout == "sm80" else 8 * meta.shape[0]  # sm90: rows padded to 64
    # the kernel reads each group's two kept values as one word (int32 for fp16/bf16, int64 for
    # fp32): the same bytes; a view whose rows are not word-aligned is copied
    half = 8 * values.element_size()
    word = torch.int32 if half == 16 else torch.int64
    if values.stride(0) % 2 or values.storage_offset() % 2:
        values = values.clone(memory_format=torch.contiguous_format)
    pairs = values.view(word)
    _sparse24_mm_kernel[grid](
        x2, pairs, meta, bias if bias is not None else x2, y, ws, counters,
        t, n, k, k // 4, meta_cols, x2.stride(0), pairs.stride(0), meta_stride, y.stride(0), k_per_split, t * n,
        split, HAS_BIAS=bias is not None, USE_SPLIT=split > 1, EVEN_K=k % cfg.block_k == 0,
        IEEE=x.dtype == torch.float32, META_WORDS=meta_words, META_LAYOUT=meta_layout, HALF=half, BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)
    return y.reshape(*lead, n)


# --------------------------------------------------------------------------- AOT gate cases
# LLaMA2 linear shapes [out_features N, in_features K]: 7B (4096, 11008), 13B (5120, 13824),
# 70B (8192, 28672; its q/o projection is 8192 x 8192)
AOT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (5120, 5120), (13824, 5120), (8192, 8192),
              (28672, 8192), (8192, 28672))
AOT_TOKENS = (1, 4, 16, 64, 1024)


def compile_variant(t: int, n: int, k: int, dtype: torch.dtype, has_bias: bool, num_sms: int = DEFAULT_NUM_SMS):
    """What decides which compiled kernel a (contiguous) launch runs, as far as the AOT gate
    tells variants apart: the config and every constexpr the launcher passes (dtype, bias,
    split-K, full K steps, word metadata; the split count itself is a run-time value, so it is
    left out of the config), and whether the rows are 16-aligned (N % 16: Triton
    specialises int arguments on divisibility by 16, which sets the store and bias widths; K's
    class follows from the two K flags). T, split_k and T * N are not specialised on."""
    cfg = launch_config(t, n, k, num_sms, dtype)
    grid, _ = launch_grid(t, n, k, cfg)
    return (cfg._replace(split_k=0), str(dtype).split(".")[-1], has_bias, grid[1] > 1, k % cfg.block_k == 0,
            k % 32 == 0, n % 16 == 0)


# the sweep reachable_configs() takes its representatives from: every decode T, prefill T on both
# sides of each tile switch; N of every alignment class (16-aligned, odd, 1); K of every class
# (a multiple of 256, 128, 64, 32, 16, 8, only 4), each small (no split-K) and LLaMA-sized (split)
_SWEEP_T = tuple(range(1, DECODE_MAX_T + 1)) + (65, 127, 128, 1024)
_SWEEP_N = (4096, 11008, 100, 4097, 1)
_SWEEP_K = (4096, 28672, 11008, 4224, 4160, 4128, 4112, 4104, 4100,
            256, 384, 320, 288, 272, 264, 260, 8)


def reachable_configs(num_sms: int = DEFAULT_NUM_SMS) -> dict:
    """Every compiled variant of the kernel that launch_config + the launcher can produce (over
    the sweep above), ``{compile_variant key: representative (T, N, K, dtype, has_bias)}``: the
    most aligned shape that reaches it first (the sweep lists aligned shapes first: the widest
    accesses, the register worst case). fp16 is swept with and without bias and at every N
    alignment; bf16 and fp32 (whose tiles differ from fp16's only in the conversions, or are their
    own configs) with bias and 16-aligned N, so every (config, dtype, split-K, full K steps, word
    metadata) combination is there once per dtype. The AOT gate compiles one launch per entry
    (:func:`aot_cases`); ``tests/ops/test_sparse24_mm.py`` checks that any (T, N, K) of its sweeps
    lands on an entry."""
    out: dict = {}
    for dtype in SUPPORTED_DTYPES:
        full = dtype == torch.float16
        for has_bias in ((True, False) if full else (True,)):
            for n in (_SWEEP_N if full else tuple(v for v in _SWEEP_N if v % 16 == 0)):
                for k in _SWEEP_K:
                    for t in _SWEEP_T:
                        out.setdefault(compile_variant(t, n, k, dtype, has_bias, num_sms), (t, n, k, dtype, has_bias))
    return out


def variant_covered(key: tuple, reachable: dict) -> bool:
    """Whether ``reachable_configs()`` compiles ``key`` (a :func:`compile_variant`), given the
    reduced sweep for bf16/fp32: there the bias flag and the N alignment are not told apart."""
    if key in reachable:
        return True
    if key[1] == "float16":
        return False
    return key[:2] + (True,) + key[3:6] + (True,) in reachable


def aot_cases() -> list:
    """``(label, zero-arg callable)`` per launch for the AOT compile gate: each callable calls the
    public :func:`sparse24_mm` with ``backend="triton"`` on uninitialised CPU tensors. First every
    entry of :func:`reachable_configs` (so every config launch_config can return is compiled, for
    fp16, bf16 and fp32, with and without bias, split-K or not, full or ragged K steps, word or
    byte metadata), then the LLaMA2 shapes at decode T = 1, 4, 16, 64 and prefill T = 1024 (fp16
    and bf16 without bias, fp16 with bias), which name the table's rows. The gate's recording
    hook must stop the kernel from running (and let the Triton backend be forced on CPU tensors,
    e.g. by patching ``ria_kernels._backend.interpret_mode``)."""
    cases = []
    for (t, n, k, dtype, has_bias) in reachable_configs().values():
        label = f"sparse24_mm reachable T={t} N={n} K={k} {str(dtype).split('.')[-1]}" + (" bias" if has_bias else "")
        cases.append((label, _aot_call(t, n, k, dtype, has_bias)))
    for n, k in AOT_SHAPES:
        for t in AOT_TOKENS:
            for dtype, has_bias in ((torch.float16, False), (torch.bfloat16, False), (torch.float16, True)):
                label = f"sparse24_mm T={t} N={n} K={k} {str(dtype).split('.')[-1]}" + (" bias" if has_bias else "")
                cases.append((label, _aot_call(t, n, k, dtype, has_bias)))
    # the device metadata orders (the kernel's address arithmetic differs; the tiles are the same),
    # fp16 and bf16, on LLaMA shapes at every decode tile and prefill, and a shape sm90 pads
    for layout in ("sm80", "sm90"):
        # + the register worst case each order accepts: N not 16-aligned (sm90: any N), bias, ragged K steps
        worst = (4128, 4160) if layout == "sm80" else (4097, 4128)
        for n, k in ((4096, 4096), (8192, 28672), worst) + (((4160, 4112),) if layout == "sm90" else ()):
            for t in (1, 17, 33, 1024):
                for dtype in (torch.float16, torch.bfloat16):
                    bias = (n, k) == worst
                    label = (f"sparse24_mm layout={layout} T={t} N={n} K={k} {str(dtype).split('.')[-1]}"
                             + (" bias" if bias else ""))
                    cases.append((label, _aot_call(t, n, k, dtype, bias, layout)))
    return cases


def _aot_call(t: int, n: int, k: int, dtype: torch.dtype, has_bias: bool, meta_layout: str = "rowmajor"):
    def call():
        from .sparse24_layout import sm90_meta_shape
        x = torch.empty((t, k), dtype=dtype)
        values = torch.empty((n, k // 2), dtype=dtype)
        if meta_layout == "sm80":
            meta = torch.zeros((n, k // 16), dtype=torch.int16)
        elif meta_layout == "sm90":
            meta = torch.zeros(sm90_meta_shape(n, k), dtype=torch.uint8)
        else:
            meta = torch.zeros((n, (k + 7) // 8), dtype=torch.uint8)
        bias = torch.empty((n,), dtype=dtype) if has_bias else None
        return sparse24_mm(x, values, meta, bias, backend="triton", meta_layout=meta_layout)
    return call
