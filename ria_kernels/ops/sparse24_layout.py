"""Device orders of the compact 2:4 metadata: converters both ways and the choice of order.

The compact format (:mod:`ria_kernels.ops.sparse24_mm`, FORMAT_VERSION 1) stores ``meta [N, ceil(K/8)]``
uint8, row-major: group ``g`` of a row has the 4-bit code ``i0 | i1 << 2`` in byte ``g // 2``, low nibble
for even ``g``. Read as little-endian int16 (K % 16 == 0) that is ``words [N, K/16]``: word ``c`` of a row
holds groups ``4c .. 4c+3`` at bits ``4i``. The values ``[N, K/2]`` are already the compressed A operand of
both CUTLASS kernels, so they need no conversion (sm80: equal to torch's reference converter's on the CPU;
sm90: CUTLASS's ``fill_layoutA`` is row-major ``[N, K/2]``, evaluated by the host program below, and equal to
``cutlass90_compress``'s on Hopper: tests/ops/test_sparse24_layout.py, tests/ops/test_sparse_mm_layout.py).
Only the metadata gets a device order, and both device orders are permutations of these whole 16-bit words:

- ``"sm80"``: CUTLASS 2.x ``SparseGemm``'s LayoutE for 16-bit A (``ColumnMajorInterleaved<2>`` after
  ``cutlass::reorder_meta``; the same order ``csrc/cutlass_meta.cpp``'s ``pack_2to4_sm80`` and torch's
  ``sparse_semi_structured_from_dense_cutlass`` produce): ``int16 [N, K/16]``. Word ``(r, c)`` goes to
  int16 index ``(c//2)*2N + (r//32)*64 + (r%8)*8 + ((r%32)//16)*4 + (c%2)*2 + (r//8)%2``: the row interleave
  within 32 rows and the 2x2 block swizzle of reorder_meta, written as one axis permutation.
- ``"sm90"``: CUTLASS 3.x ``Sm90GemmSparseConfig::fill_layoutE`` for 16-bit A with MinTileShapeK = 128
  (what the collective builder picks for the kernel's 128-deep K tile; ``csrc/cutlass_sparse_sm90_kernel.cuh``
  pins the 64 x 128 alignment): ``uint8 [round_up(N, 64), round_up(K, 128) / 8]``, zero padding. Inside a
  64-row x 128-column atom (1024 B) word ``(r, c)`` sits at byte ``2*((r//8)%2) + 4*((c%8)//2) + 16*(r%8) +
  128*(c%2) + 256*((r%64)//16)``; atoms go along M first (1024 B each), then along K (``N_pad * 16`` B).
  Checked on the CPU against CUTLASS's own layout, evaluated for every nibble by a host-compiled program
  (``csrc/tools/sm90_meta_layout.cpp``); the Hopper check against ``cutlass90_compress`` and the sm90 GEMM
  is tests/ops/test_sparse_mm_layout.py (GPU only).
- ``"rowmajor"``: the compact metadata itself (CPU, the Triton kernel, shapes no tensor-core kernel takes).

The device orders are built from the package's own codes, never with CUTLASS's compressors: for groups with
fewer than 2 non-zeros those choose other kept positions (and so other values) than ``compress_24``, so
their metadata would not match the stored values.

Every converter is one ``view`` + ``permute`` + ``contiguous`` (no index tensors, no Python loop over
elements), runs on the tensor's device and is the exact inverse of its partner. :func:`meta_layout_for` is the
pure decision of which order a weight gets on a device.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .._errors import RiaInputError

LAYOUTS = ("rowmajor", "sm80", "sm90")
# (N, K) multiples the converters need: sm80 permutes 32-row blocks and pairs of 16-column words (the
# kernel itself needs more: sparse_mm.CUTLASS_SHAPE_MULTIPLES); sm90 works on whole 16-bit words and pads.
SM80_CONVERT_MULTIPLES = (32, 32)
SM90_CONVERT_MULTIPLES = (1, 16)
# sm90 metadata padding: Sm90GemmSparseConfig's TensorEAlignmentM / TensorEAlignmentK (kMetaAlignM/K in
# csrc/cutlass_sparse_sm90.h, static_asserted against CUTLASS there).
SM90_META_ALIGN_M = 64
SM90_META_ALIGN_K = 128
# The sm90 kernel indexes with int32 (csrc/cutlass_sparse_sm90.cu check_weight_sm90).
_INT32_MAX = 2**31 - 1
TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def sm90_meta_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the sm90 metadata buffer of an ``[n, k]`` weight: ``(round_up(n, 64), round_up(k, 128) / 8)``."""
    return _round_up(n, SM90_META_ALIGN_M), _round_up(k, SM90_META_ALIGN_K) // 8


def _check_shape(n: int, k: int, multiples: tuple[int, int], layout: str) -> None:
    if isinstance(n, bool) or isinstance(k, bool) or not all(isinstance(v, numbers.Integral) for v in (n, k)):
        raise RiaInputError(f"{layout} metadata: n and k must be ints, got {n!r}, {k!r}")
    mn, mk = multiples
    if n <= 0 or n % mn:
        raise RiaInputError(f"{layout} metadata: out_features n={n} must be a positive multiple of {mn}")
    if k <= 0 or k % mk:
        raise RiaInputError(f"{layout} metadata: in_features k={k} must be a positive multiple of {mk}")


