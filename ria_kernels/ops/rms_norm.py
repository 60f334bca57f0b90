"""Permutation-aware RMSNorm: ``y[..., j] = rmsnorm(x)[..., perm[j]]``.

Optionally fused with the residual add: ``h = x + residual`` (rounded to x's dtype,
exactly what an unfused model's residual stream holds) is normalised and returned
too, in the *original* channel order, so the residual stream of a model with
permuted sparse linears stays untouched. ``weight`` is given in original order
unless ``weight_permuted=True`` (callers cache ``weight[perm]`` once).
``perm=None`` is the plain (unpermuted) RMSNorm, same kernel.

Dispatch: the public function validates, then calls the custom op
``ria_kernels::permuted_rms_norm`` / ``ria_kernels::permuted_add_rms_norm`` (fake
impls registered: traceable by ``torch.compile`` with no graph break, capturable
in CUDA graphs). The op's implementation calls ``_dispatch``, whose
``resolve_backend`` is the one place choosing Triton or the torch reference.
``out=`` / ``residual_out=`` (eager callers: benchmarks, tests) call ``_dispatch``
directly.
"""
from __future__ import annotations

import collections
from typing import Optional

import torch

from .._backend import resolve_backend
from .. import _device
from .._errors import RiaInputError
from ._grid import next_power_of_2

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(x, weight, perm, residual):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise RiaInputError("x must be a tensor of shape [..., hidden]")
    if x.dtype not in _DTYPES:
        raise RiaInputError(f"x dtype {x.dtype} unsupported; expected float16, bfloat16 or float32")
    h = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != h:
        raise RiaInputError(f"weight must have shape [{h}], got {tuple(weight.shape)}")
    if weight.dtype not in _DTYPES:
        raise RiaInputError(f"weight dtype {weight.dtype} unsupported; expected float16, bfloat16 or float32")
    if weight.device != x.device:
        raise RiaInputError(f"weight is on {weight.device}, x on {x.device}")
    if perm is not None:
        if perm.dim() != 1 or perm.shape[0] != h:
            raise RiaInputError(f"perm must have shape [{h}], got {tuple(perm.shape)}")
        if perm.dtype not in (torch.int16, torch.int32, torch.int64):
            raise RiaInputError(f"perm must be int16/int32/int64, got {perm.dtype}")
        if perm.dtype == torch.int16 and h > 32768:
            raise RiaInputError(f"perm must be int32/int64 for hidden size {h} > 32768, got int16")
        if perm.device != x.device:
            raise RiaInputError(f"perm is on {perm.device}, x on {x.device}")
    if residual is not None:
        if residual.shape != x.shape:
            raise RiaInputError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        if residual.dtype != x.dtype or residual.device != x.device:
            raise RiaInputError(f"residual must be {x.dtype} on {x.device}, got {residual.dtype} on {residual.device}")


def _check_out(t, x, name):
    if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device
                          or not t.is_contiguous()):
        raise RiaInputError(f"{name} must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}")


def check_permutation(perm: torch.Tensor, size: int) -> None:
    """Raise unless ``perm`` is a permutation of ``range(size)`` (one device sync)."""
    if perm.dim() != 1 or perm.numel() != size:
        raise RiaInputError(f"perm must be 1-D of length {size}, got shape {tuple(perm.shape)}")
    if bool(((perm < 0) | (perm >= size)).any()):
        raise RiaInputError(f"perm has entries outside [0, {size})")
    seen = torch.zeros(size, dtype=torch.bool, device=perm.device)
    seen[perm.long()] = True
    if not bool(seen.all()):
        raise RiaInputError("perm is not a permutation (repeated entries)")


def permuted_rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, perm: Optional[torch.Tensor] = None,
                                eps: float = 1e-6, residual: Optional[torch.Tensor] = None):
    """float32 reference (``weight`` in original order). Returns ``y`` or ``(y, h)`` when
    ``residual`` is given; ``h = (x + residual)`` rounded to x's dtype, as stored."""
    if residual is None:
        hf = x.float()
    else:
        h = (x.float() + residual.float()).to(x.dtype)
        hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if perm is not None:
        y = y.index_select(-1, perm.long())
    y = y.to(x.dtype)
    return y if residual is None else (y, h)


