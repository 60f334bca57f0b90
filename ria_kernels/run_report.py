"""The JSON report of one ``ria-prune`` run: its versioned schema and a small validator.

``SCHEMA`` is the machine-readable form of docs/report_schema.md (a test keeps the two in
step). A field spec is a type name (``"int"``, ``"number"`` (int or float, never bool),
``"str"``, ``"bool"``, ``"dict"`` (any JSON object), ``"any"``), a type name with ``"?"``
(may be ``null``), ``[spec]`` (a list of that), or a ``dict`` of named fields (an object
that must have exactly those keys; a key ending in ``"?"`` may be absent or null). Numbers are
numbers; a non-finite value (an overflowing perplexity) is written as ``null``.
"""
from __future__ import annotations

import math
import os
import platform
import sys
from typing import Any

from ._errors import RiaInputError

SCHEMA_VERSION = 1

_SOURCE = {"kind": "str", "path": "str?", "dataset": "str?", "sha256": "str?"}
_PPL_RUN = {"ppl": "number?", "windows": "int", "tokens": "int", "predicted_tokens": "int", "time_s": "number"}

SCHEMA: dict[str, Any] = {
    "schema_version": "int",
    "tool": {"name": "str", "argv": ["str"], "started_at": "str", "finished_at": "str"},
    "versions": {"ria_kernels": "str", "python": "str", "torch": "str", "triton": "str?", "transformers": "str",
                 "accelerate?": "str?"},
    "machine": {"platform": "str", "cpu_count": "int", "torch_threads": "int", "threads_source": "str",
                "device": "str", "device_name": "str?"},
    "model": {"source": "str", "family": "str", "num_layers": "int", "parameters": "int", "source_dtype": "str?",
              "dtype": "str", "max_position_embeddings": "int?"},
    "settings": {"method": "str", "sparsity_type": "str", "sparsity_ratio": "number", "n": "int?", "m": "int?",
                 "a": "number?", "per_output": "bool", "permute": "bool", "lsa": "bool?", "blocks": "int?",
                 "reconstruction": "bool", "reconstruction_kind?": "str?", "blocksize": "int?", "percdamp": "number?", "batch_size": "int",
                 "offload": "bool", "backend": "str?", "layerwise": "str", "beta": "number?",
                 "owl_lambda": "number?", "owl_m": "number?", "seed": "int", "nsamples": "int", "seqlen": "int",
                 "max_eval_windows": "int?", "eval_batch_size": "int?", "eval": "bool", "dense_eval": "bool", "sparse_inference": "bool",
                 "zero_shot_tasks": ["str"], "save": "str?", "save_dtype": "str?", "save_sparse": "str?", "json": "str?",
                 "overwrite": "bool", "threads": "int?", "device": "str", "dtype": "str"},
    "calibration": {"source": _SOURCE, "nsamples": "int", "seqlen": "int", "tokens": "int", "seed": "int"},
    "evaluation": {"source": _SOURCE, "seqlen": "int", "available_tokens": "int", "max_eval_windows": "int?",
                   "windows": "int", "tokens": "int", "dense?": _PPL_RUN, "pruned": _PPL_RUN,
                   "sparse_inference?": _PPL_RUN},
    "backends": {"score": "str?", "mask": "str?", "sparsegpt": "str?", "alps?": "str?", "device": "str", "lsa_solver": "str?",
                 "permutation_gain?": "str?", "sparse_linear?": "dict"},
    "layerwise": {"kind": "str", "beta": "number?", "beta_searched": "bool",
                  "search?": [{"beta": "number", "calib_ppl": "number?", "time_s": "number"}],
                  "owl_outlier_ratios?": ["number"], "layer_sparsities": ["number"], "time_s": "number"},
    "pruning": {"method": "str", "sparsity_type": "str?", "sparsity_ratio": "number?", "a": "number",
                "per_output": "bool", "family": "str", "nsamples": "int", "seqlen": "int", "reconstruction": "bool",
                "reconstruction_kind?": "str?", "permute": "bool", "layer_sparsities?": ["number"], "backend": "dict", "actual_sparsity": "number",
                "pruned_weights": "int", "total_weights": "int", "capture_time_s": "number",
                "total_time_s": "number", "stage_times_s?": "dict",
                "layers": [{"index": "int", "target_sparsity": "number", "actual_sparsity": "number",
                            "time_s": "number", "stats_time_s": "number", "permutation_time_s?": "number",
                            "linears": "dict"}],
                "permutations": ["str"], "permutation_stats": "dict",
                "permutation?": {"blocks": "int?", "blocks_used": ["int"], "lsa": "bool", "gain_backend": "str?",
                                 "lsa_solver": "str?", "problems": "int", "time_s": "number",
                                 "max_layer_time_s": "number?"}},
    "sparse_inference": {"linears": "int", "converted": "int", "memory_modes": "dict", "backends_used": "dict", "ran_sparse": "bool",
                         "note": "str", "convert_s": "number"},
    "zero_shot": "dict",
    "outputs": {"save": "str?", "save_sparse": "str?", "json": "str?"},
    "timings_s": "dict",
}
# sections that are null when the run did not do that part
OPTIONAL_SECTIONS = ("evaluation", "layerwise", "sparse_inference", "zero_shot")
LINEAR_FIELDS = {"sparsity": "number", "kept": "int", "total": "int", "time_s": "number",
                 # where a Hessian was collected (sparsegpt, alps, --reconstruction); absent otherwise
                 "output_error?": "number?", "iterations?": "int", "cg_iterations?": "int",
                 "support_change?": "number", "rho?": "number"}


