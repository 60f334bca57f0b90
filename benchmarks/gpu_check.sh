#!/usr/bin/env bash
# The GPU script, in slices that each fit one device lease (15 minutes of device time including the
# machine start, one command <= 10 minutes, at most 8 files back from $OUT, <= 16 MiB each):
#
#   SLICE=kernels   bash benchmarks/gpu_check.sh   # Triton only, no extension build: tests/ops Triton
#                                                  # tests + bench_kernels.py
#   SLICE=extension bash benchmarks/gpu_check.sh   # build ria_kernels._C for the detected arch only,
#                                                  # extension/SparseLinear/inference tests, bench_modules.py
#                                                  # --table5, bench_decode.py; returns the built .so
#   SLICE=e2e       bash benchmarks/gpu_check.sh   # bench_e2e.py, bench_permutation.py --official-max 4096
#   DRY_RUN=1 SLICE=... bash benchmarks/gpu_check.sh   # on any CPU machine: stops after the checks below
#
# Each slice's steps run under `timeout`s that add up to <= 540 s (9 minutes), which leaves the machine
# start and a rerun inside one lease. Every step's budget is in SLICE_PLAN below; the dry run checks the sum.
# The extension build is planned at 200 s but may take up to BUILD_MAX_S (480 s) so that a slow build still
# returns its .so; every later step first checks that its budget fits in what is left of the 540 s and is
# skipped (named in the log) if not -- rerun the slice with the returned .so in .gpu_carry/ to run them.
# $OUT (default gpu_out) gets at most 8 files, none in subfolders: gpu_check.log, one JSON + one PNG per
# benchmark (each benchmark writes into a scratch folder; only its *.json / *.png are copied, within the
# budget, anything else is named in the log), and, from the extension slice, the built _C*.so.
#
# The first line printed is the environment (GPU, driver, torch/CUDA/Triton, cuSPARSELt header and torch's
# cuSPARSELt, cusparse.h, CUTLASS, ninja, build arch) -- a wrong machine shows before time is spent.
#
# Carried inputs: the folder .gpu_carry/ (git-ignored), passed with the device tool's `carry`:
#   .gpu_carry/nvidia_cutlass-4.2.0.0-*.whl  CUTLASS headers (the GPU image has cuSPARSELt, not CUTLASS):
#       python3 -m pip download --no-deps -d .gpu_carry nvidia-cutlass==4.2.0.0
#   .gpu_carry/ninja-*.whl   only if the image lacks ninja (without it torch builds one file at a time):
#       python3 -m pip download --no-deps -d .gpu_carry ninja
#   .gpu_carry/_C*.so        the extension returned by an earlier extension slice: skips the build
#
# The dry run (DRY_RUN=1; no GPU needed, run in CI by tests/test_gpu_check.py) checks: every test and
# benchmark path exists; each benchmark parses its arguments and builds its case list (`--dry-run`);
# pytest collects the tests; the per-step timeouts sum to <= 540 s; the files returned stay <= 8.
# It prints one "DRY-RUN PROBLEM:" line per failed check and exits 1 if there is any.
#
# BENCH_ARGS is appended to every benchmark's arguments (e.g. --quick); EXTRA_TESTS adds test paths.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SLICE=${SLICE:-}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-gpu_out}
MAX_FILES=8
MAX_SECONDS=540
ENV_S=30
BUILD_MAX_S=480
T_START=$(date +%s)

# ---- the slices: tests, their timeout, the build timeout, benchmarks "script|args|timeout"
case "$SLICE" in
  kernels)
    TESTS=(tests/ops/test_nm_mask.py tests/ops/test_prune_fused.py tests/ops/test_ria_score.py tests/ops/test_rms_norm.py)
    TEST_S=150; BUILD_S=0
    BENCHES=("benchmarks/bench_kernels.py||330") ;;
  extension)
    TESTS=(tests/ops/test_sparse_mm.py tests/test_sparse_linear.py tests/test_inference.py)
    TEST_S=120; BUILD_S=200
    BENCHES=("benchmarks/bench_modules.py|--table5|90" "benchmarks/bench_decode.py||90") ;;
  e2e)
    TESTS=(); TEST_S=0; BUILD_S=0
    BENCHES=("benchmarks/bench_e2e.py||420" "benchmarks/bench_permutation.py|--official-max 4096|90") ;;
  *)
    echo "gpu_check: set SLICE=kernels, SLICE=extension or SLICE=e2e (got '${SLICE}')"; exit 2 ;;
