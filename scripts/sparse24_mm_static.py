#!/usr/bin/env python3
"""Static (no GPU) estimate of the sparse24_mm Triton kernel vs a dense fp16 GEMM, per token bucket.

Writes ``benchmarks/results/sparse24_mm_static.md`` (+ ``.json``) from the CURRENT kernel and
launch heuristic: the launches ``ria_kernels.ops.sparse24_mm.sparse24_mm`` really makes (recorded
with the AOT gate's recorder, nothing runs), each compiled ahead of time on this CPU with the
installed Triton for the chosen arch (``ptxas -v``: registers, spills; ``cuobjdump -sass``: the
K loop's instruction mix), then a roofline-style model per (shape, T):

- DRAM: compressed weight (0.5625x dense) + x + y + the split-K fp32 partials (written and read
  back) at the GPU's DRAM bandwidth; while fewer programs than SMs run, only that many SMs pull;
- issue: every SM issues 4 warp-instructions per clock; the K loop's SASS count x K-steps x warps
  of the programs the busiest SM runs (programs spread round-robin: ceil(programs / SMs) each);
- integer/logic pipe (the expansion: LOP3, SEL, ISETP, SHF, SGXT, PRMT, IADD3, R2P, P2R, LEA,
  MOV): 2 warp-instructions per clock per SM (64 lanes on sm_80 / sm_90);
- IMAD (address arithmetic and the shifts ptxas writes as IMAD.SHL / IMAD.U32): the fmaheavy
  pipe, 2 warp-instructions per clock per SM;
- tensor cores: the dense MMA the kernel issues after expanding (token tile padded to 16) at the
  GPU's dense fp16 peak;
- the kernel takes the largest of the five. Dense reference: an IDEAL dense GEMM, max(dense bytes /
  DRAM bandwidth, 2 T N K / dense peak), so the ratio is a lower bound on what a perfect kernel
  would show against a perfect cuBLAS, and NOT a measurement.

    python3 scripts/sparse24_mm_static.py                       # sm_90a, H200 model, writes the .md
    python3 scripts/sparse24_mm_static.py --gpu h100 --out /tmp/x
    python3 scripts/sparse24_mm_static.py --arch 80 --gpu a100 --out /tmp/a100
    python3 scripts/sparse24_mm_static.py --shapes 4096x4096 --tokens 1,16 --print-only
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# GPU models: DRAM B/s, SMs, sustained SM clock under load (Hz), dense fp16 tensor peak (FLOP/s)
GPUS = {
    "h200": dict(name="H200 SXM", dram=4.8e12, sms=132, clock=1.755e9, mma=989e12),
    "h100": dict(name="H100 SXM", dram=3.35e12, sms=132, clock=1.755e9, mma=989e12),
    "a100": dict(name="A100 SXM 80GB", dram=2.04e12, sms=108, clock=1.41e9, mma=312e12),
}
ISSUE_PER_CLK = 4   # warp-instructions per clock per SM (4 schedulers)
ALU_PER_CLK = 2     # integer/logic warp-instructions per clock per SM (64 lanes)
FMA_HEAVY_PER_CLK = 2  # IMAD (the fmaheavy pipe, 16 lanes per SM partition) warp-instructions per clock per SM
ALU_OPS = {"LOP3", "SEL", "ISETP", "SHF", "SGXT", "PRMT", "IADD3", "R2P", "P2R", "LEA", "MOV", "BFE", "BFI",
           "FSEL", "IABS", "IMNMX", "VIADD"}
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (5120, 5120), (13824, 5120), (5120, 13824), (8192, 8192),
          (1024, 8192), (28672, 8192), (8192, 28672))
TOKENS = (1, 4, 16, 64, 256, 1024)
FOCUS = ((4096, 4096), (8192, 28672))


def loop_mix(sass: str) -> tuple[int, collections.Counter]:
    """Instruction count (NOPs excluded) and opcode mix of the largest loop (the K loop): the
    span between the backward branch with the longest reach and its target."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,5})\*/\s+(@!?U?P[0-9T] )?([A-Z0-9_]+)\S*\s*(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3), m.group(4)))
    best = (0, -1)
    for addr, op, rest in ins:
        t = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if t and int(t.group(1), 16) < addr and addr - int(t.group(1), 16) > best[1] - best[0]:
            best = (int(t.group(1), 16), addr)
    body = [op for addr, op, _ in ins if best[0] <= addr <= best[1] and op != "NOP"]
    return len(body), collections.Counter(body)


