#!/usr/bin/env python3
"""Decode-size 2:4 matmul benchmark (GPU): the compressed-weight Triton kernel
(``ria_kernels.ops.sparse24_mm``) against dense cuBLAS, cuSPARSELt (this project's
extension) and torch's ``to_sparse_semi_structured``, per LLaMA2-7B/13B/70B linear shape
[out N, in K] and token count T in {1, 2, 4, 8, 16, 32, 64, 128}; fp16.

Methods (one weight per method, 2:4 by magnitude; the baseline is imported from the op's
reference module, and every method's output is checked against it before timing):
  - ``dense``:       ``F.linear(x, W)`` on the masked dense weight (cuBLAS),
  - ``sparse24``:    ``sparse24_mm(x, values, meta)`` (values [N, K/2] + 2-bit indices),
  - ``cusparselt``:  ``ria_kernels.ops.sparse_mm.cslt_mm`` with its searched config (skipped,
                     reason recorded, when the extension does not load),
  - ``torch_24``:    ``F.linear(x, to_sparse_semi_structured(W))``.

Timing: each method's call sequence over R weight copies (rotated so that R copies exceed
3x the L2 cache: every call streams its weight from DRAM) is captured once in a CUDA graph
(no CPU launch overhead in the numbers) and the graph's median replay time
(``triton.testing.do_bench``) is divided by R; a method whose capture fails runs eagerly and
its row says so. Bytes per call = weight storage (dense N*K*2; sparse24 values + metadata
= 0.5625x; cuSPARSELt/torch: their compressed buffers) + x + out. GB/s = bytes / time;
``pct_copy`` = that / the measured device copy bandwidth (read + write). ``speedup`` =
dense time / method time in the same run; the memory-bound ceiling of the 2:4 formats at
decode is ~1.78x.

E2E (after the per-shape part, guarded so its failure never loses the shape rows): greedy
decode tokens/s of a LLaMA2-7B-shaped model (random fp16 weights made 2:4 by magnitude,
``--e2e-layers`` layers) with a static KV cache, one decode step captured in a CUDA graph
(``bench_e2e.decode_row``), for ``dense`` vs ``to_sparse_inference(model, None,
memory="compact")`` vs ``memory="cusparselt"``.

    python benchmarks/bench_decode.py --out benchmarks/results      # all shapes, T, e2e
    python benchmarks/bench_decode.py --quick                        # 7B shapes, T in {1, 16, 128}
    python benchmarks/bench_decode.py --dry-run                      # print the plan (no GPU needed)
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_ms, copy_bandwidth_gbps, print_table, save_figure, write_rows  # noqa: E402

from ria_kernels.ops.sparse24_mm import compress_24, launch_config, sparse24_mm, sparse24_mm_reference  # noqa: E402

# (model, linear, N = out_features, K = in_features)
SHAPES = [
    ("7B", "qkvo", 4096, 4096), ("7B", "gate/up", 11008, 4096), ("7B", "down", 4096, 11008),
    ("13B", "qkvo", 5120, 5120), ("13B", "gate/up", 13824, 5120), ("13B", "down", 5120, 13824),
    ("70B", "q/o", 8192, 8192), ("70B", "k/v", 1024, 8192), ("70B", "gate/up", 28672, 8192),
    ("70B", "down", 8192, 28672),
]
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
QUICK_SHAPES = SHAPES[:3]
QUICK_TOKENS = (1, 16, 128)
METHODS = ("dense", "sparse24", "cusparselt", "torch_24")
CEILING = 1 / 0.5625   # dense bytes / compressed bytes (fp16 values + 2-bit indices)
# fp16 outputs vs the fp32 reference: different summation orders over K <= 28672
RTOL, ATOL = 2e-2, 5e-2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results", help="directory for bench_decode.json/.png")
    p.add_argument("--quick", action="store_true", help="7B shapes and T in {1, 16, 128}; 2-layer e2e")
    p.add_argument("--dry-run", action="store_true", help="build the case list, print the plan, exit 0")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end decode rows")
    p.add_argument("--e2e-layers", type=int, default=None, help="decoder layers of the e2e model (default 8; quick 2)")
    p.add_argument("--e2e-steps", type=int, default=64, help="decode steps timed per e2e variant")
    return p.parse_args(argv)


def plan(args) -> list[dict]:
    shapes = QUICK_SHAPES if args.quick else SHAPES
    tokens = QUICK_TOKENS if args.quick else TOKENS
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    return [dict(model=mdl, linear=lin, n=n, k=k, t=t, methods=methods)
            for mdl, lin, n, k in shapes for t in tokens]


# --------------------------------------------------------------------------- methods
def mask_24(w: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 along K (the 2 largest |w| of every 4 kept)."""
    g = w.view(w.shape[0], -1, 4)
    drop = g.abs().argsort(-1)[..., :2]
    return g.scatter(-1, drop, 0).view_as(w)


