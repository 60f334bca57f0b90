"""Install ria-kernels. The C++/CUDA extension (``ria_kernels._C``) is built only
where a CUDA build of torch and nvcc are present.

    pip install -e .                             # CPU machine (pure Python + Triton)
    pip install --no-build-isolation -e .        # GPU machine: builds the extension against the installed torch

pyproject.toml declares the build system (setuptools) but not torch: pip's isolated build
environment would otherwise download a CUDA build of torch just to build. In an isolated build
torch is not importable, so the extension is skipped -- loudly where CUDA is present.

Env override ``RIA_KERNELS_BUILD_EXT``: ``auto`` (default), ``1`` (force: fail if
it cannot be built), ``0`` (skip).
"""
import os
import shutil
import sys

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}


def _cuda_present(torch_is_cuda: bool) -> bool:
    """A CUDA torch, or (torch not importable, e.g. in pip's isolated build) an NVIDIA driver on this machine."""
    return torch_is_cuda or bool(shutil.which("nvidia-smi")) or os.path.exists("/proc/driver/nvidia/version")


def _loud(reason: str) -> None:
    bar = "ria-kernels: " + "!" * 88
    print("\n".join([bar, f"ria-kernels: WARNING: the CUDA extension ria_kernels._C is NOT being built: {reason}.",
                      "ria-kernels: the 2:4 sparse backends (cuSPARSELt, CUTLASS) will be unavailable. On a GPU "
                      "machine install with",
                      "ria-kernels:     pip install --no-build-isolation -e .",
                      "ria-kernels: (torch must be importable while building), or set RIA_KERNELS_BUILD_EXT=0 to "
                      "skip it on purpose.", bar]), file=sys.stderr)


def _want_extension() -> bool:
    mode = os.environ.get("RIA_KERNELS_BUILD_EXT", "auto").lower()
    if mode in ("0", "no", "false", "skip"):
        print("ria-kernels: skipping the CUDA extension (RIA_KERNELS_BUILD_EXT=0)", file=sys.stderr)
        return False
    torch_is_cuda = False
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception as exc:  # torch not importable at build time (e.g. pip's isolated build environment)
        reason = f"torch not importable ({exc})"
    else:
        torch_is_cuda = torch.version.cuda is not None
        if not torch_is_cuda:
            reason = "torch is a CPU build"
        elif CUDA_HOME is None:
            reason = "nvcc / CUDA_HOME not found"
        else:
            return True
    if mode in ("1", "yes", "true", "force"):
        raise SystemExit(f"ria-kernels: RIA_KERNELS_BUILD_EXT=1 but the CUDA extension cannot be built: {reason}")
    if reason != "torch is a CPU build" and _cuda_present(torch_is_cuda):
        _loud(reason)  # a GPU machine silently without its kernels is the failure this prevents
    else:
        print(f"ria-kernels: skipping the CUDA extension: {reason}", file=sys.stderr)
    return False


if _want_extension():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ria_kernels._build import cuda_extension  # same sources as the JIT path
    from torch.utils.cpp_extension import BuildExtension

    ext_modules.append(cuda_extension())
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    name="ria-kernels",
    version="0.1.0",
    description="Post-training LLM pruning (RIA, Wanda, SparseGPT, N:M, channel permutation) with fast kernels",
    packages=find_packages(include=["ria_kernels", "ria_kernels.*"]),
    package_data={"ria_kernels": ["assets/*", "assets/*/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "triton", "transformers>=4.45", "scipy", "numpy", "tqdm", "safetensors"],
    extras_require={
        # accelerate: the device_map="auto" offload path is tested; lapx: the lapjv LSA solver is tested;
        # hypothesis: the property tests of the kernels (tests/ops/test_properties.py)
        "test": ["pytest", "hypothesis", "accelerate", "lapx>=0.11"],
        "fast": ["lapx>=0.11"],  # opt-in exact Jonker-Volgenant LSA solver (RIA_KERNELS_LSA_SOLVER=lapjv)
        "bench": ["matplotlib"],
        "data": ["datasets"],
        "cuda": ["pybind11", "ninja"],
    },
    entry_points={"console_scripts": ["ria-prune=ria_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
