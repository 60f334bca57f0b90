#!/usr/bin/env python3
"""Perplexity table of the pruning methods on the embedded default model (CPU, offline).

Each row is one ``ria-prune`` run (same code path as the CLI: ``ria_kernels.cli.run``)
on a fresh copy of the embedded model, calibrated on its shipped calibration text and
evaluated on its held-out evaluation text; the dense perplexity is measured once.
Writes ``<out>/quality_embedded.json`` (environment + one row per run) and prints a
Markdown table for the README.

    python benchmarks/quality_table.py --out benchmarks/results
    python benchmarks/quality_table.py --only ria-50,ria-2:4     # a subset, by row name
"""
from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    if args.render:
        import json
        data = json.loads(Path(args.render).read_text())
        print(markdown(data["rows"], data["dense_ppl"]))
        return 0
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
