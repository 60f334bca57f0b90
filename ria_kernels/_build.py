"""Build plumbing for the C++/CUDA extension ``ria_kernels._C`` (sources in ``csrc/``).

Two ways to build, same sources and flags:

* ``setup.py`` calls :func:`cuda_extension` (a ``CUDAExtension``) when a CUDA build of
  torch and nvcc are present;
* :func:`load_jit` compiles with ``torch.utils.cpp_extension.load``.

Dependencies are found at build time: cuSPARSELt from ``CUSPARSELT_DIR`` (a folder with
``include/cusparseLt.h`` and ``lib/libcusparseLt.so*``) or the installed
``nvidia-cusparselt-cu13`` / ``-cu12`` wheel; CUTLASS headers from ``CUTLASS_DIR`` (a folder
holding ``cutlass/cutlass.h`` or ``include/cutlass/cutlass.h``) or the installed
``nvidia-cutlass`` wheel (``cutlass_library/source/include``). Either may be missing: the
extension then builds without it and its ``*_available()`` op says False.

cuSPARSELt 0.8.x's ``cusparseLt.h`` includes ``cusparse.h`` (0.10.x falls back to a stub), which
the CUDA 13 wheels keep in ``nvidia/cu13/include`` (``nvidia-cusparse``), the cu12 wheels in
``nvidia/cusparse/include``, a toolkit in ``$CUDA_HOME/include``: :func:`find_cusparse_include`
adds that folder; a header that needs it when none is found builds without cuSPARSELt, with a
warning that says so.

GPU architectures: ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``; a trailing ``+PTX`` adds
PTX), else the visible GPUs. Entries below 8.0 (an inherited list for older GPUs) are dropped
with a log line: 2:4 sparse tensor cores need compute capability 8.0. ``9.0`` is compiled as ``sm_90a`` (the CUTLASS sm90 sparse kernel in
``csrc/cutlass_sparse_sm90.cu`` needs the arch-specific wgmma.sp; an sm_90a cubin runs on the same
devices as an sm_90 one), and any sm_90a target adds ``-DRIA_WITH_SM90A`` so that kernel is
instantiated; without one it compiles to a stub (``cutlass90_available()`` is False). torch's
``CUDAExtension`` applies one set of nvcc flags to every ``.cu`` file, so the gencode list is shared.
``MAX_JOBS`` is honoured by torch's ninja build (both paths).

At run time :func:`load_extension` and :func:`extension_status` never raise: on a machine
without the extension they return ``None`` and a sentence saying why.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
EXT_NAME = "ria_kernels._C"
JIT_NAME = "ria_kernels_C_jit"
DEFAULT_ARCHS = ("8.0", "8.6", "8.9", "9.0")

_status: str | None = None
_module = None


@dataclass(frozen=True)
class CuSparseLt:
    include_dir: str
    lib_dir: str
    lib_file: str  # the shared object to link, e.g. libcusparseLt.so.0


def _site_dirs() -> list[str]:
    """Folders that may hold the ``nvidia`` namespace package and ``cutlass_library``."""
    dirs: list[str] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [os.path.dirname(p) for p in spec.submodule_search_locations]
    for p in sys.path:
        if p and os.path.isdir(p) and p not in dirs:
            dirs.append(p)
    return dirs


def _cusparselt_in(root: str) -> CuSparseLt | None:
    inc = os.path.join(root, "include")
    if not os.path.isfile(os.path.join(inc, "cusparseLt.h")):
        return None
    for libdir in (os.path.join(root, "lib"), os.path.join(root, "lib64")):
        libs = sorted(glob.glob(os.path.join(libdir, "libcusparseLt.so*")))
        if libs:
            # Prefer the unversioned name, else the SONAME-style file the wheels ship.
            plain = [p for p in libs if p.endswith(".so")]
            return CuSparseLt(inc, libdir, os.path.basename(plain[0] if plain else libs[0]))
    return None


def find_cusparselt() -> CuSparseLt | None:
    """cuSPARSELt headers + library: ``CUSPARSELT_DIR`` first, then the installed wheels.

    An explicit ``CUSPARSELT_DIR`` that does not hold the files gives ``None`` (no silent
    fallback to another copy)."""
    env = os.environ.get("CUSPARSELT_DIR")
    if env:
        return _cusparselt_in(env)
    for site in _site_dirs():
        # cu12 wheel: nvidia/cusparselt/{include,lib}; cu13 wheel: nvidia/cu13/{include,lib}
        for sub in ("nvidia/cusparselt", "nvidia/cu13", "nvidia/cu12"):
            found = _cusparselt_in(os.path.join(site, sub))
            if found is not None:
                return found
    return None


def _cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # torch not importable (e.g. pip's isolated build environment)
        CUDA_HOME = None
    return CUDA_HOME or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)


def cusparselt_needs_cusparse_h(cslt: CuSparseLt) -> bool:
    """Whether ``cusparseLt.h`` includes ``cusparse.h`` unconditionally (0.8.x does; 0.10.x guards
    it with ``__has_include`` and falls back to its own stub)."""
    try:
        with open(os.path.join(cslt.include_dir, "cusparseLt.h"), errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    includes = [line.strip() for line in text.splitlines() if line.strip().startswith("#")
                and "include" in line and "cusparse.h" in line]
    return bool(includes) and "__has_include" not in text


def cusparselt_header_version(cslt: CuSparseLt) -> str | None:
    """``"major.minor.patch"`` from ``cusparseLt.h``'s ``CUSPARSELT_VER_*`` defines (before any build)."""
    import re
    try:
        with open(os.path.join(cslt.include_dir, "cusparseLt.h"), errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    parts = [re.search(rf"#define\s+CUSPARSELT_VER_{name}\s+(\d+)", text) for name in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def find_cusparse_include(cslt: CuSparseLt | None = None) -> str | None:
    """The folder holding ``cusparse.h``: next to ``cusparseLt.h``, then the CUDA wheels'
    layouts (cu13: ``nvidia/cu13/include``; cu12: ``nvidia/cusparse/include``), then
    ``$CUDA_HOME/include``; ``None`` when there is none."""
    candidates = [cslt.include_dir] if cslt is not None else []
    for site in _site_dirs():
        candidates += [os.path.join(site, "nvidia", sub, "include") for sub in ("cu13", "cusparse", "cu12")]
    home = _cuda_home()
    if home:
        candidates += [os.path.join(home, "include"), os.path.join(home, "targets", "x86_64-linux", "include")]
    for inc in candidates:
        if os.path.isfile(os.path.join(inc, "cusparse.h")):
            return inc
    return None


def _cutlass_in(root: str) -> str | None:
    for inc in (root, os.path.join(root, "include")):
        if os.path.isfile(os.path.join(inc, "cutlass", "cutlass.h")):
            return inc
    return None


def find_cutlass() -> str | None:
    """The include folder holding ``cutlass/cutlass.h``: ``CUTLASS_DIR`` first, then the
    ``nvidia-cutlass`` wheel (``cutlass_library/source/include``)."""
    env = os.environ.get("CUTLASS_DIR")
    if env:
        return _cutlass_in(env)
    for site in _site_dirs():
        found = _cutlass_in(os.path.join(site, "cutlass_library", "source"))
        if found is not None:
            return found
    return None


def cuda_arch_list() -> list[str]:
    """Arch entries like ``["8.0", "9.0+PTX"]`` from ``TORCH_CUDA_ARCH_LIST`` or the visible GPUs."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return [a for a in env.replace(",", ";").replace(" ", ";").split(";") if a]
    try:
        import torch

        if torch.cuda.is_available():
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            return [f"{ma}.{mi}" for ma, mi in sorted(caps)]
    except Exception:  # pragma: no cover - broken driver: fall back to the defaults
        pass
    return list(DEFAULT_ARCHS)


def gencode_flags(archs: list[str] | None = None) -> list[str]:
    """nvcc ``-gencode`` flags. Sparse tensor cores (mma.sp) need sm_80 or newer: entries below
    8.0 are dropped with a log line (an inherited ``TORCH_CUDA_ARCH_LIST`` often lists older
    GPUs); a list with nothing at 8.0 or above raises ``ValueError``.

    ``9.0`` becomes an ``sm_90a`` cubin (the sm90 sparse collective's wgmma.sp is arch-specific);
    ``9.0+PTX`` adds portable ``compute_90`` PTX (``compute_90a`` PTX would only run on 9.0 devices),
    while ``9.0a+PTX`` keeps ``compute_90a`` PTX as asked."""
    flags: list[str] = []
    entries = archs if archs is not None else cuda_arch_list()
    dropped: list[str] = []
    for entry in entries:
        ptx = entry.endswith("+PTX")
        arch = entry[: -len("+PTX")] if ptx else entry
        num = arch.replace(".", "")
        digits = num.rstrip("a")
        if not digits.isdigit():
            raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not like '8.0', '9.0a' or '9.0+PTX'")
        if int(digits) < 80:
            dropped.append(entry)
            continue
        cubin = "90a" if num == "90" else num
        flags.append(f"-gencode=arch=compute_{cubin},code=sm_{cubin}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if dropped:
        _note(f"dropping CUDA arch(s) {', '.join(dropped)} from {';'.join(entries)}: 2:4 sparse tensor cores "
              "need compute capability >= 8.0")
    if not flags:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST {';'.join(entries)!r} has no entry >= 8.0 (2:4 sparse tensor "
                         "cores need compute capability >= 8.0); set it to e.g. '9.0' or '8.0;9.0'")
    return flags


def _note(message: str) -> None:
    """One build log line on stderr (setup.py and the JIT build both show stderr)."""
    print(f"ria-kernels: {message}", file=sys.stderr)


def targets_sm90a(flags: list[str]) -> bool:
    """Whether the gencode ``flags`` build an sm_90a cubin (then the sm90 CUTLASS kernel is compiled)."""
    return any(f.endswith("code=sm_90a") for f in flags)


def sources(relative: bool = False) -> list[str]:
    files = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "*.cu")))
    return [os.path.relpath(f, ROOT) for f in files] if relative else files


def _build_args() -> dict:
    """Include dirs, macros, compile and link flags shared by setup.py and the JIT path."""
    defines = ["-DNDEBUG"]
    include_dirs = [CSRC]
    ldflags: list[str] = []
    cslt = find_cusparselt()
    cusparse_inc = find_cusparse_include(cslt) if cslt is not None else None
    if cslt is not None and cusparse_inc is None and cusparselt_needs_cusparse_h(cslt):
        _note(f"WARNING: building WITHOUT cuSPARSELt: {cslt.include_dir}/cusparseLt.h includes cusparse.h, which "
              "is in none of nvidia/cu13/include, nvidia/cusparse/include, $CUDA_HOME/include (install "
              "nvidia-cusparse for your CUDA, or set CUDA_HOME)")
        cslt = None
    if cslt is not None:
        defines.append("-DRIA_WITH_CUSPARSELT")
        include_dirs.append(cslt.include_dir)
        if cusparse_inc is not None and cusparse_inc not in include_dirs:
            include_dirs.append(cusparse_inc)
        # The wheels ship only libcusparseLt.so.0 (no unversioned link name), hence -l:<file>;
        # the rpath lets the .so load without LD_LIBRARY_PATH.
        ldflags += [f"-L{cslt.lib_dir}", f"-l:{cslt.lib_file}", f"-Wl,-rpath,{cslt.lib_dir}"]
    cutlass = find_cutlass()
    if cutlass is not None:
        defines.append("-DRIA_WITH_CUTLASS")
        include_dirs.append(cutlass)
    gencode = gencode_flags()
    # Device-side only: the sm90 kernel's host code is instantiated when some pass targets sm_90a.
    sm90a = ["-DRIA_WITH_SM90A"] if targets_sm90a(gencode) else []
    return {
        "include_dirs": include_dirs,
        "cxx": ["-O3", *defines],
        "nvcc": ["-O3", *defines, *sm90a, "--expt-relaxed-constexpr", "-lineinfo", *gencode],
        "ldflags": ldflags,
    }


def cuda_extension():
    """The ``CUDAExtension`` for setup.py (paths relative to the repository root)."""
    from torch.utils.cpp_extension import CUDAExtension

    args = _build_args()
    cslt, cutlass = find_cusparselt(), find_cutlass()
    print(f"ria-kernels: building {EXT_NAME} (cuSPARSELt: {cslt.include_dir if cslt else 'not found'}; "
          f"CUTLASS: {cutlass or 'not found'}; archs: {';'.join(cuda_arch_list())})", file=sys.stderr)
    return CUDAExtension(
        name=EXT_NAME,
        sources=sources(relative=True),
        include_dirs=args["include_dirs"],
        extra_compile_args={"cxx": args["cxx"], "nvcc": args["nvcc"]},
        extra_link_args=args["ldflags"],
    )


def load_jit(verbose: bool = False):
    """Compile and import the same sources with ``torch.utils.cpp_extension.load`` (ninja)."""
    from torch.utils.cpp_extension import load

    args = _build_args()
    return load(
        name=JIT_NAME,
        sources=sources(),
        extra_include_paths=args["include_dirs"],
        extra_cflags=args["cxx"],
        extra_cuda_cflags=args["nvcc"],
        extra_ldflags=args["ldflags"],
        verbose=verbose,
    )


def load_extension(jit: bool | None = None):
    """The loaded extension module, or ``None`` (then :func:`extension_status` says why).

    Imports the prebuilt ``ria_kernels._C``; if that is missing and ``jit`` is true (default:
    env ``RIA_KERNELS_JIT=1``), compiles it with :func:`load_jit`. Never raises."""
    global _module, _status
    if _module is not None:
        return _module
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a hard dependency
        _status = f"torch not importable ({exc})"
        return None
    if torch.version.cuda is None:
        _status = f"torch {torch.__version__} is a CPU build; the CUDA extension needs a CUDA build of torch"
        return None
    try:
        from . import _C as mod  # type: ignore[attr-defined]
    except ImportError as exc:
        if jit is None:
            jit = os.environ.get("RIA_KERNELS_JIT", "0") == "1"
        if not jit:
            _status = (f"ria_kernels._C is not built ({exc}); build it with `pip install -e .` on a machine "
                       "with nvcc, or set RIA_KERNELS_JIT=1 to compile it on first use")
            return None
        try:
            mod = load_jit()
        except Exception as jit_exc:
            _status = f"ria_kernels._C is not built and the JIT build failed: {jit_exc}"
            return None
    except Exception as exc:  # e.g. an undefined symbol / missing libcusparseLt at load time
        _status = f"ria_kernels._C failed to load: {exc}"
        return None
    _module = mod
    _status = None
    return mod


def cusparselt_version() -> int | None:
    """The loaded cuSPARSELt's version (``major*1000000 + minor*100 + patch``), else ``None``."""
    if load_extension() is None:
        return None
    import torch

    try:
        if not torch.ops.ria_kernels.cslt_available():
            return None
        return int(torch.ops.ria_kernels.cslt_version())
    except Exception:
        return None


def extension_status() -> str:
    """One sentence: what is loaded, or why nothing is. Never raises."""
    mod = load_extension()
    if mod is None:
        return f"unavailable: {_status}"
    try:
        import torch

        ops = torch.ops.ria_kernels
        cslt = f"cuSPARSELt {ops.cslt_version()}" if ops.cslt_available() else "no cuSPARSELt"
        cutlass = "CUTLASS sm80 kernel" if ops.cutlass_available() else "no CUTLASS kernel"
        if hasattr(ops, "cutlass90_available") and ops.cutlass90_available():
            cutlass += ", CUTLASS sm90 kernel"
        return f"loaded: {getattr(mod, '__file__', mod)} ({cslt}, {cutlass})"
    except Exception as exc:
        return f"loaded but its ops are not callable: {exc}"


def _print_env() -> None:
    """Shell assignments for scripts/check_csrc.sh (empty value = not found)."""
    cslt = find_cusparselt()
    print(f"CSLT_INC={cslt.include_dir if cslt else ''}")
    print(f"CUSPARSE_INC={find_cusparse_include(cslt) or ''}")
    print(f"CUTLASS_INC={find_cutlass() or ''}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-env"]:
        _print_env()
    else:
        print(extension_status())
