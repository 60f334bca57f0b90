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
                      backend: str | None = None, validate: bool = True, weight_permuted: bool = False,
                      out: torch.Tensor | None = None):
    """RMSNorm whose output is written in channel order ``perm`` (``None``: unpermuted).

    ``validate=False`` skips the permutation check (a device sync) on hot paths whose
    ``perm`` was validated once at construction; ``weight_permuted=True`` says
    ``weight`` is already in output order (callers cache ``weight[perm]``).
    """
    _check(x, weight, perm, residual)
    if perm is not None and validate:
        check_permutation(perm, x.shape[-1])
    if resolve_backend("permuted_rms_norm", x, backend) == "triton":
        return _permuted_rms_norm_triton(x, weight, perm, eps, residual, out, weight_permuted)
    if weight_permuted and perm is not None:
        weight = torch.empty_like(weight).index_copy_(0, perm.long(), weight)
    y = permuted_rms_norm_reference(x, weight, perm, eps, residual)
    if out is not None:
        out.copy_(y if residual is None else y[0])
        return out if residual is None else (out, y[1])
    return y


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _permuted_rms_norm_kernel(x_ptr, res_ptr, w_ptr, perm_ptr, y_ptr, h_ptr, H, eps,
                                  PERMUTE: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr):
        """One program per token row. The row is read once for the mean square; the
        permuted second read hits L1/L2 (the row is a few KB), so the gather costs
        no extra DRAM traffic."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_H)
        valid = offs < H
        x = tl.load(x_ptr + row * H + offs, mask=valid, other=0.0).to(tl.float32)
        if RESIDUAL:
            x += tl.load(res_ptr + row * H + offs, mask=valid, other=0.0).to(tl.float32)
            tl.store(h_ptr + row * H + offs, x.to(h_ptr.dtype.element_ty), mask=valid)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
        if PERMUTE:
            src = tl.load(perm_ptr + offs, mask=valid, other=0)
            xp = tl.load(x_ptr + row * H + src, mask=valid, other=0.0).to(tl.float32)
            if RESIDUAL:
                xp += tl.load(res_ptr + row * H + src, mask=valid, other=0.0).to(tl.float32)
        else:
            xp = x
        w = tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32)  # already in output order
        tl.store(y_ptr + row * H + offs, (xp * rstd * w).to(y_ptr.dtype.element_ty), mask=valid)


def _permuted_rms_norm_triton(x, weight, perm, eps, residual, out=None, weight_permuted=False):
    if not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        raise RiaInputError("x and residual must be contiguous for the Triton permuted_rms_norm")
    h = x.shape[-1]
    rows = x.numel() // h
    w_out = weight if (perm is None or weight_permuted) else weight.index_select(0, perm.long())
    y = torch.empty_like(x) if out is None else out
    h_out = torch.empty_like(x) if residual is not None else y
    block = triton.next_power_of_2(h)
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _permuted_rms_norm_kernel[(rows,)](x, residual if residual is not None else x, w_out.contiguous(),
                                       perm if perm is not None else x, y, h_out, h, eps,
                                       PERMUTE=perm is not None, RESIDUAL=residual is not None,
                                       BLOCK_H=block, num_warps=num_warps)
    return y if residual is None else (y, h_out)
