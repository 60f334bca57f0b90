"""_device: the one launch guard (inputs' device and stream) every kernel launcher runs under."""
import importlib
import pkgutil
import threading

import pytest
import torch

import ria_kernels
from ria_kernels import _device

from ops._util import TRITON_OK, needs_triton

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


def test_guard_on_cpu_is_a_no_op_that_says_its_device():
    x = torch.zeros(3)
    assert _device.active_device() is None
    with _device.launch_guard(x) as dev:
        assert dev == x.device and _device.active_device() == x.device
        with _device.launch_guard(torch.zeros(1, dtype=torch.int8)):
            assert _device.active_device() == torch.device("cpu")
        assert _device.active_device() == x.device
    assert _device.active_device() is None


def test_guard_unwinds_on_error_and_is_per_thread():
    with pytest.raises(ValueError):
        with _device.launch_guard(torch.zeros(1)):
            raise ValueError("launch failed")
    assert _device.active_device() is None
    seen = []
    with _device.launch_guard(torch.zeros(1)):
        th = threading.Thread(target=lambda: seen.append(_device.active_device()))
        th.start()
        th.join()
    assert seen == [None]


def test_guarded_uses_the_first_tensor_argument():
    @_device.guarded
    def launcher(n, x, y=None):
        return _device.active_device(), n
    assert launcher(3, torch.zeros(2)) == (torch.device("cpu"), 3)
    assert launcher.__name__ == "launcher"


def test_capturing_is_false_off_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _device.capturing(torch.device("cpu")) is False
    assert _device.capturing(torch.device("cuda", 0)) is True


def _launched_kernels() -> set:
    """Every Triton kernel the package launches (a jit function named ``*_kernel`` at module level)."""
    names = set()
    for info in pkgutil.walk_packages(ria_kernels.__path__, "ria_kernels."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional modules (e.g. without their extras)
            continue
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "fn") and hasattr(obj, "run"):
                names.add(name)
    return names


@needs_triton
def test_every_op_launches_under_the_guard_of_its_inputs(monkeypatch):
    """Call every public op with backend="triton" (interpreter on CPU, the GPU on CUDA) and check
    each kernel launch happens inside a launch_guard for its tensors' device; every Triton kernel
    of the package is launched at least once, so a new launcher without the guard fails here."""
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    from ria_kernels import permutation
    from ria_kernels.ops import nm_mask, prune_fused, ria_score, rms_norm, sparse24_mm
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launches = []

    def recorder(cls):
        real = cls.run

        def run(self, *args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            launches.append((self.fn.__name__, _device.active_device(), {t.device for t in tensors}))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "run", run)

    recorder(interpreter.InterpretedFunction if device == "cpu" else JITFunction)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g).to(device)
    act = (torch.rand(64, generator=g) + 0.1).to(device)
    for method in ("ria", "ri", "wanda", "magnitude"):
        ria_score.pruning_score(w, act, method, 0.5, backend="triton")
    ria_score.ria_score(w, act, backend="triton")
    ria_score.abs_sums_triton(w)
    nm_mask.nm_mask(w.float(), 2, 4, backend="triton")
    nm_mask.nm_topk_blocks(w.float(), 2, 4, backend="triton")
    nm_mask.unstructured_mask(w.float(), 0.5, backend="triton")
    prune_fused.fused_prune(w, act, "ria", 0.5, "2:4", backend="triton")
    x = torch.randn(3, 64, generator=g).to(device)
    perm = torch.randperm(64, generator=g).to(device)
    rms_norm.permuted_rms_norm(x, torch.ones(64, device=device), perm, 1e-6, backend="triton")
    rms_norm.permuted_rms_norm(x, torch.ones(64, device=device), None, 1e-6, x.clone(), backend="triton")
    values, meta = sparse24_mm.compress_24(torch.zeros(32, 512, device=device))
    sparse24_mm.sparse24_mm(torch.randn(2, 512, generator=g).to(device), values, meta, backend="triton")
    permutation.lsa_gain(torch.rand(8, 4, generator=g).to(device).double(), torch.rand(8, 4, generator=g).to(device).double(),
                         backend="triton")
    from ria_kernels.ops import auction
    auction.auction_batched(torch.randint(0, 9, (2, 5, 5), generator=g).to(device).double(), backend="triton")
    assert launches
    for name, active, devices in launches:
        assert active is not None, f"{name} launched outside a launch_guard"
        assert devices == {active}, f"{name}: guard for {active}, tensors on {devices}"
    assert {name for name, _, _ in launches} == _launched_kernels()


