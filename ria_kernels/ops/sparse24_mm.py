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
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._errors import RiaInputError

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
                          bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-torch reference: decompress, ``F.linear`` in float32, cast to ``x.dtype``."""
    w = decompress_24(values, meta).float()
    b = None if bias is None else bias.float()
    return F.linear(x.float(), w, b).to(x.dtype)


def sparse24_mm(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                bias: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """``x [..., K] @ W^T (+ bias)`` for the compressed 2:4 ``W`` (see the module docstring).

    Placeholder dispatch until the Triton kernel lands: runs the torch reference."""
    n, k = _check_compressed(values, meta)
    if x.shape[-1] != k:
        raise RiaInputError(f"x.shape[-1] must equal in_features {k}, got {x.shape[-1]}")
    if x.dtype != values.dtype:
        raise RiaInputError(f"x dtype {x.dtype} must match the weight values' dtype {values.dtype}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise RiaInputError(f"bias must have shape [{n}], got {tuple(bias.shape)}")
    return sparse24_mm_reference(x, values, meta, bias)
