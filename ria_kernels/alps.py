"""ALPS (Meng, Behdin, Wang, Mazumder, NeurIPS 2024, arXiv 2406.07831): one-shot pruning
of one linear by ADMM on the layer-wise reconstruction problem

    min_W'  ||(W' - W) X||^2   s.t.  W' has the sparsity pattern (N:M, or k nonzeros),

then a least-squares refit on the final support (``refit.masked_pcg``).

Steps (row layout, ``W [out, in]``; the paper writes the transpose):

1. damp ``H = X^T X + 0.01 mean(diag) I`` and normalise it to unit diagonal,
   ``Hn = D^-1 H D^-1`` with the weights scaled by ``D = sqrt(diag H)`` (the objective is
   unchanged); one eigendecomposition ``Hn = Q diag(L) Q^T`` serves every rho and every
   linear reading the same input (q/k/v, gate/up): :class:`AlpsHessian`;
2. ADMM with splitting ``B = D`` (``B`` dense, ``D`` on the pattern), scaled dual ``V``:
   ``B = (W Hn - V + rho D) (Hn + rho I)^-1`` (two matmuls with ``Q``),
   ``D = P(B + V / rho)`` (projection onto the pattern: the largest ``|.|`` per N:M group,
   per row, or per matrix), ``V += rho (B - D)``;
3. every 3 iterations the support change ``s`` (changed positions / kept weights) drives
   rho as in the paper's schedule: ``x1.3`` while ``s > 0.1``, ``x1.2`` while ``s > 0.005``,
   ``x1.1`` while anything still changes; before rho has ever been raised, a settled support
   means rho started too large (``/5`` and, if it still moved a little, restart from ``W``).
   Stop when the support no longer changes (after rho has risen), or after ``switch_iter``
   iterations once ``s < 3e-4``, or at ``max_iter``; rho is capped at 1e6;
4. the support of ``P(B)`` is final; the kept weights are refit by masked PCG from ``B``.

``perm`` (channel permutation) runs everything on ``W[:, perm]`` and ``H[perm][:, perm]``
so the N:M pattern holds on ``weight[:, perm]``; the result is returned in the original
column order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ._errors import RiaInputError
from ._validation import SparsitySpec, check_divisible, check_matrix, parse_sparsity
from .refit import damped_hessian, masked_pcg

RHO_MAX = 1e6


@dataclass
class AlpsHessian:
    """The shared, normalised Hessian of one input (in the permuted order when ``perm``)."""

    hn: torch.Tensor            # D^-1 H D^-1, unit diagonal
    d: torch.Tensor             # sqrt(diag(H)) after damping
    evals: torch.Tensor         # eigenvalues L of hn
    evecs: torch.Tensor         # eigenvectors Q of hn
    perm: torch.Tensor | None   # input permutation applied to H (None: identity)
    time_s: float = 0.0


@dataclass
class AlpsResult:
    weight: torch.Tensor        # pruned and refit, original column order, weight's dtype
    mask: torch.Tensor          # bool keep-mask, original column order
    iterations: int             # ADMM iterations
    rho: float                  # final rho
    support_change: float       # support change at the last check (fraction of kept weights)
    cg_iterations: int
    cg_residual: float
    admm_time_s: float
    refit_time_s: float


def prepare_hessian(hessian: torch.Tensor, *, percdamp: float = 0.01, perm: torch.Tensor | None = None,
                    device: torch.device | str | None = None) -> AlpsHessian:
    """Damp, (permute,) normalise and eigendecompose ``hessian = X^T X`` once per shared input.
    The eigendecomposition runs in float64 (ill-conditioned activations), the rest in float32."""
    if not isinstance(hessian, torch.Tensor) or hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise RiaInputError(f"hessian must be a square matrix, got "
                            f"{tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__}")
    t0 = time.perf_counter()
    H = hessian.to(device if device is not None else hessian.device)
    if perm is not None:
        perm = perm.to(H.device, torch.long)
        if perm.shape != (H.shape[0],) or not torch.equal(torch.sort(perm).values,
                                                          torch.arange(H.shape[0], device=H.device)):
            raise RiaInputError(f"perm must be a permutation of range({H.shape[0]})")
        H = H[perm][:, perm]
    H = damped_hessian(H, percdamp)
    d = torch.diagonal(H).sqrt()
    hn = H / d[:, None] / d[None, :]
    L, Q = torch.linalg.eigh(hn.double())
    return AlpsHessian(hn=hn.float(), d=d.float(), evals=L.float(), evecs=Q.float(), perm=perm,
                       time_s=time.perf_counter() - t0)


def _keep_top_of_4(g: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of the ``k`` largest of every 4 (last dim), ties to the lower index. The
    k-th largest by min/max networks is ~7x faster than ``topk`` over a last dim of 4 on the
    CPU, and the ADMM loop projects every iteration."""
    a, b, c, d = g.unbind(-1)
    hi1, lo1, hi2, lo2 = torch.maximum(a, b), torch.minimum(a, b), torch.maximum(c, d), torch.minimum(c, d)
    if k == 1:
        t = torch.maximum(hi1, hi2)
    elif k == 2:
        t = torch.maximum(torch.minimum(hi1, hi2), torch.maximum(lo1, lo2))
    elif k == 3:
        t = torch.minimum(torch.maximum(lo1, lo2), torch.minimum(hi1, hi2))
    else:
        return torch.ones_like(g, dtype=torch.bool)
    t = t.unsqueeze(-1)
    keep = g >= t
    if int(keep.sum()) != k * t.numel():  # ties at the threshold: take them in index order
        gt = g > t
        room = k - gt.sum(-1, keepdim=True)
        eq = g == t
        keep = gt | (eq & (eq.cumsum(-1) <= room))
    return keep


