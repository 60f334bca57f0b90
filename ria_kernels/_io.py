"""Output paths a long run can trust: checked before any model is loaded, written atomically.

- :func:`validate_output_path` checks one output (a directory such as ``--save`` or a
  file such as ``--json``) up front: its parent can be created and written, it is not
  an existing file (for a directory) or directory (for a file), it is not the source
  model, and a non-empty directory is only accepted with ``overwrite=True``.
- :func:`atomic_output_dir` yields a temporary sibling directory; on success its files
  are fsynced and it is renamed into place (an existing target is removed only then,
  with ``overwrite``); on any exception, KeyboardInterrupt included, it is deleted, so
  an interrupted run never leaves a directory that looks complete.
- :func:`atomic_write_text` does the same for one file (temporary sibling, fsync, rename), with
  the mode a plain ``open()`` would give it (0666 minus the umask), as the directories get.
- :func:`cache_dir` is where the package keeps what it builds or measures once per machine
  (the SparseLinear tuning table, the native LSA gain kernel).

Any writer of a run's outputs (``--save``, ``--json``, a compressed checkpoint writer)
goes through these two functions.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ._errors import RiaInputError

KINDS = ("dir", "file")
ENV_CACHE_DIR = "RIA_KERNELS_CACHE_DIR"


def cache_dir() -> Path:
    """``$RIA_KERNELS_CACHE_DIR``, default ``~/.cache/ria_kernels`` (not created here)."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "ria_kernels")


def _same_or_inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def validate_output_path(path: str | os.PathLike, *, kind: str, flag: str = "output",
                         source: str | os.PathLike | None = None, overwrite: bool = False,
                         markers: tuple[str, ...] | None = None) -> Path:
    """Check an output path before any work starts; return it resolved.

    ``kind``: ``"dir"`` (a directory the run creates, e.g. a checkpoint) or ``"file"``.
    ``flag`` names the argument in the error. ``source``: a local input (the model
    directory) that must not be written to or into. ``overwrite``: accept an existing
    non-empty directory / existing file (the writer replaces it atomically).
    ``markers``: with ``overwrite``, a non-empty directory is only replaced when it holds
    one of these file names (what an earlier run writes), so ``--overwrite`` cannot
    delete an unrelated directory such as ``$HOME``.
    Raises :class:`RiaInputError` with one line naming ``flag``.
    """
    if kind not in KINDS:
        raise RiaInputError(f"kind must be one of {KINDS}, got {kind!r}")
    if path is None or str(path).strip() == "":
        raise RiaInputError(f"{flag}: the path is empty")
    p = Path(path).expanduser().resolve()
    if source is not None and Path(source).expanduser().exists():
        src = Path(source).expanduser().resolve()
        if _same_or_inside(p, src) or (kind == "dir" and _same_or_inside(src, p)):
            raise RiaInputError(f"{flag} {path}: is (or overlaps) the source model {source}; "
                                "write the pruned model somewhere else")
    if p.exists():
        if kind == "dir":
            if not p.is_dir():
                raise RiaInputError(f"{flag} {path}: exists and is not a directory")
            if any(p.iterdir()):
                if not overwrite:
                    raise RiaInputError(f"{flag} {path}: directory exists and is not empty "
                                        "(pass --overwrite to replace it)")
                if markers and not any((p / m).is_file() for m in markers):
                    raise RiaInputError(f"{flag} {path}: not empty and not the output of an earlier run "
                                        f"(none of {', '.join(markers)}); refusing to replace it even with --overwrite")
        else:
            if p.is_dir():
                raise RiaInputError(f"{flag} {path}: is a directory; give a file name")
            if not p.is_file():
                raise RiaInputError(f"{flag} {path}: exists and is not a regular file")
            if not overwrite:
                raise RiaInputError(f"{flag} {path}: file exists (pass --overwrite to replace it)")
    # the nearest existing ancestor must be a writable directory (parents are created later)
    anc = p.parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise RiaInputError(f"{flag} {path}: {anc} is not a directory")
    try:  # a real probe: os.access says yes to root on read-only or virtual file systems (/proc)
        probe = tempfile.mkdtemp(prefix=".ria-write-probe-", dir=anc)
        os.rmdir(probe)
    except OSError as exc:
        raise RiaInputError(f"{flag} {path}: cannot write in {anc} ({exc.strerror or exc})") from None
    return p


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(root: Path) -> None:
    """Usual permissions (mkdtemp makes 0700 directories, some writers 0600 files), then fsync all."""
    umask = _umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~umask)
        for name in files:
            path = os.path.join(dirpath, name)
            os.chmod(path, 0o666 & ~umask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success fsync it and rename it to
    ``path`` (replacing an existing one only with ``overwrite``, so nothing a previous run
    wrote there survives); on failure or interrupt remove it and leave ``path`` untouched."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if not overwrite and (not target.is_dir() or any(target.iterdir())):
                raise RiaInputError(f"{target} appeared while the run was writing (pass --overwrite to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")  # moved aside first: the rename below cannot fail on it
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling file, fsync and rename."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a plain open() would honour the umask
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


__all__ = ["validate_output_path", "atomic_output_dir", "atomic_write_text"]