def make_method(name: str, w: torch.Tensor):
    """(prepared weight, fn(x, weight) -> y, storage bytes) or raise with the reason."""
    n, k = w.shape
    if name == "dense":
        return w, (lambda x, wt: F.linear(x, wt)), w.numel() * w.element_size()
    if name == "sparse24":
        values, meta = compress_24(w)
        return ((values, meta), (lambda x, wt: sparse24_mm(x, wt[0], wt[1])),
                values.numel() * values.element_size() + meta.numel())
    if name == "cusparselt":
        from ria_kernels.ops import sparse_mm
        if not sparse_mm.load_ops() or not sparse_mm.cslt_available():
            raise RuntimeError(f"cuSPARSELt unavailable: {sparse_mm.extension_status()}")
        comp = sparse_mm.cslt_compress(w)
        return comp, (lambda x, wt: sparse_mm.cslt_mm(x, wt, n)), comp.numel() * comp.element_size()
    if name == "torch_24":
        from torch.sparse import to_sparse_semi_structured
        ws = to_sparse_semi_structured(w)
        nbytes = sum(t.numel() * t.element_size() for t in (ws.packed, ws.meta) if t is not None)
        return ws, (lambda x, wt: F.linear(x, wt)), nbytes
    raise ValueError(name)


def time_rotated(fn, x, weights) -> tuple[float, str]:
    """Median ms of one call: ``fn(x, w)`` over every copy in ``weights`` in one CUDA graph."""
    outs = [None] * len(weights)

    def run_all():
        for i, wt in enumerate(weights):
            outs[i] = fn(x, wt)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_all()  # warm-up: compilation, cuSPARSELt plans, allocator
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_all()
        return bench_ms(graph.replay) / len(weights), "cuda_graph"
    except Exception as exc:  # recorded, never hidden
        torch.cuda.synchronize()
        return bench_ms(run_all) / len(weights), f"eager ({type(exc).__name__}: {str(exc)[:120]})"


def shape_rows(case: dict, l2_bytes: int, copy_gbps: float) -> list[dict]:
    n, k, t = case["n"], case["k"], case["t"]
    gen = torch.Generator(device="cuda").manual_seed(n * 7 + k)
    w = mask_24(torch.randn(n, k, device="cuda", generator=gen).half())
    x = torch.randn(t, k, device="cuda", generator=gen).half()
    values, meta = compress_24(w)
    ref = sparse24_mm_reference(x, values, meta).float()     # the op's reference (fp32 accumulate)
    rows, dense_ms = [], None
    for name in case["methods"]:
        row = dict(model=case["model"], linear=case["linear"], n=n, k=k, t=t, method=name)
        try:
            prepared, fn, wbytes = make_method(name, w)
            got = fn(x, prepared).float()
            err = (got - ref).abs().max().item()
            if not torch.allclose(got, ref, rtol=RTOL, atol=ATOL):
                raise AssertionError(f"output differs from the reference: max abs err {err:.3g}")
            copies = max(1, math.ceil(3 * l2_bytes / wbytes))
            # independent copies made the way the method makes its weight (compressed buffers too)
            weights = [prepared] + [make_method(name, w.clone())[0] for _ in range(copies - 1)]
            ms, mode = time_rotated(fn, x, weights)
            del weights
            nbytes = wbytes + 2 * t * k + 2 * t * n
            row.update(ms=ms, timing=mode, copies=copies, weight_bytes=wbytes, bytes=nbytes,
                       gbps=nbytes / (ms * 1e-3) / 1e9, max_abs_err=err)
            row["pct_copy"] = 100 * row["gbps"] / copy_gbps
            if name == "dense":
                dense_ms = ms
            if name == "sparse24":
                row["config"] = launch_config(t, n, k, torch.cuda.get_device_properties(0).multi_processor_count)._asdict()
        except Exception as exc:
            row.update(skipped=f"{type(exc).__name__}: {str(exc)[:300]}")
        rows.append(row)
    for row in rows:
        if dense_ms and "ms" in row:
            row["speedup"] = dense_ms / row["ms"]
    torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- e2e
def linear_bytes(model) -> int:
    """Bytes held by the decoder layers' attention/MLP projections (parameters + buffers)."""
    total = 0
    for name, mod in model.named_modules():
        if name.startswith("model.layers.") and (".self_attn." in name or ".mlp." in name):
            total += sum(t.numel() * t.element_size()
                         for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)))
    return total


