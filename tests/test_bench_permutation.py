"""bench_permutation's --shapes plan and --estimate arithmetic, as pure functions (no solve)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("bench_permutation")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_model_layer_problems_have_the_real_shapes(bench):
    assert bench.layer_problems("llama2-7b") == [("qkv", 12288, 4096), ("o", 4096, 4096),
                                                 ("gateup", 22016, 4096), ("down", 4096, 11008)]
    assert bench.layer_problems("llama2-13b") == [("qkv", 15360, 5120), ("o", 5120, 5120),
                                                  ("gateup", 27648, 5120), ("down", 5120, 13824)]
    assert bench.layer_problems("llama2-70b") == [("qkv", 10240, 8192), ("o", 8192, 8192),
                                                  ("gateup", 57344, 8192), ("down", 8192, 28672)]


def test_parse_shapes_mixes_models_and_explicit_shapes(bench):
    shapes = bench.parse_shapes("4096x11008, LLaMA2-7B,")
    assert shapes[0] == {"model": None, "problem": "4096x11008", "rows": 4096, "cols": 11008}
    assert [s["problem"] for s in shapes[1:]] == ["qkv", "o", "gateup", "down"]
    assert all(s["model"] == "llama2-7b" for s in shapes[1:])


@pytest.mark.parametrize("bad", ["llama3", "4096", "4096x", "0x4", "4x4x4", "ax4"])
def test_parse_shapes_refuses_what_it_cannot_read(bench, bad):
    with pytest.raises(ValueError, match="neither a model"):
        bench.parse_shapes(bad)


def test_shapes_plan_is_shape_x_pattern_x_solver(bench):
    cases = bench.shapes_plan(bench.parse_shapes("8x16,llama2-70b"), [(2, 4), (4, 8)], ["auto", "lapjv"])
    assert len(cases) == 5 * 2 * 2
    assert cases[0] == {"model": None, "problem": "8x16", "rows": 8, "cols": 16, "pattern": "2:4",
                        "method": "ria_kernels", "solver": "auto"}
    assert {c["method"] for c in cases} == {"ria_kernels"}


def test_make_score_shape_and_seeding(bench):
    square = bench.make_score(8, "cpu")
    assert square.shape == (8, 8) and bench.make_score(8, "cpu", cols=8).equal(square)
    rect = bench.make_score(8, "cpu", cols=12)
    assert rect.shape == (8, 12) and rect.min() >= 0 and bench.make_score(8, "cpu", cols=12).equal(rect)


def _rows(model, times, **kw):
    return [dict({"model": model, "problem": p, "pattern": "2:4", "solver": "scipy", "blocks": 1, "max_rounds": None,
                  "time_s": t}, **kw) for p, t in zip(("qkv", "o", "gateup", "down"), times)]


def test_estimate_is_layer_time_times_layers(bench):
    est = bench.layer_estimate(_rows("llama2-7b", [1.0, 2.0, 3.0, 4.0]) + _rows("llama2-70b", [1.0] * 4))
    by_model = {e["model"]: e for e in est}
    assert by_model["llama2-7b"]["layer_s"] == pytest.approx(10.0)
    assert by_model["llama2-7b"]["model_s"] == pytest.approx(320.0)
    assert by_model["llama2-7b"]["model_min"] == pytest.approx(320.0 / 60)
    assert by_model["llama2-70b"]["model_s"] == pytest.approx(4.0 * 80)
    assert by_model["llama2-7b"]["per_problem_s"] == {"qkv": 1.0, "o": 2.0, "gateup": 3.0, "down": 4.0}


def test_estimate_skips_incomplete_layers_and_keeps_capped_runs_apart(bench):
    partial = _rows("llama2-13b", [1.0, 2.0, 3.0, 4.0])[:3]
    capped = _rows("llama2-7b", [1.0] * 4, max_rounds=1)
    full = _rows("llama2-7b", [2.0] * 4)
    explicit = [{"model": None, "problem": "8x16", "pattern": "2:4", "solver": "scipy", "time_s": 1.0}]
    est = bench.layer_estimate(partial + capped + full + explicit)
    assert sorted((e["max_rounds"] or 0, e["model_s"]) for e in est) == [(0, 8.0 * 32), (1, 4.0 * 32)]


def test_dry_run_prints_the_shapes_plan():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_permutation.py"), "--shapes", "llama2-7b",
                          "--patterns", "2:4", "--estimate", "--dry-run", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "4 cases" in out.stdout and "4096x11008 llama2-7b down 2:4" in out.stdout


def test_bad_shape_is_a_one_line_usage_error():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_permutation.py"), "--shapes", "llama9",
                          "--dry-run", "--device", "cpu"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "neither a model" in out.stderr and "Traceback" not in out.stderr


def test_parse_blocks_takes_one_value_or_a_comma_list(bench):
    assert bench.parse_blocks("4") == [4]
    assert bench.parse_blocks(" 1,2, 4,8,16 ") == [1, 2, 4, 8, 16]
    for bad, msg in (("0", "integer >= 1"), ("2,x", "integer >= 1"), ("-1", "integer >= 1"), ("2,2", "twice"),
                     (",", "no value")):
        with pytest.raises(ValueError, match=msg):
            bench.parse_blocks(bad)


def test_shapes_plan_with_blocks_is_innermost(bench):
    cases = bench.shapes_plan(bench.parse_shapes("8x16,16x32"), [(2, 4)], ["scipy"], [1, 4], max_rounds=2)
    assert [(c["problem"], c["blocks"], c["max_rounds"]) for c in cases] == [
        ("8x16", 1, 2), ("8x16", 4, 2), ("16x32", 1, 2), ("16x32", 4, 2)]


def _table_payload():
    row = {"method": "ria_kernels", "model": "llama2-7b", "pattern": "2:4", "solver": "scipy", "max_rounds": None,
           "rows": 8, "cols": 16, "lsa_s": 0.5, "gain_s": 0.25, "loadavg_before": [0.5, 0, 0],
           "loadavg_after": [1.5, 0, 0]}
    rows = [dict(row, problem="o", blocks=1, time_s=4.0, retained_lsa=200.0, gain_pct=6.0),
            dict(row, problem="o", blocks=4, time_s=1.0, retained_lsa=199.0, gain_pct=5.5),
            dict(row, problem="down", blocks=2, time_s=2.0, retained_lsa=50.0, gain_pct=1.0)]
    return {"env": {"date": "2026-12-03T14:00:00+00:00", "device": "cpu"}, "rows": rows,
            "machine": {"cpu": "Some CPU", "cpus": 2}, "threads": 2, "omp_num_threads": "2",
            "command": "python bench_permutation.py --blocks 1,4", "score_matrix": "make_score",
            "estimate": [{"model": "llama2-7b", "pattern": "2:4", "solver": "scipy", "blocks": 4, "max_rounds": None,
                          "layer_s": 3.0, "layers": 32, "model_min": 1.6}]}


def test_blocks_table_is_relative_to_blocks_1_of_the_same_problem(bench):
    md = bench.blocks_table_md(_table_payload())
    lines = md.splitlines()
    o4 = next(ln for ln in lines if ln.startswith("| llama2-7b | o |") and "| 4 |" in ln)
    assert f"| {199.0 / 200.0:.5f} | {4.0 / 1.0:.1f}x |" in o4 and "| +5.50 |" in o4
    o1 = next(ln for ln in lines if ln.startswith("| llama2-7b | o |") and "| 1 |" in ln)
    assert "| 1.00000 | 1.0x |" in o1
    down = next(ln for ln in lines if ln.startswith("| llama2-7b | down |"))
    assert "| - | - |" in down   # no blocks=1 row of that problem in the file: no ratio
    for needle in ("2026-12-03T14:00:00+00:00", "Some CPU", "0.50-1.50", "`python bench_permutation.py --blocks 1,4`",
                   "| llama2-7b | 2:4 | scipy | 4 | 3.0 | 32 | 1.6 |"):
        assert needle in md, needle


def test_table_flag_renders_a_result_file(tmp_path):
    import json
    src, out = tmp_path / "rows.json", tmp_path / "table.md"
    src.write_text(json.dumps(_table_payload()))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_permutation.py"), "--table", str(src),
                        "--table-out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert f"from `{src}`" in out.read_text() and "| llama2-7b | o |" in out.read_text()


@pytest.mark.parametrize("argv,msg", [(["--blocks", "2"], "--blocks needs --shapes"),
                                      (["--shapes", "8x16", "--blocks", "0"], "integer >= 1"),
                                      (["--table-out", "x.md"], "--table-out needs --table")])
def test_blocks_and_table_argument_errors(argv, msg):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_permutation.py"), *argv, "--dry-run",
                        "--device", "cpu"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr


def test_dry_run_lists_one_case_per_blocks_value():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_permutation.py"), "--shapes", "4096x11008",
                          "--patterns", "2:4", "--solvers", "scipy", "--blocks", "1,4,16", "--dry-run", "--device",
                          "cpu"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "3 cases" in out.stdout and all(f"blocks={b} " in out.stdout for b in (1, 4, 16))
