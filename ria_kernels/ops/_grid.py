"""Host-side integer helpers for the launch-config functions of the ops.

``triton.cdiv`` / ``triton.next_power_of_2`` are ``ConstexprFunction`` objects on the host
(~20 us a call); the launch configs are plain integer functions called on every launch and
swept over millions of shapes by ``tests/ops/test_launch_configs.py``, so they use these."""
from __future__ import annotations

# Hardware grid limits (CUDA compute capability >= 3.0): x < 2^31, y and z < 2^16.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 2**16 - 1


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers a >= 0, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
