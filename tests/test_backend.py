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
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("op", torch.zeros(1), "triton") == "triton"  # argument beats env
    monkeypatch.setenv("RIA_KERNELS_BACKEND", "cuda-magic")
    with pytest.raises(RiaInputError, match="backend must be one of"):
        resolve_backend("op", torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter refusal")
def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
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
