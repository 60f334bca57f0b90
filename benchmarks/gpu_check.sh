#!/usr/bin/env bash
# The one script for a GPU machine: build the extension, run the GPU tests, the CLI on the
# GPU and the benchmarks; everything lands under $OUT (default ./gpu_out): gpu_check.log,
# the benchmarks' JSON/PNG, and the built extension (_C*.so) for reuse by a later call.
#
#   bash benchmarks/gpu_check.sh                     # every stage
#   STAGES=build,tests,cli,kernels bash benchmarks/gpu_check.sh
#   STAGES=modules,e2e bash benchmarks/gpu_check.sh  # with .gpu_carry/_C*.so from a previous call
#
# Stages: build, tests, cli, kernels, modules, permutation, e2e, decode. A full run takes longer than
# one 10-minute device call, so split it as above. Carried inputs (the folder .gpu_carry/,
# git-ignored, passed with the device tool's `carry`):
#   .gpu_carry/nvidia_cutlass-*.whl  CUTLASS headers (the GPU image has cuSPARSELt, not CUTLASS):
#       python3 -m pip download --no-deps -d .gpu_carry nvidia-cutlass==4.2.0.0
#   .gpu_carry/_C*.so                a build returned by an earlier call (skips the build stage)
# BENCH_ARGS is passed to every benchmark (e.g. --quick).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
STAGES=${STAGES:-build,tests,cli,kernels,modules,permutation,e2e,decode}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
want() { [[ ",$STAGES," == *",$1,"* ]]; }
status=0
fail() { echo "!! $1 failed"; status=1; }

echo "== environment ($(date -u +%FT%TZ)); stages: $STAGES"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name())"

whl=$(ls .gpu_carry/nvidia_cutlass-*.whl 2>/dev/null | head -1)
if [ -z "${CUTLASS_DIR:-}" ] && [ -n "$whl" ]; then
  python3 -m zipfile -e "$whl" /tmp/cutlass_whl && export CUTLASS_DIR=/tmp/cutlass_whl/cutlass_library/source
fi
python3 -c "from ria_kernels import _build as b; c = b.find_cusparselt(); \
print('cuSPARSELt:', c.include_dir if c else 'NOT FOUND', '| CUTLASS:', b.find_cutlass() or 'NOT FOUND')"

if ls .gpu_carry/_C*.so >/dev/null 2>&1; then
  echo "== using the carried extension $(ls .gpu_carry/_C*.so)"; cp .gpu_carry/_C*.so ria_kernels/
elif want build; then
  echo "== build the CUDA extension (setup.py build_ext --inplace)"
  t0=$(date +%s)
  RIA_KERNELS_BUILD_EXT=1 MAX_JOBS=${MAX_JOBS:-16} timeout 420 python3 setup.py -q build_ext --inplace \
    || fail "extension build"
  echo "build took $(( $(date +%s) - t0 )) s"
  cp ria_kernels/_C*.so "$OUT/" 2>/dev/null || true
fi
python3 -c "from ria_kernels import _build as b; m = b.load_extension(); import torch; \
print('extension:', 'loaded, cuSPARSELt', b.cusparselt_version(), 'CUTLASS', \
torch.ops.ria_kernels.cutlass_available() if m else '') if m else print('extension: NOT loaded:', b.extension_status())"

if want tests; then
  echo "== GPU tests"
  timeout 400 python3 -m pytest -q -rs tests/ops tests/test_sparse_linear.py tests/test_inference.py \
    tests/test_backend.py tests/test_masks.py tests/test_permutation.py tests/test_build.py ${EXTRA_TESTS:-} \
    || fail "GPU tests"
fi
if want cli; then
  echo "== pruning pipeline on the GPU (embedded model, 2:4 + permutation, converted for sparse inference)"
  timeout 180 python3 -m ria_kernels.cli --device cuda --sparsity-type 2:4 --permute --sparse-inference \
    --quiet -v --json "$OUT/cli_gpu.json" || fail "CLI"
fi
python3 benchmarks/bench_decode.py --dry-run > /dev/null || fail "bench_decode --dry-run"
for stage in kernels modules permutation e2e decode; do
  want "$stage" || continue
  echo "== benchmarks/bench_$stage.py"
  timeout 420 python3 "benchmarks/bench_$stage.py" --out "$OUT" ${BENCH_ARGS:-} || fail "bench_$stage"
done
echo "== gpu_check exit status $status"
exit $status
