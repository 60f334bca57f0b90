#!/usr/bin/env bash
# One call on the GPU machine: environment, GPU tests, benchmarks, end-to-end CLI.
# Writes everything under $OUT (default ./gpu_out): gpu_check.log plus the JSON/PNG results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
echo "== environment"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
status=0
if [ -f ria_kernels/_build.py ] && [ -d csrc ] && ls csrc/*.c* >/dev/null 2>&1; then
  echo "== build CUDA extension"
  python3 -c "from ria_kernels import _build; _build.load_jit(verbose=True)" || status=1
fi
echo "== GPU tests"
timeout 300 python3 -m pytest -q tests/ops tests/test_backend.py tests/test_masks.py tests/test_permutation.py ${EXTRA_TESTS:-} || status=1
echo "== pruning pipeline on the GPU (embedded model)"
timeout 120 python3 -m ria_kernels.cli --device cuda --sparsity-type 2:4 --quiet --json "$OUT/cli_gpu.json" || status=1
echo "== kernel benchmarks"
timeout 300 python3 benchmarks/bench_kernels.py --out "$OUT" ${BENCH_ARGS:-} || status=1
for b in benchmarks/bench_modules.py benchmarks/bench_permutation.py benchmarks/bench_e2e.py; do
  [ -f "$b" ] && { echo "== $b"; timeout 300 python3 "$b" --out "$OUT" || status=1; }
done
echo "== gpu_check exit status $status"
exit $status
