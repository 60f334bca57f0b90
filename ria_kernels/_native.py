"""Small CPU kernels compiled with the system C++ compiler and loaded with ctypes.

``build_shared(stem, source, flags)`` compiles one C++ source into
``$RIA_KERNELS_CACHE_DIR`` (default ``~/.cache/ria_kernels``) once per (source, compiler,
flags, CPU) and returns the path of the shared object; later calls load it from the cache.
``-march=native`` code only runs on the CPU it was built for, so the cache key includes the
CPU's feature flags. Used by the LSA gain kernel (``ria_kernels.permutation``) and the sparse
assignment solver (``ria_kernels.lsa_sparse``). Failures raise ``BackendUnavailableError``
with the compiler's first lines; the callers' dispatch points report them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

from ._errors import BackendUnavailableError
from ._io import cache_dir

FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++14")


def cpu_key() -> str:
    """-march=native code is only valid on the CPU it was built for: key the cache by its flags."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform
    return platform.processor() + platform.machine()


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise BackendUnavailableError("no C++ compiler (set CXX or install g++)")
    return cxx


def build_shared(stem: str, source: str, flags: tuple[str, ...] = FLAGS) -> str:
    """Path of the compiled ``source`` (built into the cache on first use, atomically)."""
    cxx = compiler()
    key = hashlib.sha256("\0".join((source, cxx, *flags, cpu_key())).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"{stem}_{key}.so")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, f"{stem}.cpp")
            with open(src, "w") as f:
                f.write(source)
            so = os.path.join(tmp, f"{stem}.so")
            proc = subprocess.run([cxx, *flags, src, "-o", so], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BackendUnavailableError(f"{cxx} failed: {proc.stderr.strip()[:300]}")
            staged = f"{path}.{os.getpid()}.tmp"
            shutil.copyfile(so, staged)
            os.replace(staged, path)  # atomic: concurrent builders never load a half-written file
    return path


def load_once(state: dict, lock, build):
    """``(lib, "")`` from ``build()`` on the first call (``state`` keeps it), ``(None, why)`` when the build
    failed (no compiler, read-only cache, ...: the caller's dispatch point reports ``why``)."""
    with lock:
        if "lib" not in state:
            try:
                state["lib"], state["why"] = build(), ""
            except Exception as e:
                state["lib"], state["why"] = None, f"{type(e).__name__}: {e}".splitlines()[0]
        return state["lib"], state["why"]