def rms_norm_index_select_baseline(x: torch.Tensor, weight: torch.Tensor, perm: Optional[torch.Tensor] = None,
                                   eps: float = 1e-6, residual: Optional[torch.Tensor] = None):
    """The strongest plain-torch path a user has (benchmark baseline, run under
    ``torch.compile``): ``F.rms_norm`` in the input dtype, then ``index_select`` for the
    permutation; with ``residual``, ``h = x + residual`` first. Same outputs as the reference
    up to the rounding of the input-dtype arithmetic."""
    h = x if residual is None else x + residual
    y = torch.nn.functional.rms_norm(h, (h.shape[-1],), weight.to(h.dtype), eps)
    if perm is not None:
        y = y.index_select(-1, perm)
    return y if residual is None else (y, h)


def permuted_rms_norm(x: torch.Tensor, weight: torch.Tensor, perm: Optional[torch.Tensor] = None,
                      eps: float = 1e-6, residual: Optional[torch.Tensor] = None, *,
                      backend: Optional[str] = None, validate: bool = True, weight_permuted: bool = False,
                      out: Optional[torch.Tensor] = None, residual_out: Optional[torch.Tensor] = None):
    """RMSNorm whose output is written in channel order ``perm`` (``None``: unpermuted).

    Returns ``y``, or ``(y, h)`` with ``h = x + residual`` in original order when
    ``residual`` is given. ``validate=False`` skips the permutation check (a device
    sync, and a graph break under ``torch.compile``) on hot paths whose ``perm`` was
    validated once at construction; ``weight_permuted=True`` says ``weight`` is already
    in output order (``weight[perm]``).
    """
    _check(x, weight, perm, residual)
    _check_out(out, x, "out")
    _check_out(residual_out, x, "residual_out")
    if residual_out is not None and residual is None:
        raise RiaInputError("residual_out needs residual")
    if backend is not None and backend.lower() not in ("triton", "torch"):
        raise RiaInputError(f"backend must be one of ('triton', 'torch'), got {backend!r}")
    if perm is not None and validate:
        check_permutation(perm, x.shape[-1])
    eps = float(eps)
    if out is not None or residual_out is not None:
        return _dispatch(x, weight, perm, eps, residual, backend, weight_permuted, out, residual_out)
    if residual is None:
        return torch.ops.ria_kernels.permuted_rms_norm(x, weight, perm, eps, backend, weight_permuted)
    return torch.ops.ria_kernels.permuted_add_rms_norm(x, residual, weight, perm, eps, backend, weight_permuted)


def _dispatch(x, weight, perm, eps, residual, backend, weight_permuted, out=None, residual_out=None):
    """The one backend decision for permuted_rms_norm."""
    if resolve_backend("permuted_rms_norm", x, backend) == "triton":
        return _permuted_rms_norm_triton(x, weight, perm, eps, residual, out, weight_permuted, residual_out)
    if weight_permuted and perm is not None:  # the reference wants original order
        weight = torch.empty_like(weight).index_copy_(0, perm.long(), weight)
    res = permuted_rms_norm_reference(x, weight, perm, eps, residual)
    y, h = (res, None) if residual is None else res
    if out is not None:
        y = out.copy_(y)
    if residual_out is not None:
        h = residual_out.copy_(h)
    return y if residual is None else (y, h)


@torch.library.custom_op("ria_kernels::permuted_rms_norm", mutates_args=())
def _rms_op(x: torch.Tensor, weight: torch.Tensor, perm: Optional[torch.Tensor], eps: float,
            backend: Optional[str], weight_permuted: bool) -> torch.Tensor:
    return _dispatch(x, weight, perm, eps, None, backend, weight_permuted)


