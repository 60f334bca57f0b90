"""Channel permutation for N:M sparsity (RIA paper Sec. 4.2, App. G-I).

Find ``perm`` such that N:M selection on ``score[:, perm]`` retains more total
score than on ``score``:

1. heuristic channel allocation: channels sorted by their column score sum are
   dealt into the ``c / M`` blocks in alternating (snake) direction;
2. linear sum assignment, one round per position ``p`` within a block: the
   channel at position ``p`` of every block is taken out and the channels are
   re-assigned to blocks to maximise the retained score (``ria_kernels.lsa``:
   scipy's exact solver on the CPU, or the GPU auction solver), the other ``M - 1``
   channels of each block held fixed.
   ``blocks > 1`` is the fast variant: the blocks are split into that many
   communities and each is solved on its own (App. G.2).

The LSA gain matrix is the expensive part. With ``K = M - N`` kept per group,
the retained score of block ``b`` with candidate channel ``j`` is, per row,
``topK(F_b) + max(0, x_j - t_b)`` where ``F_b`` are the block's fixed scores and
``t_b`` their K-th largest. So ``gain[j, b] = sum_r relu(x[r, j] - t[r, b])``: a
GEMM-shaped reduction computed by a Triton kernel on CUDA and by chunked torch on
CPU — never a Python loop over rows or blocks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ._backend import resolve_backend
from ._errors import RiaInputError
from ._validation import check_divisible, check_matrix, check_nm
from .lsa import linear_sum_assignment, resolve_solver
from .ops.nm_mask import nm_topk_blocks


@dataclass
class PermutationResult:
    perm: torch.Tensor                      # LongTensor [c]: N:M holds on score[:, perm]
    retained: dict[str, float] = field(default_factory=dict)  # identity / allocation / lsa
    time_s: float = 0.0
    solver: str | None = None               # LSA solver used ("scipy" / "auction"); None without LSA


def retained_score(score: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Total score kept by N:M selection (N of every M pruned) on ``score[:, perm]``."""
    s = score if perm is None else score[:, perm]
    return float(nm_topk_blocks(s.contiguous(), n, m)[1].double().sum())


def heuristic_allocation(score: torch.Tensor, m: int) -> torch.Tensor:
    """Columns sorted by score sum (descending), dealt into blocks in snake order."""
    c = score.shape[1]
    g = c // m
    order = torch.argsort(score.double().sum(0), descending=True, stable=True)
    i = torch.arange(c, device=score.device)
    rnd, pos = i // g, i % g
    block = torch.where(rnd % 2 == 0, pos, g - 1 - pos)
    perm = torch.empty_like(order)
    perm[block * m + rnd] = order
    return perm