def _type_ok(value, name: str) -> bool:
    if name == "any":
        return True
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if name == "str":
        return isinstance(value, str)
    if name == "bool":
        return isinstance(value, bool)
    if name == "dict":
        return isinstance(value, dict)
    raise ValueError(f"unknown schema type {name!r}")


def _check(value, spec, where: str, problems: list[str], nullable: bool = False) -> None:
    if value is None:
        if not nullable:
            problems.append(f"{where}: null where a value is required")
        return
    if isinstance(spec, str):
        base = spec.rstrip("?")
        if not _type_ok(value, base):
            problems.append(f"{where}: expected {base}, got {type(value).__name__} {value!r:.60}")
    elif isinstance(spec, list):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", problems)
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        keys = {k.rstrip("?"): k for k in spec}
        for key, raw in keys.items():
            sub = spec[raw]
            if key not in value:
                if not raw.endswith("?"):
                    problems.append(f"{where}.{key}: missing")
                continue
            nullable = (isinstance(sub, str) and sub.endswith("?")) or raw.endswith("?") or \
                (where == "report" and key in OPTIONAL_SECTIONS)
            _check(value[key], sub, f"{where}.{key}", problems, nullable=nullable)
        for key in value:
            if key not in keys:
                problems.append(f"{where}.{key}: not in schema version {SCHEMA_VERSION}")


def validate_report(report: dict) -> None:
    """RiaInputError listing every way ``report`` departs from :data:`SCHEMA` (none: returns)."""
    problems: list[str] = []
    if not isinstance(report, dict):
        raise RiaInputError(f"a report is a JSON object, got {type(report).__name__}")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise RiaInputError(f"schema_version must be {SCHEMA_VERSION}, got {report.get('schema_version')!r}")
    _check(report, SCHEMA, "report", problems)
    for layer in (report.get("pruning") or {}).get("layers") or []:
        for name, lin in (layer.get("linears") or {}).items():
            _check(lin, LINEAR_FIELDS, f"report.pruning.layers[{layer.get('index')}].linears.{name}", problems)
    for key, value in (report.get("timings_s") or {}).items():
        _check(value, "number", f"report.timings_s.{key}", problems)
    if problems:
        raise RiaInputError(f"report does not match schema {SCHEMA_VERSION}: " + "; ".join(problems))


def versions() -> dict[str, str | None]:
    """Versions of everything that decides the numbers of a run."""
    import torch
    import transformers

    from . import __version__
    out: dict[str, str | None] = {"ria_kernels": __version__, "python": platform.python_version(),
                                  "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        import accelerate
        out["accelerate"] = accelerate.__version__
    except ImportError:
        out["accelerate"] = None
    return out


def machine(device: str, threads_source: str) -> dict:
    import torch
    name = None
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device) if ":" in device else None)
    return {"platform": f"{platform.system()} {platform.machine()} ({sys.platform})", "cpu_count": os.cpu_count() or 1,
            "torch_threads": torch.get_num_threads(), "threads_source": threads_source, "device": device,
            "device_name": name}


__all__ = ["SCHEMA_VERSION", "SCHEMA", "validate_report", "versions", "machine"]
