#!/usr/bin/env bash
# The GPU script, in slices: ONE slice per device lease. A lease is 15 minutes of device time in all (the
# machine's start, idle time and the close count too), one command <= 10 minutes, at most 8 files back from
# $OUT (<= 16 MiB each). Each slice's steps run under `timeout`s that sum to <= 540 s (9 minutes); that
# leaves the machine's start and the transfers, not a rerun: a failed slice is rerun in a later lease.
#
#   SLICE=kernels   bash benchmarks/gpu_check.sh   # Triton only, no extension: tests/ops Triton tests +
#                                                  # bench_kernels.py
#   SLICE=extension bash benchmarks/gpu_check.sh   # install + build ria_kernels._C for the detected arch, the
#                                                  # layout checks first, then the extension/SparseLinear/
#                                                  # inference tests, bench_modules.py --table5, bench_decode.py;
#                                                  # returns the built .so
#   SLICE=e2e       bash benchmarks/gpu_check.sh   # bench_e2e.py, bench_permutation.py --official-max 4096
#   DRY_RUN=1 SLICE=... bash benchmarks/gpu_check.sh   # on any CPU machine (CI): the checks below, no GPU
#
# Steps and their limits are in the `case` below (the README's GPU section has the same table). Order inside
# a slice: carry install, environment line (aborts within 30 s when the slice cannot run here), build,
# layout checks (cuSPARSELt/CUTLASS compressed formats on exactly-2:4 weights, before any timing), JIT warm-up
# (benchmarks/warm_jit.py: every Triton variant the slice launches, compiled in parallel, its compile time on
# its own line), tests (one pytest process), benchmarks. Every step after the build first checks that its
# limit fits what is left of the 540 s and is skipped (named in the log) if not. The part worth re-running is
# small: a returned _C*.so put into the carry skips the build (the extension slice's biggest step) next time.
#
# Carry (GPU_CARRY, default .gpu_carry/, git-ignored), passed with the device tool's carry=[".gpu_carry"]:
#   nvidia_cutlass-4.2.0.0-py3-none-any.whl   CUTLASS headers (the GPU image has cuSPARSELt, not CUTLASS);
#       prepared here by `bash benchmarks/prepare_gpu_carry.sh` (pip download, SHA-256 pinned); the extension
#       slice installs it with one offline line (pip --no-index --no-deps --target) and refuses to run, dry run
#       included, without it (or an explicit CUTLASS_DIR).
#   _C*.so   the extension returned by an earlier extension slice: skips the build
#
# The environment line (benchmarks/gpu_env.py) is line 1: GPU, driver, arch, nvcc --version, CUDA_HOME, torch,
# its CUDA, Triton, cuSPARSELt (header and torch's), cusparse.h, CUTLASS, ninja, transformers, tokenizers,
# scipy, safetensors, hypothesis, matplotlib. It is followed by the slice's checks; a missing tool or a wrong
# major (nvcc's CUDA major must be torch's: torch.utils.cpp_extension refuses another) ends the slice at once.
# ninja is required: without it torch compiles one unit at a time (~530 CPU-s) and the build misses its limit.
#
# Install and build (extension slice): `pip install --no-build-isolation --no-deps --no-index -e .` -- no
# network there, so no dependency resolution; the image already has torch, Triton, transformers, scipy, ...
#
# The dry run (DRY_RUN=1; run in CI by tests/test_gpu_check.py) checks: the carry the slice needs is there and
# installs offline; the environment checks that a CPU can make (the GPU-only ones are printed as such); every
# test and benchmark path exists; each benchmark parses its arguments and builds its case list (`--dry-run`);
# warm_jit.py builds the slice's case list; pytest collects the tests; the per-step timeouts sum to <= 540 s;
# the files returned stay <= 8. It prints one "DRY-RUN PROBLEM:" line per failed check and exits 1 if any.
#
# PYTHON (default python3) is the interpreter every step runs; BENCH_ARGS is appended to every benchmark's
# arguments (e.g. --quick); EXTRA_TESTS adds test paths (run with the slice's tests, inside their timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SLICE=${SLICE:-}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-gpu_out}
PYTHON=${PYTHON:-python3}
CARRY=${GPU_CARRY:-$ROOT/.gpu_carry}
MAX_FILES=8
MAX_SECONDS=540
T_START=$(date +%s)
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- the slices: every step's limit in s (0 = no such step), tests, benchmarks "script|args|limit",
# the carried wheels the slice needs (by file-name prefix)
CARRY_S=0; BUILD_S=0; LAYOUT_S=0; TEST_S=0; ENV_S=30
LAYOUT_TESTS=(); CARRY_NEEDS=()
case "$SLICE" in
  kernels)
    WARM_S=60
    TESTS=(tests/ops/test_nm_mask.py tests/ops/test_prune_fused.py tests/ops/test_ria_score.py tests/ops/test_rms_norm.py
           tests/ops/test_sparse24_mm.py)
    TEST_S=150
    BENCHES=("benchmarks/bench_kernels.py||300") ;;
  extension)
    CARRY_S=10; CARRY_NEEDS=(nvidia_cutlass)
    BUILD_S=210
    LAYOUT_TESTS=(tests/ops/test_sparse_mm_layout.py); LAYOUT_S=30
    WARM_S=30
    TESTS=(tests/ops/test_sparse_mm.py tests/test_sparse_linear.py tests/test_inference.py)
    TEST_S=100
    BENCHES=("benchmarks/bench_modules.py|--table5|65" "benchmarks/bench_decode.py||65") ;;
  e2e)
    WARM_S=30
    TESTS=()
    BENCHES=("benchmarks/bench_e2e.py||390" "benchmarks/bench_permutation.py|--official-max 4096|90") ;;
  *)
    echo "gpu_check: set SLICE=kernels, SLICE=extension or SLICE=e2e (got '${SLICE}')"; exit 2 ;;