def lsa_gain_reference(x: torch.Tensor, t: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``gain[j, b] = sum_r relu(x[r, j] - t[r, b])`` in float64, chunked over j."""
    x64, t64 = x.double(), t.double()
    out = torch.empty(x.shape[1], t.shape[1], dtype=torch.float64, device=x.device)
    for j0 in range(0, x.shape[1], chunk):
        xs = x64[:, j0:j0 + chunk]
        out[j0:j0 + chunk] = torch.relu(xs[:, :, None] - t64[:, None, :]).sum(0)
    return out


def lsa_gain(x: torch.Tensor, t: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    if resolve_backend("lsa_gain", x, backend) == "triton":
        return _lsa_gain_triton(x, t)
    return lsa_gain_reference(x, t)


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _lsa_gain_kernel(x_ptr, t_ptr, out_ptr, R, J, B,
                         BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr):
        pid_j = tl.program_id(0)
        pid_b = tl.program_id(1)
        js = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
        bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        acc = tl.zeros((BLOCK_J, BLOCK_B), dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            rv = rs < R
            x = tl.load(x_ptr + rs[:, None].to(tl.int64) * J + js[None, :], mask=rv[:, None] & (js[None, :] < J),
                        other=0.0)
            # padded rows: x = 0 and t = +inf contribute relu(-inf) = 0
            t = tl.load(t_ptr + rs[:, None].to(tl.int64) * B + bs[None, :], mask=rv[:, None] & (bs[None, :] < B),
                        other=float("inf"))
            acc += tl.sum(tl.maximum(x[:, :, None] - t[:, None, :], 0.0), axis=0)
        tl.store(out_ptr + js[:, None].to(tl.int64) * B + bs[None, :], acc, mask=(js[:, None] < J) & (bs[None, :] < B))


def _lsa_gain_triton(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r, j = x.shape
    b = t.shape[1]
    x = x.float().contiguous()
    t = t.float().contiguous()
    out = torch.empty((j, b), dtype=torch.float32, device=x.device)
    block_j = block_b = 32
    grid = (triton.cdiv(j, block_j), triton.cdiv(b, block_b))
    _lsa_gain_kernel[grid](x, t, out, r, j, b, BLOCK_R=8, BLOCK_J=block_j, BLOCK_B=block_b)
    return out.double()


def _lsa_round(score: torch.Tensor, perm: torch.Tensor, n: int, m: int, p: int, communities: int,
               backend: str | None, solver: str) -> torch.Tensor:
    """One LSA round at block position ``p``: returns the new permutation."""
    r, c = score.shape
    g = c // m
    keep = m - n
    grid = perm.reshape(g, m)
    cand = grid[:, p]                                          # channel at position p of each block
    others = torch.cat([grid[:, :p], grid[:, p + 1:]], dim=1)  # [g, m-1] fixed channels
    fixed = score[:, others.reshape(-1)].reshape(r, g, m - 1).float()
    # K-th largest fixed score per (row, block): a candidate above it displaces it
    t = torch.topk(fixed, keep, dim=-1).values[..., keep - 1]  # [r, g]
    x = score[:, cand].float()                                 # [r, g] candidate j = cand[j]
    new_cand = cand.clone()
    size = -(-g // communities)
    for c0 in range(0, g, size):
        sl = slice(c0, min(c0 + size, g))
        gain = lsa_gain(x[:, sl].contiguous(), t[:, sl].contiguous(), backend=backend)
        rows, cols = linear_sum_assignment(gain, solver=solver)
        # candidate rows[i] goes to block cols[i]
        new_cand[cols.to(cand.device) + c0] = cand[sl][rows.to(cand.device)]
    new_grid = grid.clone()
    new_grid[:, p] = new_cand
    return new_grid.reshape(-1)


def channel_permutation(score: torch.Tensor, n: int, m: int, *, lsa: bool = True, blocks: int = 1,
                        max_rounds: int | None = None, backend: str | None = None,
                        solver: str | None = None) -> PermutationResult:
    """Input-channel permutation that raises the score N:M selection retains.

    ``score [rows, c]`` (rows of all linears sharing the input, concatenated);
    ``n`` of every ``m`` pruned. The result never retains less than the identity.
    ``solver``: LSA solver (``"scipy"``, ``"auction"``, ``"auto"``/None: auction on CUDA,
    scipy on CPU; env ``RIA_KERNELS_LSA_SOLVER``), see ``ria_kernels.lsa``.
    """
    check_nm(n, m)
    check_matrix(score, "score")
    check_divisible(score.shape[1], m, "score.shape[1]")
    if not isinstance(blocks, int) or blocks < 1:
        raise RiaInputError(f"blocks must be an integer >= 1, got {blocks!r}")
    t0 = time.perf_counter()
    s = score.detach().float().contiguous()
    solver_used = resolve_solver(s, solver)  # validates the name even when lsa=False
    identity = torch.arange(s.shape[1], device=s.device)
    result = PermutationResult(perm=identity)
    best = result.retained["identity"] = retained_score(s, n, m)
    alloc = heuristic_allocation(s, m)
    result.retained["allocation"] = retained_score(s, n, m, alloc)
    perm = identity
    if result.retained["allocation"] > best:
        perm, best = alloc, result.retained["allocation"]
    if lsa:
        rounds = m if max_rounds is None else min(m, max_rounds)
        for p in range(rounds):
            cand = _lsa_round(s, perm, n, m, p, min(blocks, s.shape[1] // m), backend, solver_used)
            val = retained_score(s, n, m, cand)
            if val > best:  # never accept a decrease (rounding in the solver)
                perm, best = cand, val
        result.retained["lsa"] = best
        result.solver = solver_used
    result.perm = perm
    result.time_s = time.perf_counter() - t0
    return result
