"""SparseGPT (Frantar & Alistarh, 2023): OBS-based pruning with weight updates,
and the same machinery as "reconstruction" for a mask chosen by another metric
(RIA App. E, "RIA+rec").

``hessian`` is the float32 running sum ``X^T X`` over calibration tokens; its scale
does not matter because damping is ``percdamp * mean(diag)``.

``perm`` (an input-channel permutation, e.g. from the RIA channel-permutation search) runs
SparseGPT on ``W[:, perm]`` with ``H[perm][:, perm]``: the N:M groups are then groups of the
permuted columns, and the result is returned in the original column order (the pattern holds
on ``new_weight[:, perm]``). The OBS updates are exact in any column order, so only which
columns share an N:M group changes.
"""
from __future__ import annotations

import torch

from ._errors import RiaInputError
from ._validation import SparsitySpec, check_divisible, check_matrix, parse_sparsity


def _inverse_cholesky(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian; dead inputs fixed as in the original."""
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    weight[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        return torch.linalg.cholesky(Hinv, upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise RiaInputError(f"Hessian is not positive definite even after damping (percdamp={percdamp}); "
                            f"use more calibration samples or a larger percdamp ({exc})") from None


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | str | SparsitySpec, *,
                    blocksize: int = 128, percdamp: float = 0.01, mask: torch.Tensor | None = None,
                    perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight [out, in]`` with SparseGPT; returns ``(new_weight, keep_mask)``.

    With ``mask`` (bool, True = kept) no selection happens: only the kept weights are
    updated to compensate the pruned ones (reconstruction for any metric's mask).
    ``perm``: run on the permuted columns (see the module docstring); both outputs are in
    the original column order.
    """
    if perm is not None:
        cols = weight.shape[1] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
        if not isinstance(perm, torch.Tensor) or cols is None or perm.shape != (cols,) or not torch.equal(
                torch.sort(perm.to("cpu", torch.long)).values, torch.arange(cols)):
            raise RiaInputError(f"perm must be a permutation of range(weight.shape[1]) = range({cols})")
        if hessian is None or hessian.shape != (cols, cols):
            got = None if hessian is None else tuple(hessian.shape)
            raise RiaInputError(f"hessian must have shape [in_features, in_features] = [{cols}, {cols}], got {got}")
        p = perm.to(weight.device, torch.long)
        ph = perm.to(hessian.device, torch.long)
        new_p, keep_p = sparsegpt_prune(weight[:, p], hessian[ph][:, ph], sparsity, blocksize=blocksize,
                                        percdamp=percdamp, mask=None if mask is None else mask[:, p.to(mask.device)])
        new, keep = torch.empty_like(new_p), torch.empty_like(keep_p)
        new[:, p], keep[:, p] = new_p, keep_p
        return new, keep
    check_matrix(weight, "weight")
    rows, cols = weight.shape
    if hessian is None or hessian.shape != (cols, cols):
        got = None if hessian is None else tuple(hessian.shape)
        raise RiaInputError(f"hessian must have shape [in_features, in_features] = [{cols}, {cols}], got {got}")
    if blocksize < 1:
        raise RiaInputError(f"blocksize must be >= 1, got {blocksize}")
    if not (0 < percdamp < 1):
        raise RiaInputError(f"percdamp must be in (0, 1), got {percdamp}")
    spec = parse_sparsity(sparsity)
    if spec.is_nm:
        check_divisible(cols, spec.m, "weight.shape[1]")
    if mask is not None and mask.shape != weight.shape:
        raise RiaInputError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    W = weight.detach().float().clone()
    Hinv = _inverse_cholesky(hessian.to(W.device, torch.float32), W, percdamp)
    prune = torch.zeros_like(W, dtype=torch.bool) if mask is None else ~mask.to(W.device)
    if spec.is_nm and mask is None:
        blocksize = max(spec.m, blocksize - blocksize % spec.m)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if mask is None and not spec.is_nm:
            # adaptive mask for this block: lowest w^2 / d^2
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape(1, -1)) ** 2
            k = int(tmp.numel() * spec.ratio)
            if k > 0:
                thresh = torch.sort(tmp.flatten())[0][k - 1]
                prune[:, i1:i2] = tmp <= thresh
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if mask is None and spec.is_nm and i % spec.m == 0:
                tmp = W1[:, i:i + spec.m] ** 2 / (torch.diag(Hinv1)[i:i + spec.m].reshape(1, -1)) ** 2
                idx = torch.topk(tmp, spec.n, dim=1, largest=False)[1]
                prune[:, i1 + i:i1 + i + spec.m].scatter_(1, idx, True)
            q = w.clone()
            q[prune[:, i1 + i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    keep = ~prune
    W[prune] = 0
    return W.to(weight.dtype), keep