@_rms_op.register_fake
def _(x, weight, perm, eps, backend, weight_permuted):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("ria_kernels::permuted_add_rms_norm", mutates_args=())
def _add_rms_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, perm: Optional[torch.Tensor],
                eps: float, backend: Optional[str], weight_permuted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch(x, weight, perm, eps, residual, backend, weight_permuted)


@_add_rms_op.register_fake
def _(x, residual, weight, perm, eps, backend, weight_permuted):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _permuted_rms_norm_kernel(x_ptr, res_ptr, w_ptr, perm_ptr, y_ptr, h_ptr, H, eps,
                                  PERMUTE: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr,
                                  RELOAD_ROW: tl.constexpr = False):
        """One program per token row. The row (and the residual) is read once, contiguously
        (vector loads); with the residual, h = x + residual is formed once, stored, and is what
        gets normalised and permuted. The permutation is applied inside the program with
        ``tl.gather`` on the row already in registers (through shared memory): no second
        global read. ``perm`` (int16/int32, see ``narrow_permutation``) is the same for every
        row, so it stays in L2. Bytes moved = the unpermuted kernel's + perm from L2."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_H)
        valid = offs < H
        base = row * H
        if RELOAD_ROW and RESIDUAL:
            # fp32 rows of 32K with the residual at 32 warps (64 registers a thread): x and residual
            # together would spill, so h = x + residual and its sum of squares go in 4 chunks, then
            # the row of h is read back (just written by this program: L2, not DRAM) after a barrier
            # (other threads wrote some of its elements)
            CHUNK: tl.constexpr = BLOCK_H // 4
            sq = tl.zeros((CHUNK,), dtype=tl.float32)
            for c in tl.static_range(4):
                o = c * CHUNK + tl.arange(0, CHUNK)
                ok = o < H
                hc = (tl.load(x_ptr + base + o, mask=ok, other=0.0).to(tl.float32)
                      + tl.load(res_ptr + base + o, mask=ok, other=0.0).to(tl.float32)).to(h_ptr.dtype.element_ty)
                tl.store(h_ptr + base + o, hc, mask=ok)
                sq += hc.to(tl.float32) * hc.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / H + eps)
            tl.debug_barrier()
            x = tl.load(h_ptr + base + offs, mask=valid, other=0.0)
            xf = x.to(tl.float32)
        else:
            x = tl.load(x_ptr + base + offs, mask=valid, other=0.0)
            if RESIDUAL:
                # h = x + residual, rounded to the storage dtype like an unfused residual stream
                x = (x.to(tl.float32) + tl.load(res_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
                     ).to(h_ptr.dtype.element_ty)
                tl.store(h_ptr + base + offs, x, mask=valid)
            xf = x.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
        if PERMUTE:
            src = tl.load(perm_ptr + offs, mask=valid, other=0)
            xp = tl.gather(x, src, 0).to(tl.float32)  # gathered in the storage dtype (half the smem)
        else:
            xp = xf
        w = tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32)  # already in output order
        tl.store(y_ptr + base + offs, (xp * rstd * w).to(y_ptr.dtype.element_ty), mask=valid)


def rms_launch_config(h: int) -> tuple[int, int]:
    """(BLOCK_H, num_warps): the whole row in one program, <= 32 elements per thread per tensor
    (up to 32 warps at 32768), so no hidden size up to 28672 spills (checked by the AOT gate)."""
    block = next_power_of_2(h)
    return block, min(32, max(4, block // 1024))


_NARROW_CACHE: "collections.OrderedDict[tuple, tuple[torch.Tensor, int, torch.Tensor]]" = collections.OrderedDict()
_NARROW_CACHE_SIZE = 1024
# narrow copies a CUDA graph captured (by id): kept alive for the process, because the graph holds
# their raw pointers and nothing tells us when it is destroyed; eviction from the LRU above or a
# version change of ``perm`` must never free memory a graph replay reads
_GRAPH_HELD: dict[int, torch.Tensor] = {}


def narrow_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``perm`` as int16 (hidden <= 32768) or int32, converted once and cached (keyed by the
    tensor itself and its version counter, so an in-place change is seen). A module that holds
    its permutation gets the narrow copy on its first call and reuses it after that.

    CUDA-graph safe: inside a capture a cached copy is used and pinned for the process's
    lifetime (:data:`_GRAPH_HELD`), and a miss converts inside the graph without caching (a
    tensor from the graph's private pool must not serve later eager calls)."""
    if perm.dtype == torch.int16 or (perm.dtype == torch.int32 and perm.numel() > 32768):
        return perm
    capturing = _device.capturing(perm.device)
    key = (perm.data_ptr(), perm.device, perm.numel(), perm.dtype)
    hit = _NARROW_CACHE.get(key)
    if hit is not None and hit[0] is perm and hit[1] == perm._version:
        _NARROW_CACHE.move_to_end(key)
        if capturing:
            _GRAPH_HELD[id(hit[2])] = hit[2]
        return hit[2]
    narrow = perm.to(torch.int16 if perm.numel() <= 32768 else torch.int32).contiguous()
    if capturing:
        return narrow
    _NARROW_CACHE[key] = (perm, perm._version, narrow)  # holds perm: its memory cannot be reused meanwhile
    if len(_NARROW_CACHE) > _NARROW_CACHE_SIZE:
        _NARROW_CACHE.popitem(last=False)
    return narrow


