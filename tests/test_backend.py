import os

import pytest
import torch

from ria_kernels import BackendUnavailableError, RiaInputError, nm_mask
from ria_kernels._backend import resolve_backend


def test_default_on_cpu_is_torch(monkeypatch):
    monkeypatch.delenv("RIA_KERNELS_BACKEND", raising=False)
    assert resolve_backend("op", torch.zeros(1)) == "torch"


def test_env_override_and_argument(monkeypatch):
    monkeypatch.setenv("RIA_KERNELS_BACKEND", "torch")
    assert resolve_backend("op", torch.zeros(1)) == "torch"
    monkeypatch.setattr("ria_kernels._backend._INTERPRET_AT_IMPORT", True)
    assert resolve_backend("op", torch.zeros(1), "triton") == "triton"  # argument beats env
    monkeypatch.setenv("RIA_KERNELS_BACKEND", "cuda-magic")
    with pytest.raises(RiaInputError, match="backend must be one of"):
        resolve_backend("op", torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter refusal")
def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr("ria_kernels._backend._INTERPRET_AT_IMPORT", False)  # as if imported without it
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        nm_mask(torch.rand(2, 8), 2, 4, backend="triton")


def test_backend_choice_logged_once(caplog, monkeypatch):
    monkeypatch.delenv("RIA_KERNELS_BACKEND", raising=False)
    from ria_kernels import _logging
    _logging._seen.discard(("log-test-op", "torch", "cpu"))
    with caplog.at_level("INFO", logger="ria_kernels"):
        resolve_backend("log-test-op", torch.zeros(1))
        resolve_backend("log-test-op", torch.zeros(1))
    assert [r.getMessage() for r in caplog.records].count("log-test-op: backend=torch (device=cpu)") == 1


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors with Triton kernels built in interpreter mode (TRITON_INTERPRET=1 at import)")
def test_env_override_reaches_custom_op_dispatch(caplog, monkeypatch):
    """The custom op's implementation is where the backend is chosen: the env override
    forces Triton on CPU tensors under the interpreter, and the choice is logged once."""
    from ria_kernels import _logging, permuted_rms_norm
    monkeypatch.setenv("RIA_KERNELS_BACKEND", "triton")
    for choice in ("triton", "torch"):
        _logging._seen.discard(("permuted_rms_norm", choice, "cpu"))
    x, w = torch.randn(3, 8), torch.randn(8)
    with caplog.at_level("INFO", logger="ria_kernels"):
        forced = permuted_rms_norm(x, w, torch.randperm(8))
        permuted_rms_norm(x, w)
        monkeypatch.setenv("RIA_KERNELS_BACKEND", "torch")
        permuted_rms_norm(x, w)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("permuted_rms_norm: backend=triton (device=cpu)") == 1
    assert msgs.count("permuted_rms_norm: backend=torch (device=cpu)") == 1
    assert forced.shape == x.shape


def test_forced_backend_argument_validated():
    from ria_kernels import permuted_rms_norm
    with pytest.raises(RiaInputError, match="backend must be one of"):
        permuted_rms_norm(torch.randn(2, 4), torch.randn(4), backend="gpu")
