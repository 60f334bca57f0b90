#!/usr/bin/env bash
# Compile-only check of every csrc/ translation unit with `nvcc -c` (no link, no GPU needed).
#
# Compiles against the installed torch's headers (a CPU wheel ships c10/cuda and ATen/cuda headers),
# the cuSPARSELt and CUTLASS headers, with the flags torch's CUDAExtension uses, for each arch in
# RIA_CHECK_ARCHS (default "80 90a"), and once more without cuSPARSELt/CUTLASS (the fallback build).
#
# Headers: CUSPARSELT_DIR / CUTLASS_DIR if set, else the wheels downloaded into .whl/, else the installed
# wheels (ria_kernels._build). .whl/ and .cutlass/ are git-ignored:
#   python3 -m pip download --no-deps -d .whl nvidia-cusparselt-cu13==0.8.1 nvidia-cusparselt-cu13==0.10.0 \
#       nvidia-cusparse nvidia-cutlass==4.2.0.0
# Every cuSPARSELt wheel in .whl/ is checked (0.8.x's cusparseLt.h includes cusparse.h, 0.10.x does not):
# its headers and those of the nvidia-cusparse wheel (the cu13 layout nvidia/cu13/include) are unpacked into
# one fake site-packages folder, .cutlass/site-<wheel>/, exactly as pip lays them out, and ria_kernels._build
# resolves the include dirs from there (the same code path as setup.py). The first header set compiles every
# unit; the others compile the units that include cusparseLt.h.
# RIA_CHECK_OPT (default -O1; the release build uses "-O3 -lineinfo") and RIA_CHECK_VARIANTS ("with without")
# select the optimisation level and which variants run (e.g. to time the release flags per file).
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

# A wheel's headers into a fake site-packages folder, as pip lays them out; its shared libraries become
# empty files of the same name (the compile needs none, ria_kernels._build only checks that they exist).
unpack_headers() {  # $1 = wheel, $2 = site folder
  python3 - "$1" "$2" <<'PY'
import os, sys, zipfile
whl, site = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if "/include/" in name and not name.endswith("/"):
            z.extract(name, site)
        elif "/lib/" in name and ".so" in name:
            os.makedirs(os.path.dirname(os.path.join(site, name)), exist_ok=True)
            open(os.path.join(site, name), "w").close()
PY
}

# Header sets "label|cusparseLt.h dir|cusparse.h dir (may be empty)".
CSLT_SETS=()
if [[ -n "${CUSPARSELT_DIR:-}" ]]; then
  eval "$(python3 -m ria_kernels._build --print-env)"
  CSLT_SETS+=("CUSPARSELT_DIR|$CSLT_INC|$CUSPARSE_INC")
