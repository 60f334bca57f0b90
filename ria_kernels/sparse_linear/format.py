"""The compressed 2:4 format a :class:`SparseLinear` holds, and the pattern checks before compression.

The format itself (kept values ``[N, K/2]`` + packed 4-bit in-group codes, row-major) is defined and
converted by :mod:`ria_kernels.ops.sparse24_mm` (``compress_24`` / ``decompress_24``); this file holds
what the module adds around it: the 2:4 pattern check and the signed-zero normalisation every
compressor gets its weight through. On a GPU the metadata is held in the order of the device's CUTLASS
kernel (:mod:`ria_kernels.ops.sparse24_layout`: ``compact_to_layout`` / ``layout_to_compact``, exact
inverses); checkpoints and ``state_dict`` always hold the row-major order.
"""
from __future__ import annotations

import torch

from .._errors import RiaInputError
from ..ops.sparse24_mm import SUPPORTED_DTYPES as SPARSE24_DTYPES
from ..ops.sparse24_layout import LAYOUTS as META_LAYOUTS
from ..ops.sparse24_layout import compact_to_layout, layout_meta_spec, layout_to_compact
from ..ops.sparse24_mm import compress_24, decompress_24

__all__ = ["META_LAYOUTS", "SPARSE24_DTYPES", "check_2to4", "compact_to_layout", "compress_24", "decompress_24",
           "is_2to4", "layout_meta_spec", "layout_to_compact", "positive_zeros"]


def positive_zeros(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with every -0.0 replaced by +0.0 (a new tensor; other values unchanged). Applied
    before every 2:4 compression: vLLM (PR 13198) found CUTLASS's compressor mis-packs -0.0 entries."""
    return weight.masked_fill(weight == 0, 0)


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
