"""The one device guard every kernel launcher runs under, and the CUDA-graph capture query.

Triton launches on the *current* CUDA device and its current stream, whatever device the
tensors live on; torch never sets the current device from a tensor. A model split over GPUs
(``--device map``: a layer on ``cuda:1``) would otherwise launch on ``cuda:0`` with ``cuda:1``
pointers. :func:`launch_guard` makes the inputs' device current for the launch; the current
stream is per device in torch, so the launch then goes to that device's current stream (the one
the caller's ``torch.cuda.stream(...)`` set, or its default stream) -- exactly where torch would
run an op on those tensors. On a CPU tensor it is a no-op (the Triton interpreter, the AOT
recorder).

While a guard is open, :func:`active_device` says for which device: tests check every Triton
launch happens inside a guard for its tensors' device. The C++ ops do the same with
``c10::cuda::CUDAGuard`` and ``getCurrentCUDAStream(device)``.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator, Optional

import torch

_local = threading.local()


def _stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@contextlib.contextmanager
def launch_guard(tensor: torch.Tensor) -> Iterator[torch.device]:
    """Run the enclosed kernel launch(es) on ``tensor``'s device and that device's current stream."""
    device = tensor.device
    stack = _stack()
    stack.append(device)
    try:
        if device.type == "cuda":
            with torch.cuda.device(device):
                yield device
        else:
            yield device
    finally:
        stack.pop()


def guarded(fn):
    """Decorator for a launcher: run ``fn`` under :func:`launch_guard` for its first tensor
    argument (every launcher's tensors share one device: its input checks say so)."""
    @functools.wraps(fn)
    def launcher(*args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                with launch_guard(a):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return launcher


def active_device() -> Optional[torch.device]:
    """The device of the innermost open :func:`launch_guard` of this thread, None outside one."""
    stack = _stack()
    return stack[-1] if stack else None


def capturing(device: torch.device) -> bool:
    """Whether the current stream is being captured into a CUDA graph (always False off CUDA).

    A tensor made while capturing lives in the graph's memory pool: it must not be cached for
    later eager calls, and a cached tensor a capture reads must stay alive as long as the graph."""
    if device.type != "cuda":
        return False
    return bool(torch.cuda.is_current_stream_capturing())


__all__ = ["launch_guard", "guarded", "active_device", "capturing"]
