#!/usr/bin/env python3
"""The environment line of ``benchmarks/gpu_check.sh`` and the checks that stop a slice before it spends
device time on a machine that cannot run it.

    python3 benchmarks/gpu_env.py --slice extension [--dry-run] [--tests "tests/a.py tests/b.py"]

Prints, as its first line, every version a GPU run depends on::

    ENV gpu='NVIDIA H200' driver=580.159.04 arch=9.0a nvcc=13.0 CUDA_HOME=/usr/local/cuda torch=2.11.0+cu130
        cuda=13.0 triton=3.6.0 cusparselt_header=0.8.1 torch_cusparselt=801 cusparse.h=... cutlass=4.2.0
        ninja=1.11.1 transformers=5.17.0 tokenizers=0.23.2 scipy=1.16.0 safetensors=0.8.0 hypothesis=6.140.0
        matplotlib=3.10.0

(one line; ``MISSING`` for what is not there), then one ``ENV checks`` line naming what the slice needs and
how each check came out, and one ``!! ENV:`` line per failed check. Exit status 0 when every check the slice
needs passed, 3 otherwise. Only ``torch`` and ``triton`` are imported (their CUDA details need it); every
other version is read from the installed metadata, so the probe stays within gpu_check.sh's 30 s.

``--dry-run`` (a CPU machine, CI): the checks that only the GPU machine can pass (a visible GPU, a CUDA
build of torch, nvcc and its CUDA major against torch's, CUDA_HOME, ninja, the cuSPARSELt headers, the
benchmarks' matplotlib) are printed as ``gpu-only`` and not enforced; the rest (torch/Triton majors, the
carried CUTLASS headers, the Python packages the slice's tests and benchmarks import) are enforced.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLICES = ("kernels", "extension", "e2e")
# Python packages read from their metadata: (field, distribution, accepted majors, slices that need it,
# why). The majors are the ones this package is tested with; another major is refused, not guessed at.
PACKAGES = (
    ("transformers", "transformers", (4, 5), ("extension", "e2e"), "tiny models of the inference tests, bench_e2e"),
    ("tokenizers", "tokenizers", (0,), ("extension", "e2e"), "transformers' tokenizers (test fixtures)"),
    ("scipy", "scipy", (1,), ("extension", "e2e"), "the permutation's LSA (inference tests, bench_permutation)"),
    ("safetensors", "safetensors", (0,), ("extension", "e2e"), "save_sparse / load_sparse"),
    ("hypothesis", "hypothesis", (6,), (), "property tests (needed when the slice's tests import it)"),
    ("matplotlib", "matplotlib", (3,), SLICES, "the benchmarks' PNG figures; the [bench] extra, not in CI"),
)
GPU_ONLY_PACKAGES = {"matplotlib"}  # CI installs [test] only; the GPU image has it


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def major(version: str | None) -> int | None:
    m = re.match(r"(\d+)", version or "")
    return int(m.group(1)) if m else None


def nvcc_version(cuda_home: str | None) -> tuple[str | None, str]:
    """(``"13.0"``, path) from ``nvcc --version`` (PATH first, then ``$CUDA_HOME/bin``), or (None, why)."""
    nvcc = shutil.which("nvcc") or (os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None)
    if not nvcc or not os.path.exists(nvcc):
        return None, "not on PATH" + (f" nor in {cuda_home}/bin" if cuda_home else " and no CUDA_HOME")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{nvcc} --version failed ({type(exc).__name__})"
    m = re.search(r"release (\d+\.\d+)", out)
    return (m.group(1), nvcc) if m else (None, f"{nvcc} --version printed no release")


def ninja_version() -> str | None:
    ninja = shutil.which("ninja")  # torch.utils.cpp_extension runs `ninja --version` from PATH
    if not ninja:
        return None
    try:
        out = subprocess.run([ninja, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def cutlass_version(include: str | None) -> str | None:
    """``"4.2.0"`` from ``cutlass/version.h`` in the include folder ``_build.find_cutlass`` found."""
    if include is None:
        return None
    try:
        text = (Path(include) / "cutlass" / "version.h").read_text(errors="replace")
    except OSError:
        return "found (no version.h)"
    parts = [re.search(rf"#define\s+CUTLASS_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else "found (version unknown)"


def tests_import(tests: list[str], module: str) -> bool:
    """Whether any of the test files (or the conftest / _util helpers they load) imports ``module``;
    False for a slice without tests."""
    if not tests:
        return False
    files = [ROOT / t for t in tests] + [ROOT / "tests" / "conftest.py", ROOT / "tests" / "ops" / "_util.py"]
    pattern = re.compile(rf"^\s*(import|from)\s+{module}\b", re.M)
    return any(f.is_file() and pattern.search(f.read_text(errors="replace")) for f in files)


@dataclass
class Check:
    name: str
    gpu_only: bool
    run: Callable[[], str | None]  # None: passed; else the reason it failed


def probe(slice_: str, dry_run: bool, tests: list[str]) -> tuple[str, list[str], list[str]]:
    """(the ENV line, the checks line, one line per failed check)."""
    import torch
    import triton

    from ria_kernels import _build

    fields: dict[str, str] = {}
    gpu = arch = driver = "none"
    if torch.cuda.is_available():
        gpu = repr(torch.cuda.get_device_name())
        cap = torch.cuda.get_device_capability()
        arch = f"{cap[0]}.{cap[1]}" + ("a" if cap == (9, 0) else "")  # 9.0 builds as sm_90a (_build.gencode_flags)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception as exc:  # the line must still print
            driver = f"unknown({type(exc).__name__})"
    try:
        from torch.utils.cpp_extension import CUDA_HOME as cuda_home
    except Exception:  # pragma: no cover - torch without cpp_extension
        cuda_home = None
    nvcc, nvcc_where = nvcc_version(cuda_home)
    cslt = _build.find_cusparselt()
    cslt_ver = _build.cusparselt_header_version(cslt) if cslt else None
    needs_cusparse_h = bool(cslt) and _build.cusparselt_needs_cusparse_h(cslt)
    cusparse_h = _build.find_cusparse_include(cslt) if cslt else None
    cutlass_inc = _build.find_cutlass()
    ninja = ninja_version()
    torch_cslt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    fields.update(gpu=gpu, driver=driver, arch=arch, nvcc=nvcc or "MISSING", CUDA_HOME=cuda_home or "MISSING",
                  torch=torch.__version__, cuda=str(torch.version.cuda), triton=triton.__version__,
                  cusparselt_header=cslt_ver or "MISSING", torch_cusparselt=str(torch_cslt),
                  **{"cusparse.h": cusparse_h or ("MISSING" if needs_cusparse_h else "not-needed")},
                  cutlass=cutlass_version(cutlass_inc) or "MISSING", ninja=ninja or "MISSING")
    pkg_versions = {field: dist_version(dist) for field, dist, *_ in PACKAGES}
    fields.update({k: v or "MISSING" for k, v in pkg_versions.items()})
    env_line = "ENV " + " ".join(f"{k}={v}" for k, v in fields.items())

    def need_major(label: str, version: str | None, majors: tuple[int, ...]) -> str | None:
        if version is None:
            return f"{label} MISSING"
        if major(version) not in majors:
            return f"{label} {version}: major {major(version)} is not one of {majors}"
        return None

    checks = [
        Check("gpu", True, lambda: None if gpu != "none" else "no CUDA GPU visible to torch"),
        Check("torch-cuda", True, lambda: None if torch.version.cuda else f"torch {torch.__version__} is a CPU build"),
        Check("torch", False, lambda: need_major("torch", torch.__version__, (2,))),
        Check("triton", False, lambda: need_major("triton", triton.__version__, (3,))),
    ]
    if slice_ == "extension":
        torch_cuda_major = major(torch.version.cuda)
        checks += [
            Check("nvcc", True, lambda: None if nvcc else
                  f"nvcc MISSING ({nvcc_where}): the build needs CUDA's compiler"),
            # torch.utils.cpp_extension refuses to build with a CUDA major other than torch's
            Check("nvcc-major", True, lambda: None if nvcc and torch_cuda_major == major(nvcc) else
                  f"nvcc {nvcc} vs torch's CUDA {torch.version.cuda}: cpp_extension refuses a different CUDA major"),
            Check("CUDA_HOME", True, lambda: None if cuda_home else
                  "CUDA_HOME not found by torch.utils.cpp_extension"),
            Check("ninja", True, lambda: None if ninja else
                  "ninja MISSING: without it torch builds one unit at a time (~530 CPU-s) and the build "
                  "misses its limit"),
            Check("cusparselt", True, lambda: None if cslt_ver and (cusparse_h or not needs_cusparse_h) else
                  ("cuSPARSELt headers MISSING (nvidia-cusparselt-cu13 or CUSPARSELT_DIR)" if not cslt_ver else
                   "cusparse.h MISSING (cuSPARSELt 0.8.x includes it)")),
            Check("cutlass", False, lambda: None if cutlass_inc else
                  "CUTLASS headers MISSING: install the carried nvidia-cutlass wheel "
                  "(benchmarks/prepare_gpu_carry.sh)"),
        ]
    def package_check(field: str, majors: tuple[int, ...], why: str) -> Callable[[], str | None]:
        def run() -> str | None:
            reason = need_major(field, pkg_versions[field], majors)
            return f"{reason} ({why})" if reason else None
        return run

    for field, _, majors, slices, why in PACKAGES:
        if slice_ in slices or (field == "hypothesis" and tests_import(tests, "hypothesis")):
            checks.append(Check(field, field in GPU_ONLY_PACKAGES, package_check(field, majors, why)))
    passed, skipped, failed = [], [], []
    for c in checks:
        if dry_run and c.gpu_only:
            skipped.append(c.name)
            continue
        reason = c.run()
        (failed.append(f"!! ENV: {reason}") if reason else passed.append(c.name))
    mode = "dry run: gpu-only checks not enforced" if dry_run else "GPU run: every check enforced"
    checks_line = (f"ENV checks slice={slice_} ({mode}): ok={','.join(passed) or '-'} "
                   f"gpu-only={','.join(skipped) or '-'} failed={len(failed)}")
    return env_line, [checks_line], failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slice", required=True, choices=SLICES)
    p.add_argument("--dry-run", action="store_true", help="report the GPU-only checks instead of enforcing them")
    p.add_argument("--tests", default="", help="the slice's test files, space-separated (for hypothesis)")
    args = p.parse_args(argv)
    env_line, info, failed = probe(args.slice, args.dry_run, args.tests.split())
    print(env_line)
    for line in info + failed:
        print(line)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