@needs_triton
def test_launchers_call_the_guard(monkeypatch):
    """The launchers go through the one shared guard function (patched here to count)."""
    from ria_kernels.ops import sparse24_mm
    calls = []
    real = _device.launch_guard

    def counting(t):
        calls.append(t.device)
        return real(t)
    monkeypatch.setattr(_device, "launch_guard", counting)
    values, meta = sparse24_mm.compress_24(torch.zeros(16, 32))
    sparse24_mm.sparse24_mm(torch.zeros(1, 32), values, meta, backend="triton")
    assert calls == [torch.device("cpu")]


def test_extension_wrappers_are_guarded():
    """ops/sparse_mm's C++ wrappers run under the guard too (their C++ side holds a CUDAGuard
    and uses the device's current stream as well: tests/test_build.py checks the sources)."""
    from ria_kernels.ops import sparse_mm
    for name in ("cslt_compress", "cslt_search", "cslt_mm", "cutlass_compress", "cutlass_sparse_mm"):
        fn = getattr(sparse_mm, name)
        assert getattr(fn, "__wrapped__", None) is not None and fn.__code__ is _device.guarded(len).__code__, name


@two_gpus
def test_ops_on_the_second_gpu_while_the_first_is_current():
    """A layer on cuda:1 (``--device map``) while cuda:0 is current: every op runs on cuda:1 and
    matches its reference."""
    from ria_kernels.ops import nm_mask, prune_fused, ria_score, rms_norm, sparse24_mm
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(128, 256, generator=g).half().to(dev)
    act = (torch.rand(256, generator=g) + 0.1).to(dev)
    s = ria_score.ria_score(w, act, backend="triton")
    torch.testing.assert_close(s, ria_score.pruning_score_reference(w, act, "ria", 0.5), rtol=1e-5, atol=1e-7)
    assert torch.equal(nm_mask.nm_mask(s, 2, 4, backend="triton"), nm_mask.nm_mask_reference(s, 2, 4))
    pw, mk = prune_fused.fused_prune(w, act, "ria", 0.5, "2:4", backend="triton")
    ref_w, ref_m = prune_fused.fused_prune_reference(w, act, "ria", 0.5, "2:4")
    assert torch.equal(mk, ref_m) and torch.equal(pw, ref_w)
    x = torch.randn(5, 256, generator=g).half().to(dev)
    perm = torch.randperm(256, generator=g).to(dev)
    y = rms_norm.permuted_rms_norm(x, torch.ones(256, dtype=torch.float16, device=dev), perm, 1e-6, backend="triton")
    ref = rms_norm.permuted_rms_norm_reference(x, torch.ones(256, dtype=torch.float16, device=dev), perm, 1e-6)
    torch.testing.assert_close(y, ref, rtol=2e-3, atol=2e-3)
    values, meta = sparse24_mm.compress_24(pw)
    for t in (1, 70):
        xx = torch.randn(t, 256, generator=g).half().to(dev)
        out = sparse24_mm.sparse24_mm(xx, values, meta, backend="triton")
        torch.testing.assert_close(out.float(), sparse24_mm.sparse24_mm_reference(xx, values, meta).float(),
                                   rtol=2e-3, atol=2e-3)
    torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0
