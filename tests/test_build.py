"""CPU tests of the extension build plumbing (ria_kernels/_build.py, setup.py) and, opt-in
(RIA_KERNELS_COMPILE_CHECK=1), compile checks of csrc/: scripts/check_csrc.sh (nvcc, needs the
cuSPARSELt/CUTLASS headers) and a CPU build of the CUTLASS metadata packing compared against a
loop transcription of cutlass::reorder_meta / cutlass::uncompress."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ria_kernels import _build

ROOT = _build.ROOT
COMPILE_CHECK = os.environ.get("RIA_KERNELS_COMPILE_CHECK", "0") == "1"
CPU_TORCH = torch.version.cuda is None


@pytest.fixture
def no_deps(monkeypatch):
    """No env overrides and no site folders: nothing can be found."""
    monkeypatch.delenv("CUSPARSELT_DIR", raising=False)
    monkeypatch.delenv("CUTLASS_DIR", raising=False)
    monkeypatch.setattr(_build, "_site_dirs", lambda: [])


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def test_finds_nothing_and_builds_without_deps(no_deps, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert _build.find_cusparselt() is None
    assert _build.find_cutlass() is None
    args = _build._build_args()
    flags = " ".join(args["cxx"] + args["nvcc"])
    assert "RIA_WITH_CUSPARSELT" not in flags and "RIA_WITH_CUTLASS" not in flags
    assert "RIA_WITH_SM90A" not in flags  # no sm_90a target: the sm90 kernel file compiles to its stub
    assert args["ldflags"] == []
    assert args["include_dirs"] == [_build.CSRC]


def test_cusparselt_env_override(tmp_path, monkeypatch):
    _touch(tmp_path / "include" / "cusparseLt.h")
    _touch(tmp_path / "lib" / "libcusparseLt.so.0")
    monkeypatch.setenv("CUSPARSELT_DIR", str(tmp_path))
    found = _build.find_cusparselt()
    assert found == _build.CuSparseLt(str(tmp_path / "include"), str(tmp_path / "lib"), "libcusparseLt.so.0")
    # an unversioned name wins when present
    _touch(tmp_path / "lib" / "libcusparseLt.so")
    assert _build.find_cusparselt().lib_file == "libcusparseLt.so"


def test_cusparselt_env_override_without_files_finds_nothing(tmp_path, monkeypatch):
    _touch(tmp_path / "lib" / "libcusparseLt.so.0")  # library but no header
    monkeypatch.setenv("CUSPARSELT_DIR", str(tmp_path))
    assert _build.find_cusparselt() is None


def test_cusparselt_from_wheel_layouts(tmp_path, monkeypatch):
    monkeypatch.delenv("CUSPARSELT_DIR", raising=False)
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path)])
    # the cu13 wheel's layout: nvidia/cu13/{include,lib}
    _touch(tmp_path / "nvidia" / "cu13" / "include" / "cusparseLt.h")
    _touch(tmp_path / "nvidia" / "cu13" / "lib" / "libcusparseLt.so.0")
    assert _build.find_cusparselt().include_dir == str(tmp_path / "nvidia" / "cu13" / "include")
    # the cu12 wheel's layout nvidia/cusparselt/{include,lib} is looked at first
    _touch(tmp_path / "nvidia" / "cusparselt" / "include" / "cusparseLt.h")
    _touch(tmp_path / "nvidia" / "cusparselt" / "lib" / "libcusparseLt.so.0")
    assert _build.find_cusparselt().lib_dir == str(tmp_path / "nvidia" / "cusparselt" / "lib")


@pytest.mark.parametrize("nested", [False, True])
def test_cutlass_env_override(tmp_path, monkeypatch, nested):
    inc = tmp_path / "include" if nested else tmp_path
    _touch(inc / "cutlass" / "cutlass.h")
    monkeypatch.setenv("CUTLASS_DIR", str(tmp_path))
    assert _build.find_cutlass() == str(inc)


def test_cutlass_from_wheel_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTLASS_DIR", raising=False)
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path)])
    inc = tmp_path / "cutlass_library" / "source" / "include"
    _touch(inc / "cutlass" / "cutlass.h")
    assert _build.find_cutlass() == str(inc)


def test_build_args_with_deps(tmp_path, monkeypatch):
    _touch(tmp_path / "cslt" / "include" / "cusparseLt.h")
    _touch(tmp_path / "cslt" / "lib" / "libcusparseLt.so.0")
    _touch(tmp_path / "cutlass" / "include" / "cutlass" / "cutlass.h")
    monkeypatch.setenv("CUSPARSELT_DIR", str(tmp_path / "cslt"))
    monkeypatch.setenv("CUTLASS_DIR", str(tmp_path / "cutlass"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    args = _build._build_args()
    for flags in (args["cxx"], args["nvcc"]):
        assert "-DRIA_WITH_CUSPARSELT" in flags and "-DRIA_WITH_CUTLASS" in flags
    assert "-gencode=arch=compute_80,code=sm_80" in args["nvcc"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in args["nvcc"]  # "9.0" builds sm_90a (sm90 sparse kernel)
    assert "-DRIA_WITH_SM90A" in args["nvcc"] and "-DRIA_WITH_SM90A" not in args["cxx"]
    lib = str(tmp_path / "cslt" / "lib")
    assert args["ldflags"] == [f"-L{lib}", "-l:libcusparseLt.so.0", f"-Wl,-rpath,{lib}"]
    assert str(tmp_path / "cutlass" / "include") in args["include_dirs"]


def test_arch_list_and_gencode(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0 9.0a+PTX")
    assert _build.cuda_arch_list() == ["8.0", "9.0a+PTX"]
    assert _build.gencode_flags() == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90a,code=compute_90a",
    ]
    # "9.0" -> an sm_90a cubin; its PTX stays portable compute_90
    assert _build.gencode_flags(["9.0+PTX", "10.0"]) == [
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90,code=compute_90",
        "-gencode=arch=compute_100,code=sm_100",
    ]
    assert _build.targets_sm90a(_build.gencode_flags(["9.0"]))
    assert not _build.targets_sm90a(_build.gencode_flags(["8.0", "8.9", "10.0+PTX"]))
    with pytest.raises(ValueError, match="no entry >= 8.0"):
        _build.gencode_flags(["7.0", "7.5"])
    with pytest.raises(ValueError, match="not like"):
        _build.gencode_flags(["sm80"])


def test_inherited_arch_list_below_80_is_dropped_with_a_log_line(monkeypatch, capsys):
    """An inherited TORCH_CUDA_ARCH_LIST (e.g. a base image's '6.0;7.0;7.5;8.0;8.6+PTX') builds the
    entries >= 8.0 and says which it dropped, instead of failing the install."""
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "6.0;7.0 7.5+PTX;8.0;8.6+PTX")
    assert _build.gencode_flags() == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_86,code=compute_86",
    ]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ria-kernels: dropping CUDA arch(s) 6.0, 7.0, 7.5+PTX from 6.0;7.0;7.5+PTX;8.0;8.6+PTX: 2:4 "
                   "sparse tensor cores need compute capability >= 8.0"]
    _build.gencode_flags(["9.0a"])
    assert capsys.readouterr().err == ""  # nothing dropped, nothing said


_HEADER_080 = '#include <driver_types.h>\n#include "cusparse.h"      // cusparseStatus_t\n'
_HEADER_0100 = ('#if defined(__has_include)\n#   if __has_include(<cusparse.h>)\n#       include <cusparse.h>\n'
                '#   else\n#       include "cusparseLt_cusparse_stub.h"\n#   endif\n#endif\n')


def _fake_site(root, version: str, with_cusparse: bool):
    """A site-packages folder laid out as pip installs nvidia-cusparselt-cu13 <version> (0.8.x:
    nvidia/cusparselt/{include,lib}; 0.10.x: nvidia/cu13/{include,lib}) and, optionally, the CUDA 13
    nvidia-cusparse wheel (nvidia/cu13/include/cusparse.h)."""
    sub = "cusparselt" if version.startswith("0.8") else "cu13"
    (root / "nvidia" / sub / "include").mkdir(parents=True)
    (root / "nvidia" / sub / "include" / "cusparseLt.h").write_text(
        _HEADER_080 if version.startswith("0.8") else _HEADER_0100)
    _touch(root / "nvidia" / sub / "lib" / "libcusparseLt.so.0")
    if with_cusparse:
        _touch(root / "nvidia" / "cu13" / "include" / "cusparse.h")
    return root / "nvidia" / sub / "include"


@pytest.mark.parametrize("version", ["0.8.1", "0.10.0"])
def test_cusparse_h_include_dir_from_the_cu13_wheel_layout(tmp_path, monkeypatch, version):
    monkeypatch.delenv("CUSPARSELT_DIR", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no_toolkit"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path)])
    cslt_inc = _fake_site(tmp_path, version, with_cusparse=True)
    cslt = _build.find_cusparselt()
    assert cslt.include_dir == str(cslt_inc)
    assert _build.cusparselt_needs_cusparse_h(cslt) == version.startswith("0.8")
    assert _build.cusparselt_header_version(cslt) is None  # the fake header has no version defines
    with open(os.path.join(cslt.include_dir, "cusparseLt.h"), "a") as f:
        f.write("".join(f"#define CUSPARSELT_VER_{n} {v}\n" for n, v in zip(("MAJOR", "MINOR", "PATCH"),
                                                                            version.split("."))))
    assert _build.cusparselt_header_version(cslt) == version
    cu13_inc = str(tmp_path / "nvidia" / "cu13" / "include")
    assert _build.find_cusparse_include(cslt) == cu13_inc
    args = _build._build_args()
    assert "-DRIA_WITH_CUSPARSELT" in args["nvcc"]
    assert args["include_dirs"].count(cu13_inc) == 1  # 0.10: the same folder as cusparseLt.h, listed once
    assert str(cslt_inc) in args["include_dirs"]


def test_cusparse_h_from_cuda_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CUSPARSELT_DIR", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    _touch(tmp_path / "cuda" / "include" / "cusparse.h")
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path / "site")])
    _fake_site(tmp_path / "site", "0.8.1", with_cusparse=False)
    assert _build.find_cusparse_include(_build.find_cusparselt()) == str(tmp_path / "cuda" / "include")


def test_cusparselt_080_without_cusparse_h_builds_without_it_loudly(tmp_path, monkeypatch, capsys):
    """The reproduced failure ("cusparse.h: No such file"): 0.8.x headers and no cusparse.h anywhere
    build the extension without cuSPARSELt and say so, instead of a compile error."""
    monkeypatch.delenv("CUSPARSELT_DIR", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no_toolkit"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path)])
    _fake_site(tmp_path, "0.8.1", with_cusparse=False)
    assert _build.find_cusparse_include(_build.find_cusparselt()) is None
    args = _build._build_args()
    assert "-DRIA_WITH_CUSPARSELT" not in args["nvcc"] and args["ldflags"] == []
    assert "WARNING: building WITHOUT cuSPARSELt" in capsys.readouterr().err
    # 0.10.x falls back to its own stub: no cusparse.h needed
    monkeypatch.setattr(_build, "_site_dirs", lambda: [str(tmp_path / "new")])
    _fake_site(tmp_path / "new", "0.10.0", with_cusparse=False)
    assert "-DRIA_WITH_CUSPARSELT" in _build._build_args()["nvcc"]


def test_sources_are_the_csrc_translation_units():
    rel = _build.sources(relative=True)
    assert rel and all(not os.path.isabs(p) and p.startswith("csrc" + os.sep) for p in rel)
    names = {os.path.basename(p) for p in rel}
    assert {"cslt_matmul.cpp", "ops_registration.cpp", "cutlass_sparse_sm80.cu", "cutlass_sparse_sm90.cu",
            "cutlass_sparse_sm90_f16.cu", "cutlass_sparse_sm90_bf16.cu", "cutlass_meta.cpp"} <= names
    assert [os.path.join(ROOT, p) for p in rel] == _build.sources()


@pytest.mark.skipif(not CPU_TORCH, reason="checks the CPU-torch path")
def test_load_extension_on_cpu_torch_never_raises():
    assert _build.load_extension() is None
    assert _build.load_extension(jit=True) is None  # a CPU torch never tries to compile
    status = _build.extension_status()
    assert status.startswith("unavailable: ") and "CPU build" in status
    assert _build.cusparselt_version() is None


def _run_setup(env_value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RIA_KERNELS_BUILD_EXT", None)
    if env_value is not None:
        env["RIA_KERNELS_BUILD_EXT"] = env_value
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # a loaded shared machine imports torch slowly


@pytest.mark.skipif(not CPU_TORCH, reason="checks the CPU-torch skip path of setup.py")
def test_setup_skips_extension_on_cpu_torch():
    proc = _run_setup(None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ria-kernels"
    skip = [line for line in proc.stderr.splitlines() if line.startswith("ria-kernels:")]
    assert skip == ["ria-kernels: skipping the CUDA extension: torch is a CPU build"]


@pytest.mark.skipif(not CPU_TORCH, reason="checks the CPU-torch path of setup.py")
def test_setup_force_fails_clearly_on_cpu_torch():
    proc = _run_setup("1")
    assert proc.returncode != 0
    assert "RIA_KERNELS_BUILD_EXT=1 but the CUDA extension cannot be built: torch is a CPU build" in proc.stderr


def _fake_torch(root, cuda: str | None, importable: bool = True):
    """A stand-in ``torch`` package for setup.py's build-time probe (no real torch import: fast)."""
    pkg = root / "torch"
    (pkg / "utils").mkdir(parents=True)
    if not importable:
        (pkg / "__init__.py").write_text("raise ImportError('No module named torch (isolated build env)')\n")
        return
    (pkg / "__init__.py").write_text(f"class version:\n    cuda = {cuda!r}\n")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "cpp_extension.py").write_text("CUDA_HOME = None\n")


