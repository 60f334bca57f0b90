#!/usr/bin/env bash
# Compile-only check of every csrc/ translation unit with `nvcc -c` (no link, no GPU needed).
#
# Compiles against the installed torch's headers (a CPU wheel ships c10/cuda and ATen/cuda headers),
# the cuSPARSELt and CUTLASS headers, with the flags torch's CUDAExtension uses, for each arch in
# RIA_CHECK_ARCHS (default "80 90a"), and once more without cuSPARSELt/CUTLASS (the fallback build).
#
# Headers: CUSPARSELT_DIR / CUTLASS_DIR if set, else the installed wheels (ria_kernels._build), else
# the wheels downloaded into .whl/ are unpacked into .cutlass/ (both git-ignored):
#   python3 -m pip download --no-deps -d .whl nvidia-cusparselt-cu13 nvidia-cutlass
# sm_90a compiles also get -DRIA_WITH_SM90A (as _build.py passes it when an sm_90a gencode is in the build), so
# csrc/cutlass_sparse_sm90.cu instantiates its CUTLASS 3.x kernel there and compiles to its stub for sm_80.
# RIA_CHECK_FILES="csrc/a.cu csrc/b.cpp" limits the check to those files (default: every csrc/ unit).
# RIA_CHECK_KEEP=<dir> keeps the object files. Exit status 0 only if every compile succeeds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCHS="${RIA_CHECK_ARCHS:-80 90a}"
JOBS="${MAX_JOBS:-2}"

unpack_wheel() {  # $1 = glob of the wheel in .whl/, $2 = target folder in .cutlass/
  local whl
  whl="$(ls .whl/$1 2>/dev/null | head -n1 || true)"
  if [[ -n "$whl" && ! -d ".cutlass/$2" ]]; then
    mkdir -p ".cutlass/$2" && python3 -m zipfile -e "$whl" ".cutlass/$2"
  fi
}

eval "$(python3 -m ria_kernels._build --print-env)"
if [[ -z "$CSLT_INC" ]]; then
  unpack_wheel 'nvidia_cusparselt_cu1*.whl' cusparselt
  CSLT_INC="$(dirname "$(find .cutlass/cusparselt -name cusparseLt.h 2>/dev/null | head -n1)" 2>/dev/null || true)"
fi
if [[ -z "$CUTLASS_INC" ]]; then
  unpack_wheel 'nvidia_cutlass-*.whl' cutlass
  hdr="$(find .cutlass/cutlass -path '*/include/cutlass/cutlass.h' 2>/dev/null | head -n1 || true)"
  CUTLASS_INC="${hdr:+$(dirname "$(dirname "$hdr")")}"
fi
[[ -n "$CSLT_INC" && -f "$CSLT_INC/cusparseLt.h" ]] || { echo "check_csrc: cusparseLt.h not found (set CUSPARSELT_DIR or download the wheel into .whl/)"; exit 2; }
[[ -n "$CUTLASS_INC" && -f "$CUTLASS_INC/cutlass/cutlass.h" ]] || { echo "check_csrc: cutlass/cutlass.h not found (set CUTLASS_DIR or download the wheel into .whl/)"; exit 2; }

TORCH_INC=()
while read -r d; do TORCH_INC+=("-I$d"); done < <(python3 -c "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))")
PY_INC="$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
ABI="$(python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")"

# The flags torch's CUDAExtension passes (COMMON_NVCC_FLAGS, std, ABI, extension name) + ours.
COMMON=(-c -std=c++20 -O1 -Xcompiler -fPIC "-D_GLIBCXX_USE_CXX11_ABI=$ABI" -DTORCH_API_INCLUDE_EXTENSION_H
        -DTORCH_EXTENSION_NAME=_C -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -DNDEBUG
        -Icsrc "${TORCH_INC[@]}" "-I$PY_INC")
WITH=(-DRIA_WITH_CUSPARSELT -DRIA_WITH_CUTLASS "-I$CSLT_INC" "-I$CUTLASS_INC")

if [[ -n "${RIA_CHECK_KEEP:-}" ]]; then  # keep the objects (e.g. to inspect SASS with cuobjdump)
  OUT="$RIA_CHECK_KEEP"; mkdir -p "$OUT"
else
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi
# A CPU wheel lacks the build-generated c10/cuda/impl/cuda_cmake_macros.h; supply the one-line
# header a CUDA build of torch generates (shared-library build), only when it is missing.
if ! python3 -c "import os,sys,torch.utils.cpp_extension as c; sys.exit(0 if any(os.path.isfile(os.path.join(p,'c10/cuda/impl/cuda_cmake_macros.h')) for p in c.include_paths()) else 1)"; then
  mkdir -p "$OUT/shim/c10/cuda/impl"
  echo '#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS' >"$OUT/shim/c10/cuda/impl/cuda_cmake_macros.h"
  COMMON+=("-I$OUT/shim")
  echo "check_csrc: torch is a CPU wheel; using a shim c10/cuda/impl/cuda_cmake_macros.h"
fi
echo "check_csrc: nvcc $("$NVCC" --version | tail -n1)"
echo "check_csrc: cuSPARSELt headers $CSLT_INC"
echo "check_csrc: CUTLASS headers    $CUTLASS_INC"

jobs_list=()
for src in ${RIA_CHECK_FILES:-csrc/*.cpp csrc/*.cu}; do
  for arch in $ARCHS; do
    jobs_list+=("$src|$arch|with")
  done
  jobs_list+=("$src|80|without")
done

run_one() {  # "$src|$arch|variant"
  IFS='|' read -r src arch variant <<<"$1"
  local obj="$OUT/$(basename "$src").$arch.$variant.o" log="$OUT/$(basename "$src").$arch.$variant.log"
  local extra=()
  [[ "$variant" == with ]] && extra=("${WITH[@]}")
  [[ "$variant" == with && "$arch" == 90a ]] && extra+=(-DRIA_WITH_SM90A)
  local t0=$SECONDS
  if "$NVCC" "${COMMON[@]}" "${extra[@]}" "-gencode=arch=compute_$arch,code=sm_$arch" "$src" -o "$obj" >"$log" 2>&1; then
    echo "OK   $src sm_$arch ($variant cuSPARSELt/CUTLASS) $((SECONDS - t0))s"
  else
    echo "FAIL $src sm_$arch ($variant cuSPARSELt/CUTLASS)"; cat "$log"; return 1
  fi
}

fail=0
# Run with at most $JOBS compiles at a time (the machine may be shared).
running=0
pids=()
for j in "${jobs_list[@]}"; do
  run_one "$j" & pids+=($!)
  running=$((running + 1))
  if (( running >= JOBS )); then
    wait "${pids[0]}" || fail=1
    pids=("${pids[@]:1}")
    running=$((running - 1))
  fi
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done

if (( fail )); then echo "check_csrc: FAILED"; exit 1; fi
echo "check_csrc: all ${#jobs_list[@]} compiles passed"
