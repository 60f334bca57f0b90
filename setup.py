"""Install ria-kernels. The C++/CUDA extension (``ria_kernels._C``) is built only
where a CUDA build of torch and nvcc are present.

Env override ``RIA_KERNELS_BUILD_EXT``: ``auto`` (default), ``1`` (force: fail if
it cannot be built), ``0`` (skip).
"""
import os
import sys

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}


def _want_extension() -> bool:
    mode = os.environ.get("RIA_KERNELS_BUILD_EXT", "auto").lower()
    if mode in ("0", "no", "false", "skip"):
        print("ria-kernels: skipping the CUDA extension (RIA_KERNELS_BUILD_EXT=0)", file=sys.stderr)
        return False
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception as exc:  # torch not importable at build time
        reason = f"torch not importable ({exc})"
    else:
        if torch.version.cuda is None:
            reason = "torch is a CPU build"
        elif CUDA_HOME is None:
            reason = "nvcc / CUDA_HOME not found"
        else:
            return True
    if mode in ("1", "yes", "true", "force"):
        raise SystemExit(f"ria-kernels: RIA_KERNELS_BUILD_EXT=1 but the CUDA extension cannot be built: {reason}")
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
        # accelerate: the device_map="auto" offload path is tested; lapx: the lapjv LSA solver is tested
        "test": ["pytest", "accelerate", "lapx>=0.11"],
        "fast": ["lapx>=0.11"],  # float64 Jonker-Volgenant for the permutation search (3-6x faster than scipy)
        "bench": ["matplotlib"],
        "data": ["datasets"],
        "cuda": ["pybind11", "ninja"],
    },
    entry_points={"console_scripts": ["ria-prune=ria_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
