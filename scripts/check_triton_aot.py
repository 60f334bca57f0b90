#!/usr/bin/env python3
"""AOT gate: compile every Triton launch the package really makes, for sm_80 and sm_90a,
under each installed Triton, and fail on a compile error, any register spill, or shared memory
over the arch's per-block limit (``SMEM_LIMIT``).

Discovery (no hand-kept kernel list): every module of the ``ria_kernels`` package is
imported (``pkgutil.walk_packages``); a module may define

    def aot_cases() -> Iterable[tuple[str, Callable[[], object]]]

each item a (label, zero-argument callable) that calls the module's PUBLIC launcher with a
representative configuration on CPU tensors (``backend="triton"``; big tensors made with
``torch.empty``). While a case runs, ``JITFunction.run`` (the path of every
``kernel[grid](...)``) is replaced by a recorder: it binds the arguments exactly as Triton
would for a CUDA target (signature, constexprs, 16-byte alignment attributes, num_warps,
num_stages) and the grid, and executes nothing. Launches are de-duplicated and each is
compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32))``;
``ptxas -v`` (the ptxas this Triton ships) gives registers and spills, ``cuobjdump -sass``
(same bin folder) the instruction mix.

    python3 scripts/check_triton_aot.py                          # this Triton + the Triton 3.6 venv (.ci/run's)
    python3 scripts/check_triton_aot.py --python /path/to/python  # add/replace interpreters (one process each)
    python3 scripts/check_triton_aot.py --worker out.json         # one interpreter only (used by the above)

Writes ``benchmarks/results/triton_aot.json`` and ``triton_aot.md`` (the table plus the
static bandwidth estimate, see ``estimate``). Exit status 1 on any compile error, spill or
case error; 0 otherwise. A module's ``aot_cases()`` covers every config its launch heuristic can
return, not hand-picked ones (e.g. ``ops/sparse24_mm.py``'s ``reachable_configs()``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
RESULTS = ROOT / "benchmarks" / "results"
# H100/H200 model for the static estimate (issue 10): DRAM 4.3 TB/s, 132 SMs x 4 issue/clk x 1.98 GHz.
DRAM_BPS = 4.3e12
SMS, ISSUE_PER_CLK, CLOCK_HZ = 132, 4, 1.98e9
LAUNCH_S = 2.5e-6  # per extra launch in a multi-kernel op (measured launch gaps are 2-4 us)


# --------------------------------------------------------------------------- parsing (pure, unit-tested)
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def parse_ptxas_log(text: str) -> dict:
    """Registers, barriers, static smem and spill bytes from ``ptxas -v`` output (one kernel)."""
    out = {"registers": None, "ptxas_barriers": 0, "ptxas_smem": 0, "stack": 0, "spill_stores": 0,
           "spill_loads": 0}
    m = _PTXAS_USED.search(text)
    if m:
        out["registers"] = int(m.group(1))
        out["ptxas_barriers"] = int(m.group(2) or 0)
        out["ptxas_smem"] = int(m.group(3) or 0)
    m = _PTXAS_SPILL.search(text)
    if m:
        out["stack"], out["spill_stores"], out["spill_loads"] = (int(g) for g in m.groups())
    return out


def _access_bits(opcode: str) -> int:
    parts = opcode.split(".")
    for p in parts[1:]:
        if p in ("128", "64"):
            return int(p)
        if p in ("U16", "S16"):
            return 16
        if p in ("U8", "S8"):
            return 8
    return 32


def sass_stats(sass: str) -> dict:
    """Instruction mix of one kernel's SASS (``cuobjdump -sass``): instruction count (NOPs
    excluded), barriers, shared-memory accesses, shuffles, local (spill) accesses, widest
    global load/store in bits."""
    ops = [m.group(1) for m in _SASS_LINE.finditer(sass)]
    ops = [o for o in ops if o != "NOP"]
    ldg = [o for o in ops if o.startswith("LDG")]
    stg = [o for o in ops if o.startswith("STG")]
    return {
        "sass_instructions": len(ops),
        "bar": sum(o.startswith("BAR") for o in ops),
        "shared_ops": sum(o.split(".")[0] in ("LDS", "STS", "LDSM", "ATOMS", "STSM") for o in ops),
        "shfl": sum(o.startswith("SHFL") for o in ops),
        "local_ops": sum(o.split(".")[0] in ("LDL", "STL") for o in ops),
        "ldg": len(ldg),
        "stg": len(stg),
        "widest_ldg": max((_access_bits(o) for o in ldg), default=0),
        "widest_stg": max((_access_bits(o) for o in stg), default=0),
    }


# shared memory one block may use (opt-in maximum), per arch: sm_80 163 KiB, sm_90 227 KiB. Triton
# compiles a kernel that needs more without complaint; it then fails at launch ("out of resources")
SMEM_LIMIT = {"sm_80": 166_912, "sm_90a": 232_448}


def problems(row: dict) -> list[str]:
    """Why a compiled row fails the gate (empty: it passes)."""
    if row.get("error"):
        return [f"compile error: {row['error'].splitlines()[0][:200]}"]
    bad = []
    if row["spill_stores"] or row["spill_loads"] or row["local_ops"]:
        bad.append(f"spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads, "
                   f"{row['local_ops']} local ops)")
    limit = SMEM_LIMIT.get(row.get("arch"))
    if limit is None and "arch" in row:
        bad.append(f"no shared-memory limit known for arch {row['arch']!r}")
    elif limit is not None and row.get("shared_bytes", 0) > limit:
        bad.append(f"shared memory {row['shared_bytes']} B over the {row['arch']} limit of {limit} B per block")
    return bad


# --------------------------------------------------------------------------- discovery and recording
@dataclass
class Launch:
    kernel: str
    arch: int
    jit: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: object
    uses: list = field(default_factory=list)  # (label, grid, bytes)

    def config(self) -> str:
        const = {self.jit.arg_names[k[0]]: getattr(v, "value", v) for k, v in self.constexprs.items()
                 if len(k) == 1 and not isinstance(getattr(v, "value", v), str)}
        const = {k: v for k, v in const.items() if not (v is None)}
        dtypes = sorted({v for v in self.signature.values() if isinstance(v, str) and v.startswith("*")})
        return (" ".join(f"{k}={v}" for k, v in const.items()) + f" w={self.options.num_warps}"
                + f" s={self.options.num_stages} " + ",".join(dtypes))


def discover_cases() -> tuple[list[tuple[str, str, Callable]], list[str]]:
    """(module, label, callable) for every aot_cases() item in the package, and import errors
    of modules that contain Triton kernels (a module that cannot be imported hides its kernels)."""
    sys.path.insert(0, str(ROOT))
    import ria_kernels
    cases, errors = [], []
    for info in pkgutil.walk_packages(ria_kernels.__path__, "ria_kernels."):
        try:
            mod = importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001
            spec = importlib.util.find_spec(info.name)
            src = Path(spec.origin).read_text() if spec and spec.origin and spec.origin.endswith(".py") else ""
            if "triton.jit" in src or "aot_cases" in src:
                errors.append(f"{info.name}: import failed: {type(exc).__name__}: {exc}")
            continue
        fn = getattr(mod, "aot_cases", None)
        if fn is None or getattr(fn, "__module__", None) != mod.__name__:
            continue
        for label, case in fn():
            cases.append((info.name, label, case))
    return cases, errors


def _tensor_bytes(values) -> int:
    import torch
    seen, total = set(), 0
    for v in values:
        if isinstance(v, torch.Tensor) and v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            total += v.numel() * v.element_size()
    return total


class Recorder:
    """Replaces ``JITFunction.run``: binds each launch for every target arch, records it, runs nothing."""

    def __init__(self, archs=ARCHS):
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        self.backends = {a: make_backend(GPUTarget("cuda", a, 32)) for a in archs}
        self.launches: dict[tuple, Launch] = {}
        self.label = ""
        self.count = 0

    def run(self, jit, *args, grid, warmup, **kwargs):
        from triton.runtime.jit import create_function_from_signature
        self.count += 1
        for arch, backend in self.backends.items():
            binder = create_function_from_signature(jit.signature, jit.params, backend)
            bound, spec, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = jit._pack_args(backend, dict(kwargs), bound, spec, options)
            g = grid(bound) if callable(grid) else grid
            g = tuple(int(x) for x in g) + (1,) * (3 - len(g))
            key = (jit.fn.__module__, jit.__name__, arch, repr(sorted(signature.items())),
                   repr(sorted((k, repr(v)) for k, v in constexprs.items())), repr(sorted(attrs.items())),
                   options.num_warps, options.num_stages)
            launch = self.launches.get(key)
            if launch is None:
                launch = self.launches[key] = Launch(f"{jit.fn.__module__.split('.')[-1]}.{jit.__name__}", arch,
                                                     jit, signature, constexprs, attrs, options)
            launch.uses.append((self.label, g, _tensor_bytes(bound.values())))
        return None

    @contextlib.contextmanager
    def installed(self):
        from triton.runtime.jit import JITFunction
        from ria_kernels import _backend
        original = JITFunction.run
        recorder = self

        def run(jit, *args, grid, warmup, **kwargs):
            return recorder.run(jit, *args, grid=grid, warmup=warmup, **kwargs)

        JITFunction.run = run
        try:
            with _backend.aot_recording():
                yield self
        finally:
            JITFunction.run = original


def _tool(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path)


def compile_launch(launch: Launch) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    row = {"triton": triton.__version__, "arch": f"sm_{launch.arch}{'a' if launch.arch == 90 else ''}",
           "kernel": launch.kernel, "config": launch.config(), "num_warps": launch.options.num_warps,
           "labels": sorted({u[0] for u in launch.uses}),
           "uses": [{"label": l, "grid": list(g), "bytes": b} for l, g, b in launch.uses]}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            src = ASTSource(launch.jit, launch.signature, launch.constexprs, launch.attrs)
            ck = triton.compile(src, target=GPUTarget("cuda", launch.arch, 32), options=launch.options.__dict__)
    except Exception as exc:  # noqa: BLE001 - every compile failure is a gate failure, reported
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["compile_s"] = time.perf_counter() - t0
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row.update(parse_ptxas_log(log.getvalue()))
    md = ck.metadata
    row["shared_bytes"] = int(getattr(md, "shared", 0) or 0)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)
    row.update(sass_stats(sass))
    return row


def worker(out_path: str, only: str | None = None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ria_aot_cache_")  # fresh: ptxas always runs
    import triton
    t0 = time.perf_counter()
    cases, errors = discover_cases()
    if only:
        cases = [c for c in cases if only in c[1]]
    rec = Recorder()
    case_rows = []
    with rec.installed():
        for module, label, case in cases:
            rec.label = label
            before = rec.count
            try:
                case()
                err = None if rec.count > before else "no Triton launch recorded (did the launcher fall back?)"
            except Exception as exc:  # noqa: BLE001
                err = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            case_rows.append({"module": module, "label": label, "launches": rec.count - before, "error": err})
    t_rec = time.perf_counter() - t0
    rows = [compile_launch(l) for l in sorted(rec.launches.values(), key=lambda l: (l.kernel, l.arch, l.config()))]
    import resource
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))  # CPU seconds incl. ptxas/cuobjdump: the load-independent cost
    result = {"triton": triton.__version__, "python": sys.executable, "record_s": round(t_rec, 1),
              "total_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu, 1), "import_errors": errors, "cases": case_rows,
              "rows": rows}
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 0


# --------------------------------------------------------------------------- static estimate
# op-level estimates: (name, case label, bytes that must move per element, elements, note)
ESTIMATE_CASES = (
    ("fused RIA 2:4 prune fp16 8192x28672", "fused_prune ria 2:4 fp16 8192x28672", 7, 8192 * 28672,
     "2 reads of W (sums + select) + 1 write + 1 mask byte = 7 B/elem; target >= 80% of copy"),
    ("fused RIA 4:8 prune fp16 8192x28672", "fused_prune ria 4:8 fp16 8192x28672", 7, 8192 * 28672,
     "as 2:4; target >= 60% of copy"),
    ("fused RIA 8:16 prune fp16 8192x28672", "fused_prune ria 8:16 fp16 8192x28672", 7, 8192 * 28672, "as 2:4"),
    ("fused RIA 2:4 prune fp16 4096x4096", "fused_prune ria 2:4 fp16 4096x4096", 7, 4096 * 4096, "as 2:4"),
    ("N:M top-k 2:4 fp32 8192x28672", "nm_topk 2:4 fp32 8192x28672", 5 + 1, 8192 * 28672,
     "read f32 score + mask byte + f32 sum per group of 4 (1 B/elem)"),
    ("N:M top-k 8:16 fp32 8192x28672", "nm_topk 8:16 fp32 8192x28672", 5.25, 8192 * 28672, "f32 sum per 16"),
    ("RMSNorm permuted fp16 8192x8192", "rms_norm perm fp16 8192x8192", 4, 8192 * 8192,
     "read x + write y; + int16 perm per row from L2 (16 KB/row, 134 MB of L2 reads) and the row through "
     "shared memory for tl.gather (in the SASS count); target <= 1.05x unpermuted"),
    ("RMSNorm unpermuted fp16 8192x8192", "rms_norm plain fp16 8192x8192", 4, 8192 * 8192, "read x + write y"),
    ("RMSNorm permuted+residual fp16 8192x8192", "rms_norm perm+res fp16 8192x8192", 8, 8192 * 8192,
     "read x, r + write y, h"),
    ("RMSNorm unpermuted+residual fp16 8192x8192", "rms_norm plain+res fp16 8192x8192", 8, 8192 * 8192,
     "read x, r + write y, h"),
)


def blocks_per_sm(registers: int, num_warps: int, shared: int) -> int:
    threads = 32 * num_warps
    regs = max(registers or 32, 1)
    by_regs = 65536 // (((regs + 7) // 8 * 8) * threads)
    by_threads = 2048 // threads
    by_smem = (228 * 1024) // shared if shared else 32
    return max(0, min(by_regs, by_threads, by_smem, 32))


def launch_estimate(row: dict, use: dict) -> dict:
    """One launch: DRAM time of its tensor bytes vs issue time of its SASS (straight-line
    kernels: static count = instructions issued per warp), with whole-wave quantisation."""
    blocks = math.prod(use["grid"])
    per_sm = blocks_per_sm(row["registers"], row["num_warps"], row["shared_bytes"])
    waves = blocks / (SMS * max(per_sm, 1))
    dram_s = use["bytes"] / DRAM_BPS
    issue_s = row["sass_instructions"] * row["num_warps"] * blocks / (SMS * ISSUE_PER_CLK * CLOCK_HZ)
    if blocks < SMS:      # under one block per SM: only that many SMs pull from DRAM
        tail = SMS / blocks
    elif waves < 4:       # few waves: the last partial wave costs a full one
        tail = math.ceil(waves) / waves
    else:
        tail = 1.0
    return {"kernel": row["kernel"], "blocks": blocks, "blocks_per_sm": per_sm, "waves": round(waves, 2),
            "bytes": use["bytes"], "dram_us": dram_s * 1e6, "issue_us": issue_s * 1e6,
            "time_us": max(dram_s, issue_s) * tail * 1e6,
            "bound": "issue" if issue_s > dram_s else "dram"}


def estimate(rows: list[dict], triton_version: str, arch: str = "sm_90a") -> list[dict]:
    """The static prediction per op at the benchmark shapes (see ESTIMATE_CASES)."""
    sel = [r for r in rows if r["triton"] == triton_version and r["arch"] == arch and not r.get("error")]
    out = []
    for name, label, bpe, elems, note in ESTIMATE_CASES:
        launches = [launch_estimate(r, u) for r in sel for u in r["uses"] if u["label"] == label]
        if not launches:
            continue
        t = sum(l["time_us"] for l in launches) + LAUNCH_S * 1e6 * (len(launches) - 1)
        must = bpe * elems
        out.append({"op": name, "triton": triton_version, "arch": arch, "must_move_bytes": must,
                    "moved_bytes": sum(l["bytes"] for l in launches), "predicted_us": round(t, 1),
                    "pct_copy": round(100 * (must / DRAM_BPS * 1e6) / t, 1),
                    "launches": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in l.items()}
                                 for l in launches], "note": note})
    return out


# --------------------------------------------------------------------------- report
COLS = ("triton", "arch", "kernel", "config", "registers", "spill_stores", "spill_loads", "shared_bytes",
        "sass_instructions", "bar", "shared_ops", "shfl", "widest_ldg", "widest_stg", "compile_s")


def markdown(results: list[dict], estimates: list[dict]) -> str:
    lines = ["# Triton AOT gate (`scripts/check_triton_aot.py`)", "",
             "Every launch recorded from the modules' `aot_cases()`, compiled ahead of time on a CPU "
             "machine (no GPU involved). `spill` = ptxas spill stores/loads (bytes); `smem` = shared memory "
             "Triton allocates (bytes); `SASS` = instructions in the kernel (NOPs excluded; the kernels are "
             "straight-line code, so this is what every warp issues); `BAR`/`LDS+STS`/`SHFL` = barriers, "
             "shared-memory accesses and shuffles in the SASS; widest global load/store in bits.", ""]
    for res in results:
        lines.append(f"Triton {res['triton']}: {len(res['rows'])} compiled kernels from {len(res['cases'])} cases, "
                     f"{res['total_s']} s wall, {res.get('cpu_s')} s CPU (one worker process per Triton, in parallel)")
    lines += ["", "| Triton | arch | kernel | config | regs | spill | smem | SASS | BAR | LDS+STS | SHFL | LDG bits "
              "| STG bits |", "|" + "---|" * 13]
    for res in results:
        for r in res["rows"]:
            if r.get("error"):
                lines.append(f"| {r['triton']} | {r['arch']} | {r['kernel']} | {r['config']} | ERROR: "
                             f"{r['error'].splitlines()[0][:80]} |||||||||")
                continue
            lines.append(f"| {r['triton']} | {r['arch']} | {r['kernel']} | {r['config']} | {r['registers']} | "
                         f"{r['spill_stores'] + r['spill_loads']} | {r['shared_bytes']} | {r['sass_instructions']} | "
                         f"{r['bar']} | {r['shared_ops']} | {r['shfl']} | {r['widest_ldg']} | {r['widest_stg']} |")
    lines += ["", "## Static bandwidth estimate (H100/H200 model)", "",
              f"Model: DRAM {DRAM_BPS / 1e12:.1f} TB/s; issue {SMS} SMs x {ISSUE_PER_CLK} warp-instructions/clk x "
              f"{CLOCK_HZ / 1e9:.2f} GHz. Per launch: DRAM time = bytes of its tensor arguments (each read or "
              "written once) / bandwidth; issue time = SASS instructions x warps x blocks / issue rate; the "
              "launch takes the larger, times ceil(waves)/waves when it runs under 4 waves; "
              f"+{LAUNCH_S * 1e6:.1f} us per extra launch. `% copy` = bytes that must move / 4.3 TB/s over the "
              "predicted time (what bench_kernels.py's `pct_copy` measures).", "",
              "| op | Triton | must move (MB) | moved (MB) | predicted us | % copy | per launch (kernel: waves, "
              "DRAM us / issue us) |", "|---|---|---|---|---|---|---|"]
    for e in estimates:
        per = "; ".join(f"{l['kernel']}: {l['waves']} waves, {l['dram_us']}/{l['issue_us']}" for l in e["launches"])
        lines.append(f"| {e['op']} | {e['triton']} | {e['must_move_bytes'] / 1e6:.0f} | "
                     f"{e['moved_bytes'] / 1e6:.0f} | {e['predicted_us']} | {e['pct_copy']} | {per} |")
    return "\n".join(lines) + "\n"


def default_pythons() -> list[str]:
    pys = [sys.executable]
    cached = Path(os.environ.get("RIA_TRITON36_VENV", Path.home() / ".cache" / "ria-kernels" / "venv-triton36"))
    for cand in (cached / "bin" / "python", Path("/work/venvs/triton36/bin/python")):
        if cand.exists():
            pys.append(str(cand))
            break
    return pys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", metavar="OUT_JSON", help="record + compile in this interpreter only")
    ap.add_argument("--python", action="append", help="interpreters to run (default: this one + the 3.6 venv)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for triton_aot.json / triton_aot.md")
    ap.add_argument("--only", help="only cases whose label contains this (iterating on one kernel)")
    ap.add_argument("--report-only", metavar="TRITON_AOT_JSON",
                    help="recompute the checks, table and estimate from a saved triton_aot.json (no compiling)")
    ap.add_argument("--require", type=int, default=1, help="fail unless at least this many interpreters ran")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.only)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        return report(saved["results"], list(saved.get("failures", [])), args)
    pythons = args.python or default_pythons()
    tmp = Path(tempfile.mkdtemp(prefix="ria_aot_"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    procs = [(py, tmp / f"w{i}.json", subprocess.Popen([py, __file__, "--worker", str(tmp / f"w{i}.json")]
                                                       + (["--only", args.only] if args.only else []),
                                                       env=env, cwd=ROOT)) for i, py in enumerate(pythons)]
    results, failed = [], []
    for py, out, p in procs:
        if p.wait() != 0 or not out.exists():
            failed.append(f"{py}: worker exited {p.returncode}")
            continue
        results.append(json.loads(out.read_text()))
    return report(results, failed, args)


def report(results: list[dict], failed: list[str], args) -> int:
    """Checks, table, estimate and the two result files from the workers' results."""
    failed = [f for f in failed if not f.startswith("Triton ")]  # re-derived below
    for res in results:
        failed += [f"Triton {res['triton']}: {e}" for e in res["import_errors"]]
        failed += [f"Triton {res['triton']}: case {c['label']}: {c['error']}" for c in res["cases"] if c["error"]]
        for r in res["rows"]:
            failed += [f"Triton {r['triton']} {r['arch']} {r['kernel']} [{r['config']}]: {p}" for p in problems(r)]
    if len(results) < args.require:
        failed.append(f"only {len(results)} Triton installs ran, {args.require} required")
    estimates = [e for res in results for e in estimate(res["rows"], res["triton"])]
    hdr = f"{'triton':7s} {'arch':6s} {'kernel':34s} {'regs':>4s} {'spill':>5s} {'smem':>6s} {'SASS':>5s} " \
          f"{'BAR':>3s} {'LDS/STS':>7s} {'SHFL':>4s} {'LDG':>3s} {'STG':>3s}  config"
    print(hdr)
    for res in results:
        for r in res["rows"]:
            if r.get("error"):
                print(f"{r['triton']:7s} {r['arch']:6s} {r['kernel']:34s} ERROR {r['error'].splitlines()[0][:120]}")
                continue
            print(f"{r['triton']:7s} {r['arch']:6s} {r['kernel']:34s} {r['registers']:4d} "
                  f"{r['spill_stores'] + r['spill_loads']:5d} {r['shared_bytes']:6d} {r['sass_instructions']:5d} "
                  f"{r['bar']:3d} {r['shared_ops']:7d} {r['shfl']:4d} {r['widest_ldg']:3d} {r['widest_stg']:3d}  "
                  f"{r['config']}")
    print("\nstatic estimate (sm_90a):")
    for e in estimates:
        print(f"  Triton {e['triton']}  {e['op']:44s} {e['predicted_us']:8.1f} us  {e['pct_copy']:5.1f}% of copy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_aot.json").write_text(json.dumps({"results": results, "estimates": estimates,
                                                     "failures": failed}, indent=1))
    (out / "triton_aot.md").write_text(markdown(results, estimates))
    print(f"wrote {out / 'triton_aot.json'} and {out / 'triton_aot.md'}")
    for f in failed:
        print(f"AOT GATE FAILURE: {f}")
    print("AOT gate: " + ("FAILED" if failed else f"passed ({len(results)} Triton installs)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