esac
# EXTRA_TESTS (space-separated paths) run with the slice's tests, inside the same timeout.
# shellcheck disable=SC2206
[[ -n "${EXTRA_TESTS:-}" ]] && { TESTS+=($EXTRA_TESTS); (( TEST_S )) || TEST_S=60; }
SLICE_PLAN="env ${ENV_S}s"
total=$ENV_S
(( BUILD_S )) && { SLICE_PLAN+=", build ${BUILD_S}s"; total=$((total + BUILD_S)); }
(( ${#TESTS[@]} )) && { SLICE_PLAN+=", tests ${TEST_S}s"; total=$((total + TEST_S)); }
for b in "${BENCHES[@]}"; do
  IFS='|' read -r script args secs <<<"$b"
  SLICE_PLAN+=", $(basename "$script" .py) ${secs}s"; total=$((total + secs))
done
expected_files=$((1 + 2 * ${#BENCHES[@]}))  # the log + one JSON and one PNG per benchmark
[[ "$SLICE" == extension ]] && expected_files=$((expected_files + 1))  # the built .so

mkdir -p "$OUT"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export RIA_KERNELS_CACHE_DIR=$SCRATCH/cache  # tune tables stay out of $OUT
if [[ "$DRY_RUN" == 1 ]]; then
  LOG=$SCRATCH/gpu_check.log  # a dry run returns nothing
else
  LOG=$OUT/gpu_check.log
fi
exec > >(tee -a "$LOG") 2>&1

# CUTLASS headers from the carried wheel (before the environment line, which reports them).
whl=$(ls .gpu_carry/nvidia_cutlass-*.whl 2>/dev/null | head -1)
if [[ -z "${CUTLASS_DIR:-}" && -n "$whl" ]]; then
  python3 -m zipfile -e "$whl" "$SCRATCH/cutlass_whl" && export CUTLASS_DIR=$SCRATCH/cutlass_whl/cutlass_library/source
fi

# ---- line 1: the environment; also pins TORCH_CUDA_ARCH_LIST to the detected GPU (9.0 -> 9.0a)
env_timeout=$ENV_S
[[ "$DRY_RUN" == 1 ]] && env_timeout=300  # a loaded CPU machine imports torch slowly; the GPU run keeps 30 s
env_line=$(timeout "$env_timeout" python3 - <<'PY'
import shutil, subprocess
import torch, triton
from ria_kernels import _build
gpu = arch = driver = "none"
if torch.cuda.is_available():
    gpu = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception as exc:
        driver = f"unknown ({type(exc).__name__})"
cslt = _build.find_cusparselt()
sp = _build.find_cusparse_include(cslt) if cslt else None
torch_cslt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
print(f"ENV gpu={gpu!r} driver={driver} torch={torch.__version__} cuda={torch.version.cuda} "
      f"triton={triton.__version__} cusparselt_header={_build.cusparselt_header_version(cslt) if cslt else 'MISSING'} "
      f"torch_cusparselt={torch_cslt} "
      f"cusparse.h={sp or ('MISSING' if cslt and _build.cusparselt_needs_cusparse_h(cslt) else 'not needed')} "
      f"cutlass={'found' if _build.find_cutlass() else 'MISSING'} ninja={'found' if shutil.which('ninja') else 'MISSING'} "
      f"arch={arch}")
PY
)
env_rc=$?
echo "${env_line:-ENV unavailable: the environment probe failed (exit $env_rc)}"
echo "== slice $SLICE ($(date -u +%FT%TZ)); steps: $SLICE_PLAN = ${total}s of <= ${MAX_SECONDS}s; files back <= $expected_files of $MAX_FILES"
(( env_rc == 0 )) || { echo "!! environment probe failed"; exit 1; }
ARCH=$(sed -n 's/.* arch=\([^ ]*\).*/\1/p' <<<"$env_line")

# ---- the dry run
if [[ "$DRY_RUN" == 1 ]]; then
  problems=0
  problem() { echo "DRY-RUN PROBLEM: $1"; problems=$((problems + 1)); }
  (( total <= MAX_SECONDS )) || problem "step timeouts sum to ${total}s > ${MAX_SECONDS}s"
  (( expected_files <= MAX_FILES )) || problem "$expected_files files would come back (> $MAX_FILES)"
  (( ENV_S + BUILD_MAX_S <= MAX_SECONDS )) || problem "the build's hard limit ${BUILD_MAX_S}s does not fit the slice"
  for t in "${TESTS[@]}"; do [[ -f "$t" ]] || problem "missing test file $t"; done
  for b in "${BENCHES[@]}"; do
    IFS='|' read -r script args secs <<<"$b"
    if [[ ! -f "$script" ]]; then problem "missing benchmark $script"; continue; fi
    # shellcheck disable=SC2086
    if ! timeout 300 python3 "$script" $args ${BENCH_ARGS:-} --out "$SCRATCH/dry_$(basename "$script" .py)" --dry-run; then
      problem "$script${args:+ $args} --dry-run failed"
    fi
  done
  if (( ${#TESTS[@]} )); then
    existing=(); for t in "${TESTS[@]}"; do [[ -f "$t" ]] && existing+=("$t"); done
    if (( ${#existing[@]} )) && ! timeout 300 python3 -m pytest --collect-only -q -p no:cacheprovider "${existing[@]}" \
        >"$SCRATCH/collect.txt" 2>&1; then
      tail -20 "$SCRATCH/collect.txt"; problem "pytest cannot collect ${existing[*]}"
    else
      echo "pytest collects $(grep -c '::' "$SCRATCH/collect.txt") tests from ${#existing[@]} files"
    fi
  fi
  if [[ "$SLICE" == extension ]]; then  # the build's arch handling, for the arch of the GPU this will run on
    python3 -c "from ria_kernels import _build; f = _build.gencode_flags(['9.0a']); assert _build.targets_sm90a(f), f; \
print('build plan: TORCH_CUDA_ARCH_LIST=<detected, e.g. 9.0a>,', len(_build.sources()), 'sources,', ' '.join(f))" \
      || problem "ria_kernels._build cannot make the sm_90a build flags"
    [[ -n "$(ls .gpu_carry/nvidia_cutlass-*.whl 2>/dev/null)" ]] \
      || echo "DRY-RUN NOTE: .gpu_carry/ has no nvidia_cutlass wheel (carry one, or the build has no CUTLASS kernels)"
  fi
  echo "== dry run of slice $SLICE: $problems problem(s)"
  (( problems == 0 )) && exit 0 || exit 1
fi

# ---- the real run
[[ "$ARCH" != none ]] || { echo "!! no CUDA GPU visible; nothing to do (use DRY_RUN=1 on a CPU machine)"; exit 1; }
status=0
fail() { echo "!! $1 failed"; status=1; }
fits() {  # $1 = a step's budget in s: does it end before the slice's 540 s?
  local used=$(( $(date +%s) - T_START ))
  (( used + $1 <= MAX_SECONDS )) && return 0
  echo "!! skipping $2: ${used}s used, its ${1}s would pass ${MAX_SECONDS}s (rerun the slice; a built .so in .gpu_carry/ skips the build)"
  status=1; return 1
}
returned=1  # the log
collect() {  # copy a benchmark's JSON/PNG from its scratch folder into $OUT, within the file budget
  local f
  while IFS= read -r f; do
    if [[ "$f" == *.json || "$f" == *.png ]] && (( returned < MAX_FILES )); then
      cp "$f" "$OUT/" && returned=$((returned + 1))
    else
      echo "   not returned (file budget, or not a JSON/PNG): $f ($(du -h "$f" | cut -f1))"
    fi
  done < <(find "$1" -type f | sort)
}

if [[ "$SLICE" == extension ]]; then
  if ls .gpu_carry/_C*.so >/dev/null 2>&1; then
    echo "== using the carried extension $(ls .gpu_carry/_C*.so) (no build)"; cp .gpu_carry/_C*.so ria_kernels/
  else
    if ! command -v ninja >/dev/null && ls .gpu_carry/ninja-*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps .gpu_carry/ninja-*.whl
    fi
    echo "== build ria_kernels._C for TORCH_CUDA_ARCH_LIST=$ARCH with MAX_JOBS=${MAX_JOBS:-$(nproc)} (planned ${BUILD_S}s, at most ${BUILD_MAX_S}s)"
    t0=$(date +%s)
    if TORCH_CUDA_ARCH_LIST=$ARCH RIA_KERNELS_BUILD_EXT=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        timeout -k 5 "$BUILD_MAX_S" python3 setup.py -q build_ext --inplace; then
      echo "build took $(( $(date +%s) - t0 )) s"
      so=$(ls ria_kernels/_C*.so | head -1)
      if (( $(stat -c %s "$so") > 16 * 1024 * 1024 )); then
        echo "   $so is $(du -h "$so" | cut -f1) (> 16 MiB): not returned"
      else
        cp "$so" "$OUT/" && returned=$((returned + 1))
      fi
    else
      fail "extension build ($(( $(date +%s) - t0 )) s)"
      echo "== skipping the rest of the slice: nothing in it can pass without the extension"
      exit 1
    fi
  fi
  python3 -c "from ria_kernels import _build; print('extension:', _build.extension_status())"
fi

if (( ${#TESTS[@]} )) && fits "$TEST_S" "the GPU tests"; then
  echo "== GPU tests (<= ${TEST_S}s): ${TESTS[*]}"
  timeout -k 5 "$TEST_S" python3 -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}" || fail "GPU tests"
fi
for b in "${BENCHES[@]}"; do
  IFS='|' read -r script args secs <<<"$b"
  name=$(basename "$script" .py)
  fits "$secs" "$script" || continue
  echo "== $script $args ${BENCH_ARGS:-} (<= ${secs}s)"
  mkdir -p "$SCRATCH/$name"
  # shellcheck disable=SC2086
  timeout -k 5 "$secs" python3 "$script" $args ${BENCH_ARGS:-} --out "$SCRATCH/$name" || fail "$name"
  collect "$SCRATCH/$name"
done
echo "== gpu_check slice $SLICE exit status $status; $returned file(s) in $OUT"
exit $status