def e2e_rows(args) -> list[dict]:
    """Greedy decode tokens/s (static cache, CUDA graph) for dense vs compact vs cusparselt."""
    import ria_kernels
    from bench_e2e import build_model, decode_row
    layers = args.e2e_layers or (2 if args.quick else 8)
    base = build_model(layers, "cuda", torch.float16)
    with torch.no_grad():
        for mod in base.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not base.lm_head:
                mod.weight.copy_(mask_24(mod.weight))
    vocab = base.config.vocab_size
    rows = []
    for variant in ("dense", "compact", "cusparselt"):
        model = base if variant == "dense" else copy.deepcopy(base)
        row = dict(variant=variant, layers=layers)
        try:
            if variant != "dense":
                ria_kernels.to_sparse_inference(model, None, memory=variant)
            lin_bytes = linear_bytes(model)
            for batch in (1, 16):
                r = decode_row(model, variant, batch, 128, args.e2e_steps, vocab, "cuda")
                rows.append({**row, **r, "layer_bytes": lin_bytes})
        except Exception as exc:
            traceback.print_exc()
            rows.append({**row, "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"})
        if model is not base:
            del model
        torch.cuda.empty_cache()
    dense = {r["batch"]: r["ms"] for r in rows if r["variant"] == "dense" and "ms" in r}
    for r in rows:
        if "ms" in r and r.get("batch") in dense:
            r["speedup"] = dense[r["batch"]] / r["ms"]
    return rows


# --------------------------------------------------------------------------- output
def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = sorted({(r["model"], r["linear"], r["n"], r["k"]) for r in rows}, key=lambda s: (s[0], s[2], s[3]))
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(shapes) / cols), cols, figsize=(5 * cols, 3.3 * math.ceil(len(shapes) / cols)),
                             squeeze=False)
    for ax, (mdl, lin, n, k) in zip(axes.flat, shapes):
        for method in METHODS[1:]:
            pts = sorted((r["t"], r["speedup"]) for r in rows
                         if (r["n"], r["k"], r["method"]) == (n, k, method) and "speedup" in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.axhline(CEILING, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{mdl} {lin} {n}x{k}", fontsize=9)
        ax.set_xlabel("tokens T")
        ax.set_ylabel("speedup vs dense")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    save_figure(fig, path, title)


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = plan(args)
    print(f"bench_decode: {len(cases)} cases ({len({(c['n'], c['k']) for c in cases})} shapes x "
          f"{len({c['t'] for c in cases})} token counts) x methods {cases[0]['methods'] if cases else []}; "
          f"e2e: {'off' if args.no_e2e else 'dense/compact/cusparselt'}; out: {args.out}")
    for c in cases:
        print(f"  {c['model']:4s} {c['linear']:8s} N={c['n']:6d} K={c['k']:6d} T={c['t']:4d}  "
              f"sparse24 config {tuple(launch_config(c['t'], c['n'], c['k']))}")
    if args.dry_run:
        return 0
    if not torch.cuda.is_available():
        print("bench_decode: needs a CUDA GPU (use --dry-run to check the plan)")
        return 1
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 << 20)
    copy_gbps = copy_bandwidth_gbps()
    print(f"device {props.name}: L2 {l2_bytes >> 20} MiB, {props.multi_processor_count} SMs, "
          f"copy bandwidth {copy_gbps:.0f} GB/s")
    rows = []
    for c in cases:
        rows += shape_rows(c, l2_bytes, copy_gbps)
        print_table([r for r in rows[-len(c["methods"]):]], ["model", "linear", "n", "k", "t", "method", "ms",
                                                             "gbps", "pct_copy", "speedup", "skipped"])
    e2e = []
    if not args.no_e2e:
        try:
            e2e = e2e_rows(args)
            print_table(e2e, ["variant", "layers", "batch", "ms", "tokens_per_s", "speedup", "decode_mode",
                              "layer_bytes", "skipped"])
        except Exception as exc:  # the per-shape rows are written regardless
            traceback.print_exc()
            e2e = [dict(skipped=f"{type(exc).__name__}: {str(exc)[:300]}")]
    out = Path(args.out)
    write_rows(out, "bench_decode", rows, extra=dict(e2e=e2e, copy_gbps=copy_gbps, l2_bytes=l2_bytes,
                                                      ceiling=CEILING))
    try:
        plot(rows, out / "bench_decode.png", f"2:4 matmul at decode sizes vs dense cuBLAS ({props.name})")
    except Exception as exc:
        print(f"plot failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
