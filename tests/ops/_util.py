"""Helpers for kernel tests: where Triton can run, per-dtype tolerances, poisoning."""
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton needs CUDA or TRITON_INTERPRET=1")

# (rtol, atol) of a kernel output vs its float32/float64 reference, by input dtype
TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def poisoned(shape, dtype):
    t = torch.empty(shape, dtype=dtype, device=DEVICE)
    if dtype.is_floating_point:
        t.fill_(float("nan"))
    else:
        t.fill_(-7)  # neither 0 nor 1: an unwritten mask byte fails the comparison
    return t