esac
# shellcheck disable=SC2206
[[ -n "${EXTRA_TESTS:-}" ]] && { TESTS+=($EXTRA_TESTS); (( TEST_S )) || TEST_S=60; }
SLICE_PLAN=""
total=0
step() { (( $2 )) && { SLICE_PLAN+="${SLICE_PLAN:+, }$1 $2s"; total=$((total + $2)); }; }
step carry "$CARRY_S"; step env "$ENV_S"; step build "$BUILD_S"; step layout "$LAYOUT_S"; step warm "$WARM_S"
(( ${#TESTS[@]} )) && step tests "$TEST_S"
for b in "${BENCHES[@]}"; do
  IFS='|' read -r script args secs <<<"$b"
  step "$(basename "$script" .py)" "$secs"
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

# ---- the carry: the one line that installs the carried wheels (offline), before the environment line reports
# them; its messages are printed after that line (line 1 is the environment)
carry_notes=(); carry_missing=0
if (( ${#CARRY_NEEDS[@]} )); then
  if [[ -n "${CUTLASS_DIR:-}" ]]; then
    carry_notes+=("== carry: CUTLASS_DIR=$CUTLASS_DIR is set, the carried CUTLASS wheel is not installed")
  else
    wheels=()
    for need in "${CARRY_NEEDS[@]}"; do
      found=("$CARRY"/"$need"-*.whl)
      if [[ ! -f "${found[0]}" ]]; then
        carry_notes+=("!! carry: $CARRY has no $need wheel (prepare it with 'bash benchmarks/prepare_gpu_carry.sh' and pass the device tool carry=[\".gpu_carry\"])")
        carry_missing=1
      elif (( ${#found[@]} > 1 )); then
        carry_notes+=("!! carry: $CARRY has ${#found[@]} $need wheels (${found[*]##*/}); keep one")
        carry_missing=1
      else
        wheels+=("${found[0]}")
      fi
    done
    if (( ! carry_missing )); then
      t0=$(date +%s)
      carry_timeout=$CARRY_S
      [[ "$DRY_RUN" == 1 ]] && carry_timeout=120  # CI's loaded CPUs; the GPU run keeps its limit
      if timeout -k 5 "$carry_timeout" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
          --target "$SCRATCH/site" "${wheels[@]}" >"$SCRATCH/carry.log" 2>&1; then
        export PYTHONPATH=$PYTHONPATH:$SCRATCH/site  # ria_kernels._build finds cutlass_library/source/include there
        carry_notes+=("== carry: installed ${wheels[*]##*/} offline in $(( $(date +%s) - t0 )) s")
      else
        carry_notes+=("!! carry: installing ${wheels[*]##*/} failed: $(tail -3 "$SCRATCH/carry.log" | tr '\n' ' ')")
        carry_missing=1
      fi
    fi
  fi
fi

# ---- line 1: the environment, then the slice's checks (benchmarks/gpu_env.py)
env_timeout=$ENV_S
[[ "$DRY_RUN" == 1 ]] && env_timeout=300  # a loaded CPU machine imports torch slowly; the GPU run keeps 30 s
env_args=(--slice "$SLICE" --tests "${LAYOUT_TESTS[*]} ${TESTS[*]}")
[[ "$DRY_RUN" == 1 ]] && env_args+=(--dry-run)
env_out=$(timeout -k 5 "$env_timeout" "$PYTHON" benchmarks/gpu_env.py "${env_args[@]}" 2>"$SCRATCH/env.err")
env_rc=$?
if [[ "$env_out" != ENV\ gpu=* ]]; then
  echo "ENV unavailable: the environment probe failed (exit $env_rc): $(tail -3 "$SCRATCH/env.err" | tr '\n' ' ')"
else
  echo "$env_out"
fi
for note in "${carry_notes[@]}"; do echo "$note"; done
echo "== slice $SLICE ($(date -u +%FT%TZ)); steps: $SLICE_PLAN = ${total}s of <= ${MAX_SECONDS}s; files back <= $expected_files of $MAX_FILES"
ARCH=$(sed -n '1s/.* arch=\([^ ]*\).*/\1/p' <<<"$env_out")

# ---- the dry run
if [[ "$DRY_RUN" == 1 ]]; then
  problems=0
  problem() { echo "DRY-RUN PROBLEM: $1"; problems=$((problems + 1)); }
  (( carry_missing )) && problem "carry: the slice's carried wheel is missing or does not install (see the '!! carry' line)"
  if (( env_rc == 3 )); then
    while IFS= read -r line; do problem "environment: ${line#!! ENV: }"; done < <(grep '^!! ENV: ' <<<"$env_out")
  elif (( env_rc != 0 )); then
    problem "the environment probe failed (exit $env_rc)"
  fi
  (( total <= MAX_SECONDS )) || problem "step timeouts sum to ${total}s > ${MAX_SECONDS}s"
  (( expected_files <= MAX_FILES )) || problem "$expected_files files would come back (> $MAX_FILES)"
  for t in "${LAYOUT_TESTS[@]}" "${TESTS[@]}"; do [[ -f "$t" ]] || problem "missing test file $t"; done
  for b in "${BENCHES[@]}"; do
    IFS='|' read -r script args secs <<<"$b"
    if [[ ! -f "$script" ]]; then problem "missing benchmark $script"; continue; fi
    # shellcheck disable=SC2086
    if ! timeout 300 "$PYTHON" "$script" $args ${BENCH_ARGS:-} --out "$SCRATCH/dry_$(basename "$script" .py)" --dry-run \
        >"$SCRATCH/dry_bench.txt" 2>&1; then
      tail -20 "$SCRATCH/dry_bench.txt"; problem "$script${args:+ $args} --dry-run failed"
    else
      head -1 "$SCRATCH/dry_bench.txt"
    fi
  done
  if timeout 300 "$PYTHON" benchmarks/warm_jit.py --slice "$SLICE" --dry-run >"$SCRATCH/dry_warm.txt" 2>&1; then
    head -1 "$SCRATCH/dry_warm.txt"
  else
    tail -20 "$SCRATCH/dry_warm.txt"; problem "benchmarks/warm_jit.py --slice $SLICE --dry-run failed"
  fi
  all_tests=("${LAYOUT_TESTS[@]}" "${TESTS[@]}")
  if (( ${#all_tests[@]} )); then
    existing=(); for t in "${all_tests[@]}"; do [[ -f "$t" ]] && existing+=("$t"); done
    if (( ${#existing[@]} )) && ! timeout 300 "$PYTHON" -m pytest --collect-only -q -p no:cacheprovider "${existing[@]}" \
        >"$SCRATCH/collect.txt" 2>&1; then
      tail -20 "$SCRATCH/collect.txt"; problem "pytest cannot collect ${existing[*]}"
    else
      echo "pytest collects $(grep -c '::' "$SCRATCH/collect.txt") tests from ${#existing[@]} files"
    fi
  fi
  if [[ "$SLICE" == extension ]]; then  # the build's arch handling, for the arch of the GPU this will run on
    "$PYTHON" -c "from ria_kernels import _build; f = _build.gencode_flags(['9.0a']); assert _build.targets_sm90a(f), f; \
print('build plan: TORCH_CUDA_ARCH_LIST=<detected, e.g. 9.0a>,', len(_build.sources()), 'sources,', ' '.join(f), \
'; CUTLASS:', _build.find_cutlass())" || problem "ria_kernels._build cannot make the sm_90a build flags"
  fi
  echo "== dry run of slice $SLICE: $problems problem(s)"
  (( problems == 0 )) && exit 0 || exit 1
fi

# ---- the real run
if (( env_rc != 0 || carry_missing )); then
  echo "!! the slice cannot run here (see the ENV / carry lines above); stopped after $(( $(date +%s) - T_START )) s"
  exit 1
fi
status=0
fail() { echo "!! $1 failed"; status=1; }
fits() {  # $1 = a step's limit in s: does it end before the slice's 540 s?
  local used=$(( $(date +%s) - T_START ))
  (( used + $1 <= MAX_SECONDS )) && return 0
  echo "!! skipping $2: ${used}s used, its ${1}s would pass ${MAX_SECONDS}s (rerun the slice in another lease)"
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
  if ls "$CARRY"/_C*.so >/dev/null 2>&1; then
    echo "== using the carried extension $(ls "$CARRY"/_C*.so) (no build)"; cp "$CARRY"/_C*.so ria_kernels/
  else
    echo "== build: pip install --no-build-isolation --no-deps --no-index -e . (TORCH_CUDA_ARCH_LIST=$ARCH, ninja," \
         "MAX_JOBS=${MAX_JOBS:-$(nproc)}, <= ${BUILD_S}s)"
    t0=$(date +%s)
    if TORCH_CUDA_ARCH_LIST=$ARCH RIA_KERNELS_BUILD_EXT=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} timeout -k 5 "$BUILD_S" \
        "$PYTHON" -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$SCRATCH/build.log" 2>&1; then
      echo "build took $(( $(date +%s) - t0 )) s"
      grep -E '^ria-kernels:|warning C7508' "$SCRATCH/build.log" | head -20
      so=$(ls ria_kernels/_C*.so 2>/dev/null | head -1)
      if [[ -z "$so" ]]; then
        fail "the build (pip reported success but left no ria_kernels/_C*.so)"; exit 1
      elif (( $(stat -c %s "$so") > 16 * 1024 * 1024 )); then
        echo "   $so is $(du -h "$so" | cut -f1) (> 16 MiB): not returned"
      else
        cp "$so" "$OUT/" && returned=$((returned + 1))
      fi
    else
      tail -40 "$SCRATCH/build.log"
      fail "extension build ($(( $(date +%s) - t0 )) s of its ${BUILD_S}s)"
      echo "== skipping the rest of the slice: nothing in it can pass without the extension"
      exit 1
    fi
  fi
  ext=$("$PYTHON" -c "from ria_kernels import _build; print(_build.extension_status())")
  echo "extension: $ext"
  [[ "$ext" == loaded:* ]] || { fail "loading the extension"; exit 1; }
  if [[ "$ARCH" == 9.0a && "$ext" != *"CUTLASS sm90 kernel"* ]]; then
    fail "the extension has no CUTLASS sm90 kernel on this Hopper GPU (was the carry installed?)"
  fi
fi

if (( ${#LAYOUT_TESTS[@]} )) && fits "$LAYOUT_S" "the layout checks"; then
  echo "== layout checks, before any timing (<= ${LAYOUT_S}s): ${LAYOUT_TESTS[*]}"
  timeout -k 5 "$LAYOUT_S" "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${LAYOUT_TESTS[@]}" || fail "layout checks"
fi
if (( WARM_S )) && fits "$WARM_S" "the JIT warm-up"; then
  echo "== JIT warm-up (<= ${WARM_S}s): benchmarks/warm_jit.py --slice $SLICE"
  # --budget-s: start no case in the last 15 s, so the step reports instead of being killed
  timeout -k 5 "$WARM_S" "$PYTHON" benchmarks/warm_jit.py --slice "$SLICE" --budget-s $((WARM_S - 15)) || fail "JIT warm-up"
fi
if (( ${#TESTS[@]} )) && fits "$TEST_S" "the GPU tests"; then
  echo "== GPU tests (<= ${TEST_S}s): ${TESTS[*]}"
  timeout -k 5 "$TEST_S" "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}" || fail "GPU tests"
fi
for b in "${BENCHES[@]}"; do
  IFS='|' read -r script args secs <<<"$b"
  name=$(basename "$script" .py)
  fits "$secs" "$script" || continue
  echo "== $script $args ${BENCH_ARGS:-} (<= ${secs}s)"
  mkdir -p "$SCRATCH/$name"
  # shellcheck disable=SC2086
  timeout -k 5 "$secs" "$PYTHON" "$script" $args ${BENCH_ARGS:-} --out "$SCRATCH/$name" || fail "$name"
  collect "$SCRATCH/$name"
done
echo "== gpu_check slice $SLICE exit status $status; $returned file(s) in $OUT; $(( $(date +%s) - T_START )) s"
exit $status
