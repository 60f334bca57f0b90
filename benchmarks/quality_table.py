#!/usr/bin/env python3
"""Perplexity table of the pruning methods on the embedded default model (CPU, offline).

Each row is one ``ria-prune`` run (same code path as the CLI: ``ria_kernels.cli.run``)
on a fresh copy of the embedded model, calibrated on its shipped calibration text and
evaluated on its held-out evaluation text; the dense perplexity is measured once.
Writes ``<out>/quality_embedded.json`` (environment + one row per run) and prints a
Markdown table for the README.

``--suite 2:4`` is the one-shot 2:4 comparison of issue #23: every method and combination
(magnitude, Wanda, RIA, RIA + CP, SparseGPT, SparseGPT + CP, RIA + CP + OBS, RIA + CP + LS,
ALPS, ALPS + CP; CP = RIA channel permutation) with the same calibration and evaluation, on
the embedded model or (``--model wikitext``) the WikiText-2 LLaMA of
``scripts/train_wikitext_model.py`` (calibration: 32 x 256 windows of ``valid.txt``, its
training text; evaluation: all of ``test.txt``). Writes ``<out>/quality_24_<model>.json``
with the command, date and load average, per-row prune time (per stage) and the layer-0
per-linear output errors, and the acceptance checks.

    python benchmarks/quality_table.py --out benchmarks/results
    python benchmarks/quality_table.py --only ria-50,ria-2:4     # a subset, by row name
    python benchmarks/quality_table.py --suite 2:4 --model embedded
    python benchmarks/quality_table.py --suite 2:4 --model wikitext
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, write_rows  # noqa: E402

# (row name, table column, CLI flags). Thresholds follow each method's own repository:
# Wanda prunes per output row, magnitude / RI / RIA one threshold per linear module.
RUNS: list[tuple[str, str, list[str]]] = []
for ratio in ("0.5", "0.7"):
    col = f"{int(float(ratio) * 100)}% unstructured"
    RUNS += [
        (f"magnitude-{ratio}", col, ["--method", "magnitude", "--sparsity-ratio", ratio]),
        (f"wanda-{ratio}", col, ["--method", "wanda", "--per-output", "--sparsity-ratio", ratio]),
        (f"ri-{ratio}", col, ["--method", "ri", "--sparsity-ratio", ratio]),
        (f"ria-{ratio}", col, ["--method", "ria", "--sparsity-ratio", ratio]),
        (f"sparsegpt-{ratio}", col, ["--method", "sparsegpt", "--sparsity-ratio", ratio]),
        (f"ria+rec-{ratio}", col, ["--method", "ria", "--reconstruction", "--sparsity-ratio", ratio]),
        (f"ria+atp-{ratio}", col, ["--method", "ria", "--layerwise", "atp", "--sparsity-ratio", ratio]),
        (f"ria+owl-{ratio}", col, ["--method", "ria", "--layerwise", "owl", "--sparsity-ratio", ratio]),
    ]
for pattern in ("2:4", "4:8"):
    RUNS += [
        (f"magnitude-{pattern}", pattern, ["--method", "magnitude", "--sparsity-type", pattern]),
        (f"wanda-{pattern}", pattern, ["--method", "wanda", "--sparsity-type", pattern]),
        (f"ri-{pattern}", pattern, ["--method", "ri", "--sparsity-type", pattern]),
        (f"ria-{pattern}", pattern, ["--method", "ria", "--sparsity-type", pattern]),
        (f"sparsegpt-{pattern}", pattern, ["--method", "sparsegpt", "--sparsity-type", pattern]),
        (f"ria+rec-{pattern}", pattern, ["--method", "ria", "--reconstruction", "--sparsity-type", pattern]),
    ]
RUNS += [
    ("wanda+cp-2:4", "2:4 + channel permutation", ["--method", "wanda", "--sparsity-type", "2:4", "--permute"]),
    ("ria+cp-2:4", "2:4 + channel permutation", ["--method", "ria", "--sparsity-type", "2:4", "--permute"]),
]
# issue #23: every 2:4 method and combination, same calibration and evaluation
RUNS_24: list[tuple[str, str, list[str]]] = [
    ("magnitude", "magnitude", ["--method", "magnitude"]),
    ("wanda", "Wanda", ["--method", "wanda"]),
    ("ria", "RIA", ["--method", "ria"]),
    ("ria+cp", "RIA + CP", ["--method", "ria", "--permute"]),
    ("sparsegpt", "SparseGPT", ["--method", "sparsegpt"]),
    ("sparsegpt+cp", "SparseGPT + CP", ["--method", "sparsegpt", "--permute"]),
    ("ria+cp+obs", "RIA + CP + OBS reconstruction", ["--method", "ria", "--permute", "--reconstruction", "obs"]),
    ("ria+cp+ls", "RIA + CP + LS refit", ["--method", "ria", "--permute", "--reconstruction", "ls"]),
    ("alps", "ALPS", ["--method", "alps"]),
    ("alps+cp", "ALPS + CP", ["--method", "alps", "--permute"]),
]
ROOT = Path(__file__).resolve().parents[1]
WIKITEXT_MODEL = ROOT / "benchmarks" / "assets" / "wikitext_llama"


def model_flags(model: str, data: Path) -> list[str]:
    """CLI flags selecting the model and its calibration / evaluation data."""
    if model == "embedded":
        return []  # the embedded model's own calib.txt / eval.txt, 32 x 128 windows
    return ["--model", str(WIKITEXT_MODEL), "--calib-text", str(data / "valid.txt"),
            "--eval-text", str(data / "test.txt"), "--nsamples", "32", "--seqlen", "256"]


def run_suite_24(args) -> int:
    """The issue #23 table: one JSON per model, one row per method / combination."""
    from tqdm import tqdm
    base = model_flags(args.model, Path(args.data)) + ["--sparsity-type", "2:4"]
    runs = RUNS_24
    if args.only:
        wanted = {x.strip() for x in args.only.split(",")}
        runs = [r for r in RUNS_24 if r[0] in wanted]
    load_before = list(os.getloadavg())
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    dense = run_one(model_flags(args.model, Path(args.data)) + ["--method", "magnitude", "--sparsity-ratio", "0.0"])
    rows = []
    for name, label, flags in tqdm(runs, desc=f"2:4 quality table ({args.model})", unit="run"):
        r = run_one(base + flags + ["--no-dense-eval"])
        p = r["pruning"]
        layer0 = {n: lin.get("output_error") for n, lin in p["layers"][0]["linears"].items()}
        rows.append({"name": name, "label": label, "flags": " ".join(base + flags),
                     "pruned_ppl": r["evaluation"]["pruned"]["ppl"], "actual_sparsity": p["actual_sparsity"],
                     "prune_time_s": p["total_time_s"], "stage_times_s": p.get("stage_times_s"),
                     "layer0_output_error": layer0,
                     "alps_iterations": {n: lin.get("iterations") for n, lin in p["layers"][0]["linears"].items()}
                     if name.startswith("alps") else None,
                     "load_average_after": list(os.getloadavg()),
                     "nsamples": r["calibration"]["nsamples"], "seqlen": r["calibration"]["seqlen"],
                     "eval_tokens": r["evaluation"]["tokens"]})
        tqdm.write(f"{name:14s} ppl {rows[-1]['pruned_ppl']:9.3f}  prune {rows[-1]['prune_time_s']:7.2f} s")
    by = {r["name"]: r for r in rows}
    checks = {}
    if "alps+cp" in by and "sparsegpt" in by:
        a, s = by["alps+cp"], by["sparsegpt"]
        checks["alps_cp_ppl_vs_sparsegpt"] = a["pruned_ppl"] / s["pruned_ppl"] - 1
        checks["alps_cp_at_least_2pct_lower"] = a["pruned_ppl"] <= 0.98 * s["pruned_ppl"]
        checks["alps_cp_prune_time_ratio_vs_sparsegpt"] = a["prune_time_s"] / s["prune_time_s"]
        checks["alps_cp_prune_time_within_5x"] = a["prune_time_s"] <= 5 * s["prune_time_s"]
    if "ria+cp+ls" in by and "ria+cp+obs" in by:
        checks["ls_below_obs"] = by["ria+cp+ls"]["pruned_ppl"] < by["ria+cp+obs"]["pruned_ppl"]
    env = environment()
    env.update(command="python " + " ".join(sys.argv), started_at=started, load_average_before=load_before,
               load_average_after=list(os.getloadavg()), cpu_count=os.cpu_count(),
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    extra = {"env": env, "model": args.model, "dense_ppl": dense["evaluation"]["dense"]["ppl"],
             "eval_tokens": dense["evaluation"]["dense"]["tokens"], "checks": checks,
             "wall_s": time.perf_counter() - t0}
    if args.model == "wikitext":
        extra["model_training"] = json.loads((WIKITEXT_MODEL / "TRAINING.json").read_text())
    write_rows(args.out, f"quality_24_{args.model}", rows, extra=extra)
    print(markdown_24(rows, extra["dense_ppl"]))
    print(json.dumps(checks, indent=1))
    return 0


def markdown_24(rows: list[dict], dense_ppl: float) -> str:
    lines = [f"| 2:4 method (dense: {dense_ppl:.2f}) | perplexity | prune time (s) |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['pruned_ppl']:.2f} | {r['prune_time_s']:.1f} |")
    return "\n".join(lines)


ROW_LABEL = {"magnitude": "magnitude", "wanda": "Wanda", "ri": "RI", "ria": "RIA", "sparsegpt": "SparseGPT",
             "ria+rec": "RIA + reconstruction", "ria+atp": "RIA + ATP", "ria+owl": "RIA + OWL"}


def run_one(flags: list[str]) -> dict:
    from ria_kernels.cli import build_parser, run
    return run(build_parser().parse_args(flags + ["--quiet", "--device", "cpu", "--dtype", "float32"]))


def _method(row_name: str) -> str:
    """Table row of a run: ``ria+cp-2:4`` -> ``ria`` (channel permutation is a column)."""
    return row_name.rsplit("-", 1)[0].removesuffix("+cp")


def markdown(rows: list[dict], dense_ppl: float) -> str:
    cols = list(dict.fromkeys(r["column"] for r in rows))
    methods = list(dict.fromkeys(_method(r["name"]) for r in rows))
    cell = {(_method(r["name"]), r["column"]): r for r in rows}
    lines = [f"| method (dense: {dense_ppl:.2f}) | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        vals = [f"{cell[m, c]['pruned_ppl']:.2f}" if (m, c) in cell else "" for c in cols]
        lines.append(f"| {ROW_LABEL.get(m, m)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for quality_embedded.json")
    ap.add_argument("--only", help="comma-separated row names to run (default: all); see RUNS in this file")
    ap.add_argument("--render", metavar="JSON", help="print the Markdown table of an earlier run's JSON and exit")
    ap.add_argument("--suite", default="default", choices=["default", "2:4"],
                    help="default: the methods x sparsities table of the embedded model; 2:4: issue #23's table")
    ap.add_argument("--model", default="embedded", choices=["embedded", "wikitext"], help="--suite 2:4 only")
    ap.add_argument("--data", default="/work/shared/data/wikitext-2",
                    help="WikiText-2 folder (valid.txt, test.txt) for --model wikitext")
    args = ap.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
        if "checks" in data:
            print(markdown_24(data["rows"], data["dense_ppl"]))
        else:
            print(markdown(data["rows"], data["dense_ppl"]))
        return 0
    if args.suite == "2:4":
        return run_suite_24(args)
    if args.model != "embedded":
        ap.error("--model applies to --suite 2:4")
    runs = RUNS
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        unknown = wanted - {name for name, _, _ in RUNS}
        if unknown:
            ap.error(f"unknown row names {sorted(unknown)}; choose from {[n for n, _, _ in RUNS]}")
        runs = [r for r in RUNS if r[0] in wanted]
    from tqdm import tqdm
    t0 = time.perf_counter()
    dense = run_one(["--method", "magnitude", "--sparsity-ratio", "0.0"])["evaluation"]["dense"]["ppl"]
    rows = []
    for name, column, flags in tqdm(runs, desc="quality table", unit="run"):
        r = run_one(flags + ["--no-dense-eval"])
        lw = r["layerwise"] or {}  # the run report: docs/report_schema.md
        rows.append({"name": name, "column": column, "flags": " ".join(flags),
                     "pruned_ppl": r["evaluation"]["pruned"]["ppl"],
                     "actual_sparsity": r["pruning"]["actual_sparsity"], "prune_time_s": r["pruning"]["total_time_s"],
                     "beta": lw.get("beta"), "layer_sparsities": lw.get("layer_sparsities"),
                     "nsamples": r["calibration"]["nsamples"], "seqlen": r["calibration"]["seqlen"],
                     "eval_tokens": r["evaluation"]["tokens"]})
        tqdm.write(f"{name:24s} ppl {rows[-1]['pruned_ppl']:9.3f}  sparsity {rows[-1]['actual_sparsity']:.4f}")
    env = environment()
    env["command"] = "python " + " ".join(sys.argv)
    table = markdown(rows, dense)
    write_rows(args.out, "quality_embedded", rows, extra={"env": env, "dense_ppl": dense,
                                                          "wall_s": time.perf_counter() - t0})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