else
  cusparse_whl="$(ls .whl/nvidia_cusparse-*.whl 2>/dev/null | head -n1 || true)"
  for whl in $(ls -r .whl/nvidia_cusparselt_cu1*.whl 2>/dev/null); do
    ver="$(basename "$whl" | cut -d- -f2)"
    site=".cutlass/site-cusparselt-$ver"
    if [[ ! -f "$site/.done" ]]; then
      rm -rf "$site"; mkdir -p "$site"
      unpack_headers "$whl" "$site"
      [[ -n "$cusparse_whl" ]] && unpack_headers "$cusparse_whl" "$site"
      touch "$site/.done"
    fi
    eval "$(PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" CUDA_HOME=/nonexistent python3 -m ria_kernels._build --print-env)"
    CSLT_SETS+=("cuSPARSELt-$ver|$CSLT_INC|$CUSPARSE_INC")
  done
  if (( ${#CSLT_SETS[@]} == 0 )); then  # no wheel in .whl/: the installed one
    eval "$(python3 -m ria_kernels._build --print-env)"
    CSLT_SETS+=("installed|$CSLT_INC|$CUSPARSE_INC")
  fi
fi
eval "$(python3 -m ria_kernels._build --print-env | grep '^CUTLASS_INC=')"
if [[ -z "$CUTLASS_INC" ]]; then
  unpack_wheel 'nvidia_cutlass-*.whl' cutlass
  hdr="$(find .cutlass/cutlass -path '*/include/cutlass/cutlass.h' 2>/dev/null | head -n1 || true)"
  CUTLASS_INC="${hdr:+$(dirname "$(dirname "$hdr")")}"
fi
for set in "${CSLT_SETS[@]}"; do
  IFS='|' read -r label inc sp_inc <<<"$set"
  [[ -n "$inc" && -f "$inc/cusparseLt.h" ]] || { echo "check_csrc: cusparseLt.h not found for $label (set CUSPARSELT_DIR or download the wheel into .whl/)"; exit 2; }
done
[[ -n "$CUTLASS_INC" && -f "$CUTLASS_INC/cutlass/cutlass.h" ]] || { echo "check_csrc: cutlass/cutlass.h not found (set CUTLASS_DIR or download the wheel into .whl/)"; exit 2; }

TORCH_INC=()
while read -r d; do TORCH_INC+=("-I$d"); done < <(python3 -c "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))")
PY_INC="$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
ABI="$(python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")"

# The flags torch's CUDAExtension passes (COMMON_NVCC_FLAGS, std, ABI, extension name) + ours.
COMMON=(-c -std=c++20 ${RIA_CHECK_OPT:--O1} -Xcompiler -fPIC "-D_GLIBCXX_USE_CXX11_ABI=$ABI" -DTORCH_API_INCLUDE_EXTENSION_H
        -DTORCH_EXTENSION_NAME=_C -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -DNDEBUG
        -Icsrc "${TORCH_INC[@]}" "-I$PY_INC")
with_flags() {  # $1 = index into CSLT_SETS: the "with" variant's defines and include dirs
  local label inc sp_inc
  IFS='|' read -r label inc sp_inc <<<"${CSLT_SETS[$1]}"
  WITH=(-DRIA_WITH_CUSPARSELT -DRIA_WITH_CUTLASS "-I$inc" ${sp_inc:+"-I$sp_inc"} "-I$CUTLASS_INC")
}

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
for set in "${CSLT_SETS[@]}"; do
  IFS='|' read -r label inc sp_inc <<<"$set"
  echo "check_csrc: $label headers $inc (cusparse.h: ${sp_inc:-not found})"
done
echo "check_csrc: CUTLASS headers $CUTLASS_INC"
echo "check_csrc: flags ${RIA_CHECK_OPT:--O1}; $(nproc) cores, $JOBS compile(s) at a time; load $(cut -d' ' -f1-3 /proc/loadavg)"

VARIANTS="${RIA_CHECK_VARIANTS:-with without}"
jobs_list=()
for src in ${RIA_CHECK_FILES:-csrc/*.cpp csrc/*.cu}; do
  if [[ " $VARIANTS " == *" with "* ]]; then
    for arch in $ARCHS; do jobs_list+=("$src|$arch|with|0"); done
    # the other cuSPARSELt header sets: only the units that include cusparseLt.h
    if grep -q 'cusparseLt.h' "$src"; then
      for ((i = 1; i < ${#CSLT_SETS[@]}; i++)); do
        for arch in $ARCHS; do jobs_list+=("$src|$arch|with|$i"); done
      done
    fi
  fi
  if [[ " $VARIANTS " == *" without "* ]]; then jobs_list+=("$src|80|without|0"); fi
done

run_one() {  # "$src|$arch|variant|header set index"
  IFS='|' read -r src arch variant set_idx <<<"$1"
  local label="${CSLT_SETS[$set_idx]%%|*}"
  local tag="$(basename "$src").$arch.$variant.$set_idx"
  local obj="$OUT/$tag.o" log="$OUT/$tag.log"
  local extra=() what="without cuSPARSELt/CUTLASS"
  if [[ "$variant" == with ]]; then
    with_flags "$set_idx"; extra=("${WITH[@]}"); what="with $label/CUTLASS"
  fi
  [[ "$variant" == with && "$arch" == 90a ]] && extra+=(-DRIA_WITH_SM90A)
  # wall and CPU (user+sys of nvcc and its children) seconds: CPU time is what a loaded, shared machine
  # cannot inflate much, and what per-file build-time estimates for other core counts start from
  local TIMEFORMAT='%R %U %S'
  if { time "$NVCC" "${COMMON[@]}" "${extra[@]}" "-gencode=arch=compute_$arch,code=sm_$arch" "$src" -o "$obj" \
         >"$log" 2>&1; } 2>"$OUT/$tag.time"; then
    read -r wall user sys <"$OUT/$tag.time"
    echo "OK   $src sm_$arch ($what) wall ${wall}s cpu $(python3 -c "print(f'{$user + $sys:.1f}')")s"
  else
    echo "FAIL $src sm_$arch ($what)"; cat "$log"; return 1
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