def _check_tensor(meta: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> None:
    if not isinstance(meta, torch.Tensor):
        raise RiaInputError(f"{what} must be a tensor, got {type(meta).__name__}")
    if meta.dtype != dtype or tuple(meta.shape) != tuple(shape):
        raise RiaInputError(f"{what} must be {dtype} of shape {list(shape)}, got {meta.dtype} {list(meta.shape)}")


def _compact_words(meta: torch.Tensor, n: int, k: int, layout: str) -> torch.Tensor:
    """The compact metadata as int16 words ``[n, k/16]`` (a view when contiguous)."""
    _check_tensor(meta, (n, k // 8), torch.uint8, f"compact meta for {layout} (n={n}, k={k})")
    meta = meta.contiguous()
    if meta.storage_offset() % 2:  # a byte-offset view cannot be reinterpreted as int16 in place
        meta = meta.clone()
    return meta.view(torch.int16)


# --------------------------------------------------------------------------- sm80
# Word (r, c), r = 32*r32 + 16*qh + 8*ql + s (qh, ql: bits 4 and 3 of r; s = r % 8), c = 2*ch + cl, lands at
# int16 index ch*2N + r32*64 + s*8 + qh*4 + cl*2 + ql: reorder_meta's row interleave dr = 32*r32 + 4*s + 2*qh
# + ql, then its 2x2 swizzle (a transpose of each 2x2 block: (dr%2, c%2) -> (c%2, dr%2)), then
# ColumnMajorInterleaved<2> (index (c'//2)*2N + dr'*2 + c'%2). So the buffer is the words viewed as
# (r32, qh, ql, s, ch, cl) and read in the order (ch, r32, s, qh, cl, ql).
_SM80_PERM = (4, 0, 3, 1, 5, 2)
_SM80_INV = tuple(_SM80_PERM.index(i) for i in range(6))


def compact_to_sm80_meta(meta: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The CUTLASS sm80 SparseGemm metadata ``int16 [n, k/16]`` (the layout ``cutlass_compress`` returns)
    of the compact ``meta [n, k/8]`` uint8. Needs ``n % 32 == 0`` and ``k % 32 == 0`` (the sm80 kernel
    itself needs ``k % 64 == 0``, see :func:`meta_layout_for`)."""
    _check_shape(n, k, SM80_CONVERT_MULTIPLES, "sm80")
    words = _compact_words(meta, n, k, "sm80")
    kc = k // 16
    out = words.view(n // 32, 2, 2, 8, kc // 2, 2).permute(_SM80_PERM).contiguous()
    return out.view(n, kc)


def sm80_to_compact_meta(meta_sm80: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`compact_to_sm80_meta`: the compact ``meta [n, k/8]`` uint8."""
    _check_shape(n, k, SM80_CONVERT_MULTIPLES, "sm80")
    kc = k // 16
    _check_tensor(meta_sm80, (n, kc), torch.int16, f"sm80 meta (n={n}, k={k})")
    words = meta_sm80.contiguous().view(kc // 2, n // 32, 8, 2, 2, 2).permute(_SM80_INV).contiguous()
    return words.view(n, kc).view(torch.uint8)


# --------------------------------------------------------------------------- sm90
# Word (r, c) of the padded [n_pad, kc_pad] words, r = 64*ra + 16*r16 + 8*r3 + r8, c = 8*ca + 2*c2 + c1, sits
# at word index ca*(n_pad*8) + ra*512 + r16*128 + c1*64 + r8*8 + c2*2 + r3 (the byte offsets of the module
# docstring / 2). So the buffer is the words viewed as (ra, r16, r3, r8, ca, c2, c1) and read in the order
# (ca, ra, r16, c1, r8, c2, r3).
_SM90_PERM = (4, 0, 1, 6, 3, 5, 2)
_SM90_INV = tuple(_SM90_PERM.index(i) for i in range(7))


def compact_to_sm90_meta(meta: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The CUTLASS sm90 metadata ``uint8 [round_up(n, 64), round_up(k, 128) / 8]`` (the layout
    ``cutlass90_compress`` returns, zero padding) of the compact ``meta [n, k/8]`` uint8. Needs
    ``k % 16 == 0`` (whole 16-bit words; the sm90 kernel's own limit); any ``n >= 1``."""
    _check_shape(n, k, SM90_CONVERT_MULTIPLES, "sm90")
    words = _compact_words(meta, n, k, "sm90")
    n_pad, kb_pad = sm90_meta_shape(n, k)
    kc, kc_pad = k // 16, kb_pad // 2
    if (n_pad, kc_pad) != (n, kc):  # the padding words hold no group: code 0, as CUTLASS zero-fills them
        words = torch.nn.functional.pad(words, (0, kc_pad - kc, 0, n_pad - n))
    out = words.view(n_pad // 64, 4, 2, 8, kc_pad // 8, 4, 2).permute(_SM90_PERM).contiguous()
    return out.view(n_pad, kc_pad).view(torch.uint8)


def sm90_to_compact_meta(meta_sm90: torch.Tensor, n: int, k: int, *, check_padding: bool = True) -> torch.Tensor:
    """Inverse of :func:`compact_to_sm90_meta`: the compact ``meta [n, k/8]`` uint8.

    ``check_padding`` (default) raises ``RiaInputError`` when a padding byte is not zero: such a buffer
    did not come from :func:`compact_to_sm90_meta` of this shape (it costs one device sync)."""
    _check_shape(n, k, SM90_CONVERT_MULTIPLES, "sm90")
    n_pad, kb_pad = sm90_meta_shape(n, k)
    _check_tensor(meta_sm90, (n_pad, kb_pad), torch.uint8, f"sm90 meta (n={n}, k={k})")
    kc_pad = kb_pad // 2
    words = meta_sm90.contiguous().view(torch.int16).view(kc_pad // 8, n_pad // 64, 4, 2, 8, 4, 2)
    words = words.permute(_SM90_INV).contiguous().view(n_pad, kc_pad)
    if check_padding and (n_pad, kc_pad) != (n, k // 16):
        pad_nonzero = bool(words[n:].any()) or bool(words[:n, k // 16:].any())
        if pad_nonzero:
            raise RiaInputError(f"sm90 meta (n={n}, k={k}): the padding (rows >= {n} or columns >= {k}) is not "
                                f"zero, so this buffer is not the sm90 metadata of an [{n}, {k}] weight")
    return words[:n, : k // 16].contiguous().view(torch.uint8)


# --------------------------------------------------------------------------- choice and dispatch
def meta_layout_for(device_capability: Optional[tuple[int, int]], n: int, k: int, dtype: torch.dtype) -> str:
    """Which metadata order a weight ``[n, k]`` of ``dtype`` gets on a device: ``"sm90"``, ``"sm80"`` or
    ``"rowmajor"``. A pure function of its arguments.

    ``device_capability`` is the CUDA compute capability ``(major, minor)`` of the device the weight is
    placed on, or ``None`` for a CPU (or any device without the extension's CUTLASS kernels: the caller
    knows that, this function does not ask). The shape limits are those of the kernels in ``csrc/``
    (``sparse_mm.CUTLASS_SHAPE_MULTIPLES``):

    - capability 9.0 (Hopper; the sm_90a kernel runs only there): ``"sm90"`` when ``n % 8 == 0``,
      ``k % 16 == 0`` and ``n * k < 2^31``; else ``"rowmajor"`` (never the sm80 kernel on Hopper: it is
      slower than dense there);
    - any other capability >= 8.0: ``"sm80"`` when ``n % 32 == 0`` and ``k % 64 == 0``; else ``"rowmajor"``;
    - below 8.0 (no sparse tensor cores), ``None``, or a dtype other than float16 / bfloat16: ``"rowmajor"``.
    """
    from .sparse_mm import CUTLASS_SHAPE_MULTIPLES  # no extension load: a plain constant

    if device_capability is None or dtype not in TENSOR_CORE_DTYPES or n <= 0 or k <= 0:
        return "rowmajor"
    cap = tuple(int(v) for v in device_capability)
    if cap == (9, 0):
        mn, mk = CUTLASS_SHAPE_MULTIPLES["sm90"]
        return "sm90" if n % mn == 0 and k % mk == 0 and n * k <= _INT32_MAX else "rowmajor"
    if cap >= (8, 0):
        mn, mk = CUTLASS_SHAPE_MULTIPLES["sm80"]
        return "sm80" if n % mn == 0 and k % mk == 0 else "rowmajor"
    return "rowmajor"


def compact_to_layout(meta: torch.Tensor, n: int, k: int, layout: str) -> torch.Tensor:
    """The compact ``meta [n, ceil(k/8)]`` in ``layout`` (one of :data:`LAYOUTS`); ``"rowmajor"`` returns
    ``meta`` itself."""
    if layout == "rowmajor":
        _check_tensor(meta, (n, (k + 7) // 8), torch.uint8, f"compact meta (n={n}, k={k})")
        return meta
    if layout == "sm80":
        return compact_to_sm80_meta(meta, n, k)
    if layout == "sm90":
        return compact_to_sm90_meta(meta, n, k)
    raise RiaInputError(f"metadata layout must be one of {LAYOUTS}, got {layout!r}")


def layout_to_compact(meta: torch.Tensor, n: int, k: int, layout: str) -> torch.Tensor:
    """Inverse of :func:`compact_to_layout`: the compact ``meta [n, ceil(k/8)]`` uint8 (the checkpoint format)."""
    if layout == "rowmajor":
        _check_tensor(meta, (n, (k + 7) // 8), torch.uint8, f"compact meta (n={n}, k={k})")
        return meta
    if layout == "sm80":
        return sm80_to_compact_meta(meta, n, k)
    if layout == "sm90":
        return sm90_to_compact_meta(meta, n, k)
    raise RiaInputError(f"metadata layout must be one of {LAYOUTS}, got {layout!r}")