def blocks_per_sm(registers: int, warps: int, smem: int, arch: int) -> int:
    threads = 32 * warps
    by_regs = 65536 // (((max(registers, 1) + 7) // 8 * 8) * threads)
    by_smem = SMEM_PER_SM[arch] // smem if smem else 32
    return max(0, min(by_regs, 2048 // threads, by_smem, 32))


def record(shapes, tokens, arch: int):
    """{launch key: Launch} for fp16 launches of sparse24_mm at shapes x tokens (no bias)."""
    import torch
    import check_triton_aot as gate
    from ria_kernels.ops import sparse24_mm as S
    rec = gate.Recorder((arch,))
    with rec.installed():
        for n, k in shapes:
            for t in tokens:
                rec.label = f"{n}x{k} T={t}"
                S._aot_call(t, n, k, torch.float16, False)()
    return rec.launches


def compile_one(launch) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import check_triton_aot as gate
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        ck = triton.compile(ASTSource(launch.jit, launch.signature, launch.constexprs, launch.attrs),
                            target=GPUTarget("cuda", launch.arch, 32), options=launch.options.__dict__)
    row = gate.parse_ptxas_log(log.getvalue())
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([gate._tool("cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)
    n, mix = loop_mix(sass)
    row.update(shared=int(getattr(ck.metadata, "shared", 0) or 0), loop=n, mix=dict(mix.most_common()),
               alu=sum(v for op, v in mix.items() if op in ALU_OPS), imad=mix.get("IMAD", 0), compile_s=round(time.perf_counter() - t0, 1))
    return row


def model(t: int, n: int, k: int, cfg, grid, comp: dict, gpu: dict, arch: int) -> dict:
    from ria_kernels.ops.sparse24_mm import launch_grid
    (gn, gs, gt), kps = launch_grid(t, n, k, cfg)
    programs = gn * gs * gt
    steps = kps // cfg.block_k                       # K-steps of a full split
    w_bytes = n * k // 2 * 2 + n * ((k + 7) // 8)
    xy = 2 * t * k + 2 * t * n
    partial = 2 * gs * t * n * 4 if gs > 1 else 0
    kernel_bytes = w_bytes + xy + partial
    sms = gpu["sms"]
    per_sm = math.ceil(programs / sms)
    warp_instr = per_sm * steps * comp["loop"] * cfg.num_warps
    alu_instr = per_sm * steps * comp["alu"] * cfg.num_warps
    imad_s = per_sm * steps * comp["imad"] * cfg.num_warps / (FMA_HEAVY_PER_CLK * gpu["clock"])
    issue_s = warp_instr / (ISSUE_PER_CLK * gpu["clock"])
    alu_s = alu_instr / (ALU_PER_CLK * gpu["clock"])
    dram_s = kernel_bytes / gpu["dram"] * (sms / programs if programs < sms else 1.0)
    mma_s = 2 * (gt * cfg.block_t) * n * k / gpu["mma"]
    bounds = {"dram": dram_s, "issue": issue_s, "alu": alu_s, "imad": imad_s, "mma": mma_s}
    kernel_s = max(bounds.values())
    dense_bytes = 2 * n * k + xy
    dense_s = max(dense_bytes / gpu["dram"], 2 * t * n * k / gpu["mma"])
    return dict(T=t, N=n, K=k, config=list(cfg), grid=[gn, gs, gt], programs=programs,
                programs_per_sm=round(programs / sms, 2),
                blocks_per_sm=blocks_per_sm(comp["registers"], cfg.num_warps, comp["shared"], arch),
                dense_bytes=dense_bytes, kernel_bytes=kernel_bytes, partial_bytes=partial,
                x_l2_bytes=gn * 2 * t * k,
                bounds_us={b: round(v * 1e6, 2) for b, v in bounds.items()}, bound=max(bounds, key=bounds.get),
                kernel_us=round(kernel_s * 1e6, 2), dense_us=round(dense_s * 1e6, 2),
                speedup=round(dense_s / kernel_s, 2))


def cfg_label(cfg) -> str:
    s = f"{cfg.block_n}x{cfg.block_t}x{cfg.block_k}, {cfg.num_warps} warps, {cfg.num_stages} stages"
    cap = getattr(cfg, "maxnreg", None)  # (configs before the register cap have no such field)
    return s + (f", maxnreg {cap}" if cap else "")


def markdown(res: dict) -> str:
    g = res["gpu"]
    L = ["# sparse24_mm: a static estimate per token bucket (NOT a measurement)", "",
         f"Generated {res['date']} by `{res['command']}` on a CPU machine (load average {res['load']}), "
         f"Triton {res['triton']}, target {res['target']}, commit {res['commit']}. Nothing here ran on a GPU; "
         "no number is a GPU timing. `benchmarks/bench_decode.py` measures the kernel on a GPU.", "",
         "Every launch below is what `ria_kernels.ops.sparse24_mm.sparse24_mm` makes for an fp16 "
         "`[T, K] x [N, K]^T` without bias (run-time T and split-K from `launch_config` / "
         "`launch_grid`), recorded with the AOT gate's recorder and compiled ahead of time; "
         "registers and spills from `ptxas -v`, the K loop's SASS from `cuobjdump -sass`.", "",
         "## 1. Compiled kernels (one per distinct config)", "",
         "| config (BN x BT x BK, warps, stages, cap) | variant | regs | spills | smem (B) | blocks/SM | "
         "K-loop SASS | dense elems / thread / step | SASS / elem | int/logic / elem | top opcodes |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for c in res["compiled"]:
        elems = c["block_n"] * c["block_k"] / (32 * c["num_warps"])
        top = ", ".join(f"{op} {v}" for op, v in list(c["mix"].items())[:8])
        key = (c["config"], c["variant"], c["registers"], c["loop"], c["shared"])
        if key in seen:  # compiles that differ only in Triton's integer specialisations (e.g. N % 16)
            continue
        seen.add(key)
        L.append(f"| {c['config']} | {c['variant']} | {c['registers']} | {c['spill_stores']}/{c['spill_loads']} | "
                 f"{c['shared']} | {c['blocks_per_sm']} | {c['loop']} | {elems:.0f} | {c['loop'] / elems:.2f} | "
                 f"{c['alu'] / elems:.2f} | {top} |")
    cmp = res.get("compare")
    if cmp:
        L += ["", f"Kernels of {cmp['source']} (same script, same model):", "",
              "| config | variant | regs | K-loop SASS | SASS / elem | int/logic / elem |", "|---|---|---|---|---|---|"]
        seen = set()
        for c in cmp["compiled"]:
            elems = c["block_n"] * c["block_k"] / (32 * c["num_warps"])
            key = (c["config"], c["variant"], c["registers"], c["loop"])
            if key in seen:
                continue
            seen.add(key)
            L.append(f"| {c['config']} | {c['variant']} | {c['registers']} | {c['loop']} | {c['loop'] / elems:.2f} | "
                     f"{c['alu'] / elems:.2f} |")
    L += ["", f"## 2. Per token bucket vs an ideal dense GEMM ({g['name']} model)", "",
          f"Model: DRAM {g['dram'] / 1e12:.2f} TB/s, {g['sms']} SMs at {g['clock'] / 1e9:.3f} GHz, "
          f"{ISSUE_PER_CLK} warp-instructions/clk/SM issue, {ALU_PER_CLK} integer/logic and {FMA_HEAVY_PER_CLK} IMAD "
          "warp-instructions/clk/SM, "
          f"dense fp16 tensor peak {g['mma'] / 1e12:.0f} TFLOPS. Kernel time = max(DRAM, issue, int/logic, IMAD, MMA) "
          "(see the script's docstring); dense = max(dense bytes / DRAM, 2TNK / peak), an ideal dense GEMM. "
          "`bound` names the limit that sets the kernel time.", ""]
    for focus in (True, False):
        rows = [r for r in res["estimates"] if ((r["N"], r["K"]) in FOCUS) == focus]
        if not rows:
            continue
        cmp = res.get("compare")
        extra_h = f" {cmp['source']}: kernel us / dense ratio |" if cmp else ""
        L += [("### LLaMA 4096x4096 and 8192x28672" if focus else "### Other LLaMA-2 shapes"), "",
              "| N x K | T | config | grid (N tiles, splits, T tiles) | programs / SM | DRAM us | issue us | "
              "int/logic us | IMAD us | MMA us | bound | kernel us | ideal dense us | dense / kernel |" + extra_h,
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cmp else "")]
        for r in rows:
            b = r["bounds_us"]
            extra = ""
            if cmp:
                o = cmp["estimates"].get(f"{r['N']}x{r['K']} T={r['T']}")
                extra = f" {o['kernel_us']} / {o['speedup']} ({o['bound']}) |" if o else " - |"
            L.append(f"| {r['N']}x{r['K']} | {r['T']} | {r['config_label']} | {tuple(r['grid'])} | "
                     f"{r['programs_per_sm']} | {b['dram']} | {b['issue']} | {b['alu']} | {b['imad']} | {b['mma']} | {r['bound']} | "
                     f"{r['kernel_us']} | {r['dense_us']} | **{r['speedup']}** |" + extra)
        L.append("")
    L += ["## 3. Bytes", "",
          "Compressed fp16 weight: values `N*K/2*2` + metadata `N*K/8` bytes = 0.5625x dense, so the "
          "memory-bound ceiling is 1/0.5625 = **1.78x dense**. Decode (T <= 64) reads every weight byte once "
          "(one token tile); x is re-read by each of the `cdiv(N, BLOCK_N)` row-tile programs, from L2; split-K "
          "adds `2*split*T*N*4` bytes of fp32 partials (written, then read back by the last split).", "",
          "| N x K | T | dense W+x+y (MB) | kernel moves (MB) | of which fp32 partials (MB) | dense / kernel bytes | "
          "x re-read from L2 (MB) |", "|---|---|---|---|---|---|---|"]
    for r in res["estimates"]:
        if r["T"] > 64:
            continue
        L.append(f"| {r['N']}x{r['K']} | {r['T']} | {r['dense_bytes'] / 1e6:.1f} | {r['kernel_bytes'] / 1e6:.1f} | "
                 f"{r['partial_bytes'] / 1e6:.1f} | {r['dense_bytes'] / r['kernel_bytes']:.2f} | "
                 f"{r['x_l2_bytes'] / 1e6:.1f} |")
    L += ["", "## 4. Reading", "", *res.get("notes", [])]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=(80, 90), help="compile target (90 = sm_90a)")
    ap.add_argument("--gpu", default="h200", choices=sorted(GPUS), help="GPU model of the estimate")
    ap.add_argument("--shapes", default=None, help="NxK,NxK,... (default: the LLaMA-2 linears)")
    ap.add_argument("--tokens", default=None, help="T,T,... (default 1,4,16,64,256,1024)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for sparse24_mm_static.md/json")
    ap.add_argument("--print-only", action="store_true", help="print the estimate, write nothing")
    ap.add_argument("--json", default=None, help="also write the results JSON here (e.g. of an older commit)")
    ap.add_argument("--compare", default=None, metavar="JSON",
                    help="a results JSON of another commit (--json there): its kernel time and ratio as columns")
    ap.add_argument("--compare-label", default=None, help="how the table names --compare (e.g. its commit)")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ria_s24_static_")  # fresh: ptxas always runs
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from ria_kernels.ops import sparse24_mm as S
    shapes = SHAPES if not args.shapes else tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    tokens = TOKENS if not args.tokens else tuple(int(v) for v in args.tokens.split(","))
    gpu = GPUS[args.gpu]
    launches = record(shapes, tokens, args.arch)
    compiled, by_label = [], {}
    for launch in sorted(launches.values(), key=lambda l: l.config()):
        comp = compile_one(launch)
        const = {launch.jit.arg_names[k[0]]: getattr(v, "value", v) for k, v in launch.constexprs.items() if len(k) == 1}
        label0 = launch.uses[0][0]
        n0, k0 = (int(v) for v in label0.split()[0].split("x"))
        t0 = int(label0.split("T=")[1])
        cfg = S.launch_config(t0, n0, k0, gpu["sms"], __import__("torch").float16)
        variant = ("split-K" if const.get("USE_SPLIT") else "no split") + (", ragged K" if not const.get("EVEN_K") else "")
        comp.update(config=cfg_label(cfg), variant=variant, block_n=cfg.block_n, block_k=cfg.block_k,
                    num_warps=cfg.num_warps,
                    blocks_per_sm=blocks_per_sm(comp["registers"], cfg.num_warps, comp["shared"], args.arch),
                    labels=sorted({u[0] for u in launch.uses}))
        compiled.append(comp)
        print(f"compiled {comp['config']} [{variant}]: {comp['registers']} regs, spills "
              f"{comp['spill_stores']}/{comp['spill_loads']}, smem {comp['shared']}, K loop {comp['loop']} SASS "
              f"({comp['alu']} int/logic), {comp['compile_s']} s", flush=True)
        for u in launch.uses:
            by_label[u[0]] = comp
    import torch
    estimates = []
    for n, k in shapes:
        for t in tokens:
            cfg = S.launch_config(t, n, k, gpu["sms"], torch.float16)
            comp = by_label[f"{n}x{k} T={t}"]
            r = model(t, n, k, cfg, None, comp, gpu, args.arch)
            r["config_label"] = cfg_label(cfg)
            estimates.append(r)
            print(f"{n}x{k} T={t:5d}: {r['config_label']}, grid {tuple(r['grid'])}, {r['bound']}-bound, "
                  f"kernel {r['kernel_us']} us vs ideal dense {r['dense_us']} us -> {r['speedup']}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(compiled=compiled, estimates=estimates), indent=1))
    if args.print_only:
        return 0
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ria_kernels"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (+ uncommitted kernel changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    res = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               command="python3 scripts/sparse24_mm_static.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
               load=" ".join(f"{v:.2f}" for v in os.getloadavg()), triton=triton.__version__,
               target=f"sm_{args.arch}{'a' if args.arch == 90 else ''}", commit=commit, host=platform.node(),
               gpu=gpu, compiled=compiled, estimates=estimates, notes=NOTES)
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        res["compare"] = dict(source=args.compare_label or args.compare, compiled=old["compiled"],
                              estimates={f"{r['N']}x{r['K']} T={r['T']}": r for r in old["estimates"]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sparse24_mm_static.json").write_text(json.dumps(res, indent=1))
    (out / "sparse24_mm_static.md").write_text(markdown(res))
    print(f"wrote {out / 'sparse24_mm_static.md'} and .json")
    return 0


NOTES = [
    "- The model ignores latency: it assumes enough loads in flight (3 stages of async copies per block, "
    "`blocks/SM` blocks per SM) and perfect overlap of issue, DRAM and MMA, so each row is an optimistic "
    "kernel time; the dense side is an ideal GEMM too.",
    "- Decode (T <= 64) is limited by instruction issue / the integer pipe wherever the row says `issue` "
    "or `alu`: the in-register expansion, not DRAM, sets the ceiling (see the design note "
    "`one-copy-24-format.md` section 2(a)); the `mma.sp` kernel of issue #22 item 3 removes it.",
    "- Prefill (T >= 256) re-expands each weight tile once per token tile, so its expansion cost grows with "
    "T / BLOCK_T while the dense GEMM becomes compute-bound: the kernel cannot beat dense there (it was "
    "never meant to: the CUTLASS / cuSPARSELt paths serve prefill).",
]


if __name__ == "__main__":
    sys.exit(main())