def _setup_name_with(fake_root, path_dirs=()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RIA_KERNELS_BUILD_EXT", "PYTHONPATH")}
    env["PYTHONPATH"] = str(fake_root)
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_setup_is_loud_when_a_cuda_torch_cannot_build_the_extension(tmp_path):
    _fake_torch(tmp_path, cuda="13.0")  # CUDA torch, but no nvcc / CUDA_HOME
    proc = _setup_name_with(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: the CUDA extension ria_kernels._C is NOT being built: nvcc / CUDA_HOME not found" in proc.stderr
    assert "pip install --no-build-isolation -e ." in proc.stderr


def test_setup_is_loud_in_an_isolated_build_on_a_gpu_machine(tmp_path):
    _fake_torch(tmp_path, cuda=None, importable=False)  # pip's isolated build env: torch not importable
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    proc = _setup_name_with(tmp_path, [bin_dir])
    assert proc.returncode == 0, proc.stderr
    assert "NOT being built: torch not importable" in proc.stderr and "--no-build-isolation" in proc.stderr
    if not os.path.exists("/proc/driver/nvidia/version"):  # no driver and no nvidia-smi: a plain CPU line
        proc = _setup_name_with(tmp_path)
        assert "NOT being built" not in proc.stderr
        assert "ria-kernels: skipping the CUDA extension: torch not importable" in proc.stderr


def test_pyproject_declares_setuptools_and_not_torch():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        build = tomllib.load(f)["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert any(r.startswith("setuptools") for r in build["requires"])
    assert not any(r.split("=")[0].split(">")[0].strip() == "torch" for r in build["requires"]), \
        "torch in build requires would pull a CUDA torch into pip's isolated build environment"


# ---- opt-in compile checks -------------------------------------------------------------------

@pytest.mark.skipif(not COMPILE_CHECK, reason="set RIA_KERNELS_COMPILE_CHECK=1 (needs nvcc and the cuSPARSELt/"
                    "CUTLASS headers, e.g. the wheels in .whl/; takes minutes)")
def test_check_csrc_script_compiles_everything():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "check_csrc.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "FAIL" not in proc.stdout
    assert "compiles passed" in proc.stdout


@pytest.mark.skipif(not COMPILE_CHECK, reason="set RIA_KERNELS_COMPILE_CHECK=1 (needs nvcc and the CUTLASS headers; "
                    "the sm_90a compile of the CUTLASS 3.x kernel takes several minutes)")
def test_check_csrc_sm90_kernel_compiles():
    """The sm90 files alone (ops + one CUTLASS 3.x instantiation per dtype): the kernel for sm_90a, the
    guarded stubs for sm_80."""
    files = ["csrc/cutlass_sparse_sm90.cu", "csrc/cutlass_sparse_sm90_f16.cu", "csrc/cutlass_sparse_sm90_bf16.cu"]
    env = dict(os.environ, RIA_CHECK_FILES=" ".join(files), RIA_CHECK_ARCHS="80 90a")
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "check_csrc.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    for f in files:
        for line in (f"OK   {f} sm_90a (with", f"OK   {f} sm_80 (with", f"OK   {f} sm_80 (without"):
            assert line in proc.stdout, proc.stdout


def _reference_pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop transcription of the CUTLASS sm80 16-bit metadata format: the 2 kept indices per group of
    4 (non-zeros first, then the lowest free index, ascending), 4-bit codes packed 4 per uint16
    (host_uncompress.h reads group g at bits 4g), then cutlass::reorder_meta (host_reorder.h) into
    ColumnMajorInterleaved<2> memory."""
    n, k = w.shape
    kc = k // 16
    values = torch.zeros(n, k // 2, dtype=w.dtype)
    e = [[0] * kc for _ in range(n)]
    for r in range(n):
        for g in range(k // 4):
            grp = w[r, 4 * g:4 * g + 4]
            nzs = [i for i in range(4) if grp[i] != 0]
            keep = sorted((nzs + [i for i in range(4) if i not in nzs])[:2])
            values[r, 2 * g], values[r, 2 * g + 1] = grp[keep[0]], grp[keep[1]]
            e[r][g // 4] |= (keep[0] | (keep[1] << 2)) << (4 * (g % 4))
    dest = [None] * (n * kc)
    for m in range(n):
        for kk in range(kc):
            row, col = m // 32 * 32 + (m % 8) * 4 + (m % 32) // 8, kk
            if row % 2 == 0 and col % 2 == 1:
                row, col = row + 1, col - 1
            elif row % 2 == 1 and col % 2 == 0:
                row, col = row - 1, col + 1
            dest[(col // 2) * (2 * n) + row * 2 + col % 2] = e[m][kk]
    assert None not in dest  # the reorder is a permutation
    meta = torch.tensor([v - 65536 if v >= 32768 else v for v in dest], dtype=torch.int16).view(n, kc)
    return values, meta


def _reference_unpack(values: torch.Tensor, e_logical: list[list[int]], k: int) -> torch.Tensor:
    n = values.shape[0]
    out = torch.zeros(n, k, dtype=values.dtype)
    for r in range(n):
        for g in range(k // 4):
            code = (e_logical[r][g // 4] >> (4 * (g % 4))) & 0xF
            out[r, 4 * g + (code & 3)] = values[r, 2 * g]
            out[r, 4 * g + (code >> 2)] = values[r, 2 * g + 1]
    return out


# meta_ops: the CPU build of csrc/cutlass_meta.cpp (tests/conftest.py; shared with tests/ops/test_sparse24_layout.py)


def _random_2to4(n: int, k: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, k, generator=gen).to(dtype)
    keep = torch.rand(n, k // 4, 4, generator=gen).argsort(-1)[..., :2]
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, keep, True).view(n, k)
    w = w * mask
    w[0, :4] = 0  # a group with no non-zero
    w[1, 4:8] = torch.tensor([0, 0, 0, 1.5]).to(dtype)  # a group with one non-zero at the end
    return w


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(32, 32), (64, 96)])
def test_cutlass_meta_packing_matches_reference(meta_ops, dtype, n, k):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = _random_2to4(n, k, dtype, gen)
    values, meta = meta_ops.pack_2to4_sm80(w)
    ref_values, ref_meta = _reference_pack(w)
    assert values.dtype == dtype and values.shape == (n, k // 2)
    assert meta.dtype == torch.int16 and meta.shape == (n, k // 16)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=0)
    assert torch.equal(meta, ref_meta)
    # values + (un-reordered) codes reconstruct W exactly
    e_logical = [[0] * (k // 16) for _ in range(n)]
    for r in range(n):
        for g in range(k // 4):
            grp = w[r, 4 * g:4 * g + 4]
            nzs = [i for i in range(4) if grp[i] != 0]
            keep = sorted((nzs + [i for i in range(4) if i not in nzs])[:2])
            e_logical[r][g // 4] |= (keep[0] | (keep[1] << 2)) << (4 * (g % 4))
    assert torch.equal(_reference_unpack(values, e_logical, k), w)


def test_cutlass_meta_packing_rejects_bad_input(meta_ops):
    w = torch.zeros(32, 32, dtype=torch.float16)
    w[3, 8:11] = 1.0  # 3 non-zeros in one group
    with pytest.raises(RuntimeError, match="not 2:4 sparse"):
        meta_ops.pack_2to4_sm80(w)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        meta_ops.pack_2to4_sm80(torch.zeros(48, 32, dtype=torch.float16))


def test_every_cuda_op_guards_its_device_and_uses_its_stream():
    """Each op the extension registers for CUDA (ops_registration.cpp) holds a c10::cuda::CUDAGuard
    for its input's device and launches on that device's current stream (issue 20: a layer on
    cuda:1 while cuda:0 is current). Checked in the sources: this machine cannot build them."""
    import re
    csrc = Path(ROOT) / "csrc"
    impl = (csrc / "ops_registration.cpp").read_text()
    block = impl[impl.index("TORCH_LIBRARY_IMPL(ria_kernels, CUDA, m)"):]
    block = block[:block.index("\n}")]
    ops = re.findall(r'm\.impl\("(\w+)", &ria::(\w+)::(\w+)\)', block)
    assert len(ops) >= 7
    sources = {p.name: p.read_text() for p in csrc.iterdir() if p.suffix in (".cpp", ".cu")}
    for op, namespace, fn in ops:
        bodies = []
        for text in sources.values():
            if f"namespace {namespace} {{" not in text:
                continue
            for m in re.finditer(rf"^[\w:<>]+ {fn}\((?:[^)]|\n)*\)\s*{{", text, re.M):
                end = text.index("\n}\n", m.end())
                body = text[m.end():end]
                if "unavailable(" not in body.split("\n")[0] and "unavailable(" not in text[m.start():m.end() + 40]:
                    bodies.append(body)
        assert bodies, f"{op}: no definition of ria::{namespace}::{fn} found"
        for body in bodies:
            assert re.search(r"c10::cuda::CUDAGuard \w+\((weight|x)\.device\(\)\)", body), f"{op}: no CUDAGuard"
            for s in re.findall(r"getCurrentCUDAStream\(([^)]*)\)", body):
                assert s.strip(), f"{op}: getCurrentCUDAStream() without the input's device"