@_device.guarded  # the inputs' device and stream (issue 20)
def _permuted_rms_norm_triton(x, weight, perm, eps, residual, out=None, weight_permuted=False, residual_out=None):
    if not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        raise RiaInputError("x and residual must be contiguous for the Triton permuted_rms_norm "
                            f"(x strides {tuple(x.stride())})")
    h = x.shape[-1]
    rows = x.numel() // h if h else 0
    w_out = weight if (perm is None or weight_permuted) else weight.index_select(0, perm.long())
    y = torch.empty_like(x) if out is None else out
    h_out = None
    if residual is not None:
        h_out = torch.empty_like(x) if residual_out is None else residual_out
    if rows > 0:
        block, num_warps = rms_launch_config(h)
        _permuted_rms_norm_kernel[(rows,)](x, residual if residual is not None else x, w_out.contiguous(),
                                           narrow_permutation(perm) if perm is not None else x, y,
                                           h_out if h_out is not None else y, h, eps, PERMUTE=perm is not None,
                                           RESIDUAL=residual is not None, BLOCK_H=block,
                                           RELOAD_ROW=block * x.element_size() > 65536 and residual is not None,
                                           num_warps=num_warps)
    return y if residual is None else (y, h_out)


# --------------------------------------------------------------------------- AOT gate cases
AOT_HIDDEN = {"fp16": (4096, 5120, 8192, 28672, 4097), "bf16": (8192, 28672, 4097), "fp32": (8192, 28672, 4097)}


def aot_cases():
    """Launch configurations for ``scripts/check_triton_aot.py`` (recorded, never run): the public
    ``permuted_rms_norm`` at 8192 tokens x LLaMA hidden sizes up to 28672 (every size >= 4096 gets
    the same 32 elements per thread, so the largest is the register worst case) and an odd
    one (4097: unaligned rows), fp16/bf16/fp32, permuted or not, with and without the residual."""
    _dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

    def case(tokens, h, dtype, permute, residual):
        def run():
            x = torch.empty(tokens, h, dtype=_dt[dtype])
            w = torch.ones(h, dtype=_dt[dtype])
            perm = torch.arange(h, dtype=torch.int32) if permute else None
            r = torch.empty_like(x) if residual else None
            return permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton", validate=False, weight_permuted=True)
        kind = ("perm" if permute else "plain") + ("+res" if residual else "")
        return f"rms_norm {kind} {dtype} {tokens}x{h}", run

    for dtype, hiddens in AOT_HIDDEN.items():
        for h in hiddens:
            for permute in (False, True):
                for residual in (False, True):
                    yield case(8192 if h != 4097 else 7, h, dtype, permute, residual)
