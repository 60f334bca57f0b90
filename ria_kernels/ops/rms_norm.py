"""Permutation-aware RMSNorm: ``y[..., j] = rmsnorm(x)[..., perm[j]]``.

Optionally fused with the residual add: ``h = x + residual`` is normalised and
``h`` is returned too, in the *original* channel order, so the residual stream
of a model with permuted sparse linears stays untouched. ``weight`` is given in
original order; the permuted copy is cheap (done once by callers that cache it).
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._errors import RiaInputError


def _check(x, weight, perm, residual):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise RiaInputError(f"x dtype {x.dtype} unsupported; expected float16, bfloat16 or float32")
    h = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != h:
        raise RiaInputError(f"weight must have shape [{h}], got {tuple(weight.shape)}")
    if perm is not None:
        if perm.dim() != 1 or perm.shape[0] != h:
            raise RiaInputError(f"perm must have shape [{h}], got {tuple(perm.shape)}")
        if perm.dtype not in (torch.int32, torch.int64):
            raise RiaInputError(f"perm must be int32/int64, got {perm.dtype}")
    if residual is not None and residual.shape != x.shape:
        raise RiaInputError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")


def check_permutation(perm: torch.Tensor, size: int) -> None:
    """Raise unless ``perm`` is a permutation of ``range(size)``."""
    if perm.dim() != 1 or perm.numel() != size:
        raise RiaInputError(f"perm must be 1-D of length {size}, got shape {tuple(perm.shape)}")
    seen = torch.zeros(size, dtype=torch.bool, device=perm.device)
    if bool(((perm < 0) | (perm >= size)).any()):
        raise RiaInputError(f"perm has entries outside [0, {size})")
    seen[perm.long()] = True
    if not bool(seen.all()):
        raise RiaInputError("perm is not a permutation (repeated entries)")


def permuted_rms_norm_reference(x, weight, perm=None, eps=1e-6, residual=None):
    """float32 reference. Returns ``y`` or ``(y, h)`` when ``residual`` is given."""
    h = x.float() if residual is None else x.float() + residual.float()
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if perm is not None:
        y = y.index_select(-1, perm.long())
    y = y.to(x.dtype)
    return y if residual is None else (y, h.to(x.dtype))


def permuted_rms_norm(x: torch.Tensor, weight: torch.Tensor, perm: torch.Tensor | None = None,
                      eps: float = 1e-6, residual: torch.Tensor | None = None, *,
                      backend: str | None = None):
    """RMSNorm whose output is written in channel order ``perm`` (``None``: unpermuted)."""
    _check(x, weight, perm, residual)
    if resolve_backend("permuted_rms_norm", x, backend) == "triton":
        return _permuted_rms_norm_triton(x, weight, perm, eps, residual)
    return permuted_rms_norm_reference(x, weight, perm, eps, residual)


def _permuted_rms_norm_triton(x, weight, perm, eps, residual):  # TODO(issue 3)
    raise NotImplementedError("Triton permuted_rms_norm not written yet")
