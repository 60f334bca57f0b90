"""One package logger, plus a helper that logs a backend choice once per key."""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger("ria_kernels")

_seen: set[tuple] = set()
_lock = threading.Lock()


_cli_handler: logging.Handler | None = None


def enable_cli_logging(verbose: bool = False) -> None:
    """Print the package's log records on stderr (INFO with ``verbose``, else WARNING) through
    one handler on the ``ria_kernels`` logger. The root logger is never configured, so other
    libraries' records are not duplicated; calling it again only changes the level."""
    global _cli_handler
    if _cli_handler is None:
        _cli_handler = logging.StreamHandler()
        _cli_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(_cli_handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def log_once(key: tuple, msg: str, *args, level: int = logging.INFO) -> None:
    """Log ``msg`` the first time ``key`` is seen (e.g. (op, backend, shape))."""
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    logger.log(level, msg, *args)
