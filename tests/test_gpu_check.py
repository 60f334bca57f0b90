"""benchmarks/gpu_check.sh on a CPU machine: the dry run of every slice (paths exist, each benchmark
parses its arguments and builds its case list with --dry-run, pytest collects the tests, the step
timeouts fit one lease, at most 8 files come back), so a typo cannot cost GPU time; and the pieces of
the GPU benchmarks that a CPU can check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
MISSING_TEST = "tests/no_such_test_file.py"

# Dry-run problems caused by files other issues add (they are not on this branch yet). A slice whose
# problems are all listed here is an expected failure; anything else fails the test. At merge, remove
# the entries whose files have arrived (the lead's note lists them).
PENDING_ON_MERGE: dict[str, dict[str, str]] = {"kernels": {}, "extension": {}, "e2e": {}}

# (slice, extra env): the three slices, and the kernels slice with a test file that does not exist
RUNS = {
    "kernels": ("kernels", {}),
    "extension": ("extension", {}),
    "e2e": ("e2e", {}),
    "missing": ("kernels", {"EXTRA_TESTS": MISSING_TEST}),
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """All dry runs started at once (each is mostly waiting on Python imports), then collected."""
    procs = {}
    for name, (slice_, extra) in RUNS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("EXTRA_TESTS", "BENCH_ARGS", "SLICE")}
        env.update(extra, SLICE=slice_, DRY_RUN="1", OUT=str(tmp_path_factory.mktemp(f"out_{name}")))
        procs[name] = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=1800)
        results[name] = (proc.returncode, out)
    return results


def _problems(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("DRY-RUN PROBLEM:")]


def _check_plan(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("ENV gpu="), "the first line printed must be the environment"
    for key in ("driver=", "torch=", "cuda=", "triton=", "cusparselt_header=", "cusparse.h=", "arch="):
        assert key in lines[0], key
    plan = next(line for line in lines if line.startswith("== slice "))
    total = int(plan.split(" = ")[1].split("s of")[0])
    assert total <= 540, plan  # <= 9 minutes of command time per lease
    files = int(plan.split("files back <= ")[1].split(" of")[0])
    assert files <= 8, plan


@pytest.mark.parametrize("slice_", ["kernels", "extension", "e2e"])
def test_slice_dry_run(dry_runs, slice_):
    rc, out = dry_runs[slice_]
    _check_plan(out)
    problems = _problems(out)
    assert (rc == 0) == (not problems), out[-3000:]
    pending = PENDING_ON_MERGE[slice_]
    unexpected = [p for p in problems if p not in pending]
    assert not unexpected, f"{unexpected}\n{out[-4000:]}"
    if problems:
        pytest.xfail("; ".join(pending[p] for p in problems))
    assert f"== dry run of slice {slice_}: 0 problem(s)" in out


def test_dry_run_fails_on_a_missing_file(dry_runs):
    rc, out = dry_runs["missing"]
    assert rc != 0
    assert f"DRY-RUN PROBLEM: missing test file {MISSING_TEST}" in _problems(out)
    unexpected = [p for p in _problems(out) if p not in PENDING_ON_MERGE["kernels"]
                  and p != f"DRY-RUN PROBLEM: missing test file {MISSING_TEST}"]
    assert not unexpected, unexpected


def test_unknown_slice_is_refused():
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**os.environ, "SLICE": "everything"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set SLICE=kernels" in proc.stdout


# ---- bench_modules: torch's own 2:4 baselines may raise on the GPU (item 1 of the pre-flight issue)
@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_modules as mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def test_torch_baseline_that_raises_is_skipped_with_its_reason(bench_modules):
    x = torch.randn(4, 8)

    def torch_cutlass(x, t):  # what torch's CUTLASS 2:4 path does on compute capability 9.0
        raise RuntimeError("_sparse_semi_structured_linear: CUTLASS not supported on this device\nmore")

    y, why = bench_modules.checked_first_call("torch_cutlass", torch_cutlass, x, 4)
    assert y is None and why == "RuntimeError: _sparse_semi_structured_linear: CUTLASS not supported on this device"
    y, why = bench_modules.checked_first_call("torch_cslt", lambda x, t: x * 2, x, 4)
    assert why is None and torch.equal(y, x * 2)


def test_our_backend_that_raises_is_not_hidden(bench_modules):
    def cutlass(x, t):
        raise RuntimeError("ria_kernels: CUTLASS call failed")

    with pytest.raises(RuntimeError, match="CUTLASS call failed"):
        bench_modules.checked_first_call("cutlass", cutlass, torch.randn(4, 8), 4)


def test_bench_modules_table5_plan(bench_modules, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_modules.py", "--table5", "--dry-run"])
    assert bench_modules.main() == 0
    out = capsys.readouterr().out
    assert "DRY-RUN bench_modules: 6 cases; would write modules.json modules.png" in out
    for shape in ("llama2-7b qkvo (q/k/v/o) N=4096 K=4096 T=1024", "llama2-7b gate_up (gate/up) N=11008 K=4096",
                  "llama2-13b down (down) N=5120 K=13824 T=1024"):
        assert shape in out
    assert "70b" not in out