def project(z: torch.Tensor, spec: SparsitySpec, per_output: bool = False) -> torch.Tensor:
    """Keep-mask of the projection onto the pattern: the ``M - N`` largest ``|z|`` of every
    ``M`` consecutive inputs (N:M), else the largest ``(1 - ratio)`` fraction of ``|z|`` per
    row (``per_output``) or over the whole matrix."""
    a = z.abs()
    rows, cols = z.shape
    if spec.is_nm:
        g = a.reshape(rows, cols // spec.m, spec.m)
        if spec.m == 4:
            return _keep_top_of_4(g, 4 - spec.n).reshape(rows, cols)
        idx = torch.topk(g, spec.m - spec.n, dim=-1, sorted=False).indices
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
        return keep.reshape(rows, cols)
    if per_output:
        k = cols - int(cols * spec.ratio)
        keep = torch.zeros_like(a, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, torch.topk(a, k, dim=1, sorted=False).indices, True)
        return keep
    k = a.numel() - int(a.numel() * spec.ratio)
    keep = torch.zeros(a.numel(), dtype=torch.bool, device=a.device)
    if k > 0:
        keep[torch.topk(a.flatten(), k, sorted=False).indices] = True
    return keep.reshape(rows, cols)


@torch.no_grad()
def alps_prune(weight: torch.Tensor, hessian: torch.Tensor | AlpsHessian, sparsity: float | str | SparsitySpec, *,
               perm: torch.Tensor | None = None, per_output: bool = False, percdamp: float = 0.01,
               rho: float = 0.1, max_iter: int = 300, update_iter: int = 3, switch_iter: int = 30,
               cg_maxiter: int = 20, cg_rtol: float = 1e-5) -> AlpsResult:
    """Prune ``weight [out, in]`` with ALPS; ``hessian`` is ``X^T X`` (float32 running sum)
    or an :class:`AlpsHessian` from :func:`prepare_hessian` shared across linears (its
    ``perm`` is then used, and ``perm`` / ``percdamp`` must not be given again)."""
    check_matrix(weight, "weight")
    rows, cols = weight.shape
    spec = parse_sparsity(sparsity)
    if spec.is_nm:
        check_divisible(cols, spec.m, "weight.shape[1]")
        if per_output:
            raise RiaInputError(f"per_output=True is for unstructured sparsity; the N:M pattern {spec} is per row")
    elif perm is not None:
        raise RiaInputError("perm (channel permutation) needs an N:M sparsity such as '2:4'")
    for name, value, low in (("max_iter", max_iter, 1), ("update_iter", update_iter, 1),
                             ("switch_iter", switch_iter, 0), ("cg_maxiter", cg_maxiter, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RiaInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 < rho < RHO_MAX):
        raise RiaInputError(f"rho must be in (0, {RHO_MAX:g}), got {rho!r}")
    if isinstance(hessian, AlpsHessian):
        if perm is not None:
            raise RiaInputError("perm is taken from the AlpsHessian; do not pass it again")
        hs = hessian
        if hs.hn.shape != (cols, cols):
            raise RiaInputError(f"AlpsHessian is for {hs.hn.shape[0]} inputs, weight has {cols}")
    else:
        if not isinstance(hessian, torch.Tensor) or hessian.shape != (cols, cols):
            got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
            raise RiaInputError(f"hessian must have shape [in_features, in_features] = [{cols}, {cols}], got {got}")
        hs = prepare_hessian(hessian, percdamp=percdamp, perm=perm, device=weight.device)
    t0 = time.perf_counter()
    dev = hs.hn.device
    W = weight.detach().to(dev, torch.float32)
    if hs.perm is not None:
        W = W[:, hs.perm]
    Wn = W * hs.d                         # normalised coordinates: objective tr(E Hn E^T)
    Q, L, Hn = hs.evecs, hs.evals, hs.hn
    YH = Wn @ Hn
    kept = max(1, int(project(Wn, spec, per_output).sum()))

    # rhs (Hn + rho I)^-1: through Q (two [out, in] x [in, in] matmuls), or, when the rows
    # outnumber in / update_iter, with the inverse rebuilt (one c^3 product) only when rho moves
    use_inverse = rows * update_iter > cols
    inv_cache: dict[float, torch.Tensor] = {}

    def solve(rhs: torch.Tensor, r: float) -> torch.Tensor:
        if not use_inverse:
            return ((rhs @ Q) / (L + r)) @ Q.t()
        if r not in inv_cache:
            inv_cache.clear()
            inv_cache[r] = (Q / (L + r)) @ Q.t()
        return rhs @ inv_cache[r]

    D = Wn * project(Wn, spec, per_output)
    D0 = D.clone()
    V = torch.zeros_like(Wn)
    B = Wn.clone()
    supp_prev = project(Wn, spec, per_output)
    raised = False
    change = 1.0
    it = 0
    while it < max_iter:
        B = solve(YH - V + rho * D, rho)
        Z = B + V / rho
        supp = project(Z, spec, per_output)
        D = Z * supp
        V += rho * (B - D)
        it += 1
        if it % update_iter:
            continue
        change = float((supp != supp_prev).sum()) / kept
        supp_prev = supp
        if change > 0.1:
            rho, raised = rho * 1.3, True
        elif change > 0.005:
            rho, raised = rho * 1.2, True
        elif change > 0:
            if raised:
                rho *= 1.1
            else:  # tiny moves before rho ever rose: rho was too large; restart lower
                rho /= 5
                B, D, V = Wn.clone(), D0.clone(), torch.zeros_like(Wn)
        elif raised:
            break  # the support has settled
        else:
            rho /= 5
        rho = min(rho, RHO_MAX)
        if it >= switch_iter and change < 3e-4:
            break
    admm_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    mask_p = project(B, spec, per_output)
    Xn, info = masked_pcg(Wn, Hn, mask_p, x0=B, maxiter=cg_maxiter, rtol=cg_rtol)
    new_p = (Xn / hs.d).masked_fill_(~mask_p, 0)
    if hs.perm is not None:
        new = torch.empty_like(new_p)
        new[:, hs.perm] = new_p
        mask = torch.empty_like(mask_p)
        mask[:, hs.perm] = mask_p
    else:
        new, mask = new_p, mask_p
    return AlpsResult(weight=new.to(weight.device, weight.dtype), mask=mask.to(weight.device), iterations=it,
                      rho=float(rho), support_change=float(change), cg_iterations=info.iterations,
                      cg_residual=info.residual, admm_time_s=admm_s, refit_time_s=time.perf_counter() - t1)


__all__ = ["AlpsHessian", "AlpsResult", "prepare_hessian", "project", "alps_prune"]
