#!/usr/bin/env python3
"""Local AOT check of the sparse24_mm kernel (no GPU): record the launches of
``ria_kernels.ops.sparse24_mm.aot_cases()`` (the kernel never runs), compile each distinct one
for a GPU target with the installed Triton, and print registers / spills (``ptxas -v``),
shared memory, and with ``--sass`` the main loop's SASS instruction mix (per thread, per
K-step). Exit status 1 if any compile spills. An interim tool until the CI AOT gate covers
``aot_cases()``; it shares nothing with the kernel but the public entry point.

    python scripts/aot_sparse24_mm.py --arch 90 --subset            # 1 case per config family
    python scripts/aot_sparse24_mm.py --arch 80 --arch 90 --json out.json
    python scripts/aot_sparse24_mm.py --arch 90 --only "T=1 N=4096 K=4096 float16" --sass
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import ria_kernels._backend as _backend  # noqa: E402

_backend.interpret_mode = lambda: True  # let backend="triton" through for CPU tensors (nothing runs)
from ria_kernels.ops import sparse24_mm as S  # noqa: E402

_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.uint8: "u8",
          torch.int32: "i32"}


def record(cases):
    launches = []

    def fake_run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs, grid))

    saved, JITFunction.run = JITFunction.run, fake_run
    try:
        out = []
        for label, call in cases:
            n0 = len(launches)
            call()
            out += [(label, launch) for launch in launches[n0:]]
        return out
    finally:
        JITFunction.run = saved


def source(fn, args, kwargs):
    """ASTSource with the runtime's specialisation: ints == 1 constant, divisibility by 16."""
    vals = dict(zip(fn.arg_names, args))
    vals.update(kwargs)
    sig, const, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = vals[p.name]
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif v == 1:
            sig[p.name], const[p.name] = "constexpr", 1
        else:
            sig[p.name] = "i32" if abs(v) < 2 ** 31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    key = json.dumps([sig, {k: str(v) for k, v in const.items()}, sorted(map(str, attrs))], sort_keys=True)
    return ASTSource(fn, sig, const, attrs), key


def ptxas_path(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except ImportError:  # older Triton
        return triton.knobs.nvidia.ptxas.path


def cuobjdump_sass(cubin: bytes) -> str:
    """Raw ``cuobjdump -sass`` (addresses kept, unlike Triton's label-rewritten listing)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        return subprocess.run([str(tool), "-sass", path], capture_output=True, text=True, check=True).stdout


def loop_mix(sass: str) -> tuple[int, collections.Counter]:
    """Instruction count and opcode mix of the largest loop (the K loop)."""
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
    body = [op for addr, op, _ in ins if best[0] <= addr <= best[1]]
    return len(body), collections.Counter(body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append", help="80, 90 (sm_90a), ... (default 90)")
    ap.add_argument("--subset", action="store_true", help="T in {1,16,64,1024}; bf16+bias and fp16 without")
    ap.add_argument("--only", default=None, help="substring of the case labels to keep")
    ap.add_argument("--sass", action="store_true", help="print the K loop's SASS instruction mix")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    archs = args.arch or [90]
    cases = S.aot_cases()
    if args.subset:
        def keep(label):
            t = int(label.split("T=")[1].split()[0])
            return t in (1, 16, 64, 1024) and ("bfloat16 bias" in label or label.endswith(" float16"))
        cases = [c for c in cases if keep(c[0])]
    if args.only:
        cases = [c for c in cases if args.only in c[0]]
    rows, done, bad = [], {}, 0
    for label, (fn, a, kw, grid) in record(cases):
        src, key = source(fn, a, kw)
        opts = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
        for arch in archs:
            if (key, arch) not in done:
                kern = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
                with tempfile.TemporaryDirectory() as d:
                    ptx = os.path.join(d, "k.ptx")
                    Path(ptx).write_text(kern.asm["ptx"])
                    log = subprocess.run([ptxas_path(arch), "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}",
                                          ptx, "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True).stderr
                regs = re.search(r"Used (\d+) registers", log)
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
                if regs is None or spill is None:
                    raise RuntimeError(f"ptxas -v output not understood:\n{log}")
                res = dict(regs=int(regs.group(1)), spill_stores=int(spill.group(1)), spill_loads=int(spill.group(2)),
                           smem=kern.metadata.shared)
                if args.sass:
                    n, mix = loop_mix(cuobjdump_sass(kern.asm["cubin"]))
                    res.update(loop_instr=n, loop_mix=dict(mix.most_common(12)))
                done[(key, arch)] = res
            res = done[(key, arch)]
            cfg = {k: v for k, v in kw.items() if k.isupper()}
            row = dict(label=label, arch=arch, triton=triton.__version__, grid=list(grid), config=cfg,
                       num_warps=opts.get("num_warps"), num_stages=opts.get("num_stages"), **res)
            rows.append(row)
            bad += bool(res["spill_stores"] or res["spill_loads"])
            print(f"{label:42s} sm{arch} grid={tuple(grid)} BN/BT/BK={cfg['BLOCK_N']}/{cfg['BLOCK_T']}/{cfg['BLOCK_K']} "
                  f"split={cfg['SPLIT_K']} warps={opts.get('num_warps')} regs={res['regs']} "
                  f"spills={res['spill_stores']}/{res['spill_loads']} smem={res['smem']}"
                  + (f" loop={res['loop_instr']} {res['loop_mix']}" if "loop_instr" in res else ""), flush=True)
    print(f"triton {triton.__version__}: {len(rows)} launches, {len(done)} compiles, {bad} with spills")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
