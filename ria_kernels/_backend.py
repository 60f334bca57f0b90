"""Backend selection for the Triton/torch ops: the one dispatch point per op.

Rule: an explicit ``backend=`` argument wins, then the env override
``RIA_KERNELS_BACKEND`` (``triton`` or ``torch``), then the default: Triton for
CUDA tensors, the torch reference otherwise. Forcing ``triton`` on CPU tensors
is allowed only under ``TRITON_INTERPRET=1`` (that is how CI tests the kernels).
The choice is logged once per (op, backend, device type).

``aot_recording()``: while the AOT gate (``scripts/check_triton_aot.py``) records
launches, Triton is also allowed for CPU tensors; its hook on Triton's launch path
records each launch and executes nothing.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ._errors import BackendUnavailableError, RiaInputError
from ._logging import log_once

BACKENDS = ("triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a hard dependency
        return False
    return True


# Triton picks interpreter vs compiled kernels when a kernel is decorated (at import of our
# ops), so what counts is the value then, not a later change of the environment.
_INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpret_mode() -> bool:
    return _INTERPRET_AT_IMPORT


_AOT_RECORDING = False


@contextlib.contextmanager
def aot_recording() -> Iterator[None]:
    """Let ``backend="triton"`` pass for CPU tensors: only for the AOT gate, whose hook on
    Triton's launch path records launches instead of running them."""
    global _AOT_RECORDING
    previous, _AOT_RECORDING = _AOT_RECORDING, True
    try:
        yield
    finally:
        _AOT_RECORDING = previous


def resolve_backend(op: str, tensor: torch.Tensor, backend: str | None = None) -> str:
    """Return ``"triton"`` or ``"torch"`` for running ``op`` on ``tensor``."""
    forced = backend or os.environ.get("RIA_KERNELS_BACKEND") or None
    if forced is not None:
        forced = forced.lower()
        if forced not in BACKENDS:
            raise RiaInputError(f"backend must be one of {BACKENDS}, got {forced!r}")
        if forced == "triton":
            if not triton_available():
                raise BackendUnavailableError(f"{op}: backend 'triton' forced but triton is not importable")
            if tensor.device.type != "cuda" and not (interpret_mode() or _AOT_RECORDING):
                raise BackendUnavailableError(
                    f"{op}: backend 'triton' forced for a {tensor.device.type} tensor; "
                    "set TRITON_INTERPRET=1 to run Triton kernels on the CPU")
        choice = forced
    else:
        choice = "triton" if (tensor.device.type == "cuda" and triton_available()) else "torch"
    log_once((op, choice, tensor.device.type), "%s: backend=%s (device=%s)", op, choice, tensor.device.type)
    return choice
