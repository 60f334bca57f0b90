"""One package logger, plus a helper that logs a backend choice once per key."""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger("ria_kernels")

_seen: set[tuple] = set()
_lock = threading.Lock()


def log_once(key: tuple, msg: str, *args, level: int = logging.INFO) -> None:
    """Log ``msg`` the first time ``key`` is seen (e.g. (op, backend, shape))."""
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    logger.log(level, msg, *args)
