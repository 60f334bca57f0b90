import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ria_kernels import lsa_sparse

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not lsa_sparse.available(), reason="native sparse LAP unavailable")
def test_rounds_bench_smoke(tmp_path):
    """A tiny run writes one row per (round, variant), every variant at scipy's objective."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sparse_lap.py"), "--shape", "16x64",
                           "--out", str(tmp_path), "--name", "smoke"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "smoke.json").read_text())
    rows = data["rows"]
    assert {r["round"] for r in rows} == {0, 1, 2, 3}
    assert {r["variant"] for r in rows if r["round"] == 0} == {"scipy", "zero", "column", "auto"}  # no warm in round 0
    assert {r["variant"] for r in rows if r["round"] == 1} == {"scipy", "zero", "column", "auto", "warm"}
    assert all(abs(r["rel_diff_vs_scipy"]) < 1e-12 for r in rows)
    assert "command" in data and "loadavg" in data["machine"]
