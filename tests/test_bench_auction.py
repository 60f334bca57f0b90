"""bench_auction on a tiny CPU batch: every row's solution is within the auction's bound of scipy's."""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("bench_auction")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_bench_rows(bench, tmp_path):
    solvers = "scipy,auction" + (",auction_triton" if os.environ.get("TRITON_INTERPRET") == "1" else "")
    out = tmp_path / "rows.json"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        assert bench.main(["--device", "cpu", "--sizes", "7", "--batch", "2", "--solvers", solvers,
                           "--json", str(out)]) == 0
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    data = json.loads(out.read_text())
    assert [r["solver"] for r in data["rows"]] == solvers.split(",")
    assert "date" in data["environment"]
    for r in data["rows"]:
        assert r["g"] == 7 and r["batch"] == 2 and r["seconds"] >= 0
        # bound 1e-6 * (max - min); the gains are >= 0, so the optimum >= max - min: relative gap <= 1e-6
        assert 0.0 <= r["max_rel_gap"] <= 1e-6
    heavy = bench.make_batch("heavy", 2, 5, "cpu")
    assert heavy.shape == (2, 5, 5) and bool((heavy >= 0).all())
