#!/usr/bin/env python3
"""End-to-end latency like the RIA paper's Table A4: a LLaMA2-7B-shaped model
(32 layers, hidden 4096, intermediate 11008, 32 heads; random fp16 weights: the
values do not change the timing), prefill at batch 1/8/16/64 x seq 128 and greedy
decode tokens/s at batch 1 and 16.

Variants (all on the same random weights, made 2:4 by magnitude in a random
permuted channel order per group -- random permutations are fine for timing, the
search itself is benchmarked in bench_permutation.py):

- ``dense``: the masked model with plain ``nn.Linear``.
- ``2:4``: the same weights with the permutations baked into every linear's
  columns (so they are 2:4 in natural order, a different but equally sparse model),
  converted by ``to_sparse_inference(model)``: SparseLinear, no runtime permutation.
- ``2:4+perm``: ``to_sparse_inference(model, report)``: SparseLinear in permuted
  space, PermutedRMSNorm for q/k/v and gate/up, down's permutation folded into
  gate/up rows, and the runtime gather in front of o_proj (random permutations
  cross heads, so nothing folds into v_proj).
- ``2:4+perm-no-gather``: ``2:4+perm`` with the o_proj gather removed (timing only,
  its outputs are not the model's): the gather's cost is the difference.

Permutation overhead = t(2:4+perm) / t(2:4) - 1 (same sparse weights and kernels).
Before timing, ``dense`` vs ``2:4+perm`` and the 2:4 model vs its dense weights are
checked on full logits (fp16 max abs diff printed and stored).

Prefill is one forward with ``logits_to_keep=1`` (generation only needs the last
position's logits; the lm_head is dense in every variant), median of
``triton.testing.do_bench``. Decode: a static KV cache filled by a 128-token prompt,
then one greedy step (argmax fed back) captured in a CUDA graph and replayed
``--decode-steps`` times between CUDA events; if capture fails the step runs eagerly
and the row says ``decode_mode: eager`` with the reason.

    python benchmarks/bench_e2e.py --out benchmarks/results [--layers 32] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_dry_run_argument, bench_ms, dry_run_plan, print_table, save_figure, write_rows  # noqa: E402

from ria_kernels.inference import InputPermutedLinear, to_sparse_inference  # noqa: E402
from ria_kernels.models import get_adapter  # noqa: E402
from ria_kernels.pruning import PruneReport  # noqa: E402
from ria_kernels.sparse_linear import SparseLinear, tune_model  # noqa: E402

REL_TOL = 0.05  # fp16 logits: max abs diff allowed, relative to the largest |logit| (different summation orders)
VARIANTS = ("dense", "2:4", "2:4+perm", "2:4+perm-no-gather")


def build_model(layers: int, device: str, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    if tiny:  # --smoke-cpu: plumbing check only
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                          num_hidden_layers=layers, vocab_size=128, max_position_embeddings=512)
    else:
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                          num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # HF initialises norms to ones: randomise so a misplaced norm weight would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def mask_24_permuted(model: nn.Module, seed: int = 0) -> PruneReport:
    """Magnitude 2:4 per linear in a random input-channel order per group (groups share
    one permutation); returns the PruneReport that ``to_sparse_inference`` applies."""
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for i, layer in enumerate(adapter.layers()):
        for g in adapter.groups:
            lin0 = layer.get_submodule(g.linears[0])
            perm = torch.randperm(lin0.in_features, generator=gen)
            for n in g.linears:
                w = layer.get_submodule(n).weight
                p = perm.to(w.device)
                wp = w.index_select(1, p).view(w.shape[0], -1, 4)
                drop = wp.abs().argsort(-1)[..., :2]
                keep_p = torch.ones_like(wp, dtype=torch.bool).scatter_(-1, drop, False).view(w.shape[0], -1)
                keep = torch.empty_like(keep_p)
                keep[:, p] = keep_p
                w.mul_(keep)
                perms[adapter.full_name(i, n)] = perm
    return PruneReport(method="magnitude", sparsity="2:4", a=0.0, per_output=False, family=adapter.family,
                       permute=True, permutations=perms)


@torch.no_grad()
def bake_permutations(model: nn.Module, report: PruneReport) -> None:
    """``W <- W[:, perm]`` for every linear: 2:4 in natural order (a different model)."""
    for name, perm in report.permutations.items():
        lin = model.get_submodule(name)
        lin.weight.data = lin.weight.data.index_select(1, perm.to(lin.weight.device)).contiguous()


def strip_gathers(model: nn.Module) -> int:
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, InputPermutedLinear):
            model.set_submodule(name, mod.linear)
            n += 1
    return n


def tune(model: nn.Module, args) -> dict:
    """Let every SparseLinear pick its backend per token bucket now (eagerly, before any
    timing or graph capture), then free the compressed copies no bucket chose.
    Returns {tokens: {backend: number of linears}} for the record."""
    tokens = sorted({b * args.seq for b in args.batches} | set(args.decode_batches))
    choices = tune_model(model, tokens)
    for m in model.modules():
        if isinstance(m, SparseLinear):
            m.release_unused()
    summary: dict = {}
    for per_bucket in choices.values():
        for bucket, backend in per_bucket.items():
            summary.setdefault(int(bucket), {}).setdefault(backend, 0)
            summary[int(bucket)][backend] += 1
    if args.device == "cuda":
        torch.cuda.empty_cache()
    print(f"  SparseLinear choices per token bucket: {summary}", flush=True)
    return summary


def timer(device: str, quick: bool):
    if device == "cuda":
        return lambda fn: bench_ms(fn, warmup=25, rep=200 if quick else 600)

    def cpu_ms(fn, reps=3):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    return cpu_ms


@torch.no_grad()
def full_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def prefill_rows(model, variant, batches, seq, vocab, device, measure) -> list[dict]:
    rows = []
    for b in batches:
        ids = torch.randint(0, vocab, (b, seq), device=device)
        ms = measure(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
        rows.append({"phase": "prefill", "variant": variant, "batch": b, "seq": seq, "ms": ms,
                     "tokens_per_s": b * seq / (ms * 1e-3)})
        print(f"  prefill {variant:20s} batch {b:3d}: {ms:.3f} ms", flush=True)
    return rows


@torch.no_grad()
def decode_row(model, variant, batch, prompt, steps, vocab, device) -> dict:
    """Greedy decode tokens/s after a ``prompt``-token prefill, static KV cache."""
    from transformers import StaticCache
    cache = StaticCache(config=model.config, max_cache_len=prompt + steps + 8)
    ids = torch.randint(0, vocab, (batch, prompt), device=device)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1:].argmax(-1)  # static input of the decode step

    def step():
        o = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok.copy_(o.logits[:, -1:].argmax(-1))  # greedy token fed back in place (graph-safe)

    mode, reason, graph = "eager", None, None
    if device == "cuda":
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up allocations / autotuning outside the capture
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            mode = "cuda_graph"
        except Exception as e:  # recorded in the row, not hidden
            graph, reason = None, f"{type(e).__name__}: {str(e)[:200]}"
    run = graph.replay if graph is not None else step
    n = steps - 4  # the cache has room for prompt + steps + 8 tokens, warm-up and capture used 4
    if device == "cuda":
        run()
        torch.cuda.synchronize()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(n):
            run()
        t1.record()
        torch.cuda.synchronize()
        ms = t0.elapsed_time(t1) / n
    else:
        t = time.perf_counter()
        for _ in range(n):
            run()
        ms = (time.perf_counter() - t) * 1e3 / n
    print(f"  decode  {variant:20s} batch {batch:3d}: {ms:.3f} ms/step ({mode})", flush=True)
    row = {"phase": "decode", "variant": variant, "batch": batch, "seq": prompt, "ms": ms,
           "tokens_per_s": batch / (ms * 1e-3), "decode_mode": mode, "decode_steps": n}
    if reason:
        row["decode_fallback_reason"] = reason
    return row


def time_variant(model, variant, args, device, measure, vocab) -> list[dict]:
    rows = prefill_rows(model, variant, args.batches, args.seq, vocab, device, measure)
    for b in args.decode_batches:
        rows.append(decode_row(model, variant, b, args.seq, args.decode_steps, vocab, device))
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    for ax, phase, key, label in ((axes[0], "prefill", "ms", "prefill latency (ms, seq 128)"),
                                  (axes[1], "decode", "tokens_per_s", "decode tokens/s")):
        batches = sorted({r["batch"] for r in rows if r["phase"] == phase})
        width = 0.8 / max(1, len(variants))
        for k, v in enumerate(variants):
            vals = [next((r[key] for r in rows if r["phase"] == phase and r["variant"] == v and r["batch"] == b),
                         0.0) for b in batches]
            ax.bar([j + k * width for j in range(len(batches))], vals, width, label=v)
        ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(batches))])
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    save_figure(fig, path, title)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for e2e.json / e2e.png")
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (32 = LLaMA2-7B; fewer for a quick run)")
    ap.add_argument("--quick", action="store_true", help="batches 1,16, decode batch 1, fewer repetitions")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--backend", default=None, help="SparseLinear backend (default: its own choice)")
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="tiny model on the CPU to check the script's plumbing; numbers meaningless, nothing written")
    add_dry_run_argument(ap)
    args = ap.parse_args()
    if args.layers < 1 or args.decode_steps < 8:
        ap.error("--layers must be >= 1 and --decode-steps >= 8")
    device = args.device = "cpu" if args.smoke_cpu else "cuda"
    args.seq = 128
    args.batches = [1, 16] if args.quick else [1, 8, 16, 64]
    args.decode_batches = [1] if args.quick else [1, 16]
    if args.smoke_cpu:
        args.batches, args.decode_batches, args.seq, args.decode_steps = [1, 2], [1, 2], 16, 12
    if args.dry_run:
        cases = ([f"prefill {v} batch {b} x seq {args.seq} ({args.layers} layers)" for v in VARIANTS
                  for b in args.batches]
                 + [f"decode {v} batch {b}, {args.decode_steps} steps" for v in VARIANTS for b in args.decode_batches])
        return dry_run_plan("bench_e2e", cases, [] if args.smoke_cpu else ["e2e.json", "e2e.png"])
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_e2e: needs a CUDA GPU (end-to-end latency of SparseLinear models); none found", file=sys.stderr)
        return 1
    dtype = torch.float32 if args.smoke_cpu else torch.float16
    measure = timer(device, args.quick)
    torch.manual_seed(0)
    t_start = time.perf_counter()

    dense = build_model(args.layers, device, dtype, tiny=args.smoke_cpu)
    vocab = dense.config.vocab_size
    report = mask_24_permuted(dense)
    check_ids = torch.randint(0, vocab, (1, args.seq), device=device)
    rows, checks = [], {}
    rows += time_variant(dense, "dense", args, device, measure, vocab)

    # 2:4 + real permutation: must reproduce the dense model
    model = to_sparse_inference(copy.deepcopy(dense), report, backend=args.backend)
    checks["sparse_choices_2:4+perm"] = tune(model, args)
    ref = full_logits(dense, check_ids)
    checks["2:4+perm_vs_dense_max_abs"] = (full_logits(model, check_ids) - ref).abs().max().item()
    checks["logit_scale_max_abs"] = ref.abs().max().item()
    checks["sparse_linear_modes"] = sorted({m.backend for m in model.modules() if isinstance(m, SparseLinear)})
    rows += time_variant(model, "2:4+perm", args, device, measure, vocab)
    checks["o_proj_gathers"] = strip_gathers(model)
    rows += time_variant(model, "2:4+perm-no-gather", args, device, measure, vocab)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    # 2:4 without runtime permutation: permutations baked into the weights
    baked = copy.deepcopy(dense)
    del dense
    bake_permutations(baked, report)
    ref = full_logits(baked, check_ids)
    model = to_sparse_inference(baked, None, backend=args.backend)
    checks["sparse_choices_2:4"] = tune(model, args)
    checks["2:4_vs_its_dense_max_abs"] = (full_logits(model, check_ids) - ref).abs().max().item()
    rows += time_variant(model, "2:4", args, device, measure, vocab)
    del model, baked

    base = {(r["phase"], r["batch"]): r for r in rows if r["variant"] == "dense"}
    sp = {(r["phase"], r["batch"]): r for r in rows if r["variant"] == "2:4"}
    for r in rows:
        key = (r["phase"], r["batch"])
        r["speedup_vs_dense"] = base[key]["ms"] / r["ms"]
        if r["variant"].startswith("2:4+perm"):
            r["overhead_vs_2:4_pct"] = 100.0 * (r["ms"] / sp[key]["ms"] - 1.0)
    tol = REL_TOL * max(1.0, checks["logit_scale_max_abs"])
    checks["outputs_agree"] = bool(checks["2:4+perm_vs_dense_max_abs"] <= tol
                                   and checks["2:4_vs_its_dense_max_abs"] <= tol)
    print("\nchecks:", {k: round(v, 5) if isinstance(v, float) else v for k, v in checks.items()})
    print_table(rows, ["phase", "variant", "batch", "ms", "tokens_per_s", "speedup_vs_dense", "overhead_vs_2:4_pct",
                       "decode_mode"])
    print(f"total {time.perf_counter() - t_start:.1f}s")
    if not checks["outputs_agree"]:
        print(f"bench_e2e: converted models disagree with their dense weights (tolerance {tol:.3g}): the timings "
              "below compare different computations", file=sys.stderr)
    if args.smoke_cpu:
        return 0 if checks["outputs_agree"] else 1
    extra = {"model": {"shape": "LLaMA2-7B" if args.layers == 32 else f"LLaMA2-7B-shaped, {args.layers} layers",
                       "layers": args.layers, "dtype": "float16", "weights": "random, 2:4 by magnitude in random "
                       "per-group permutations", "attn": "sdpa"},
             "checks": checks, "sparse_backend": args.backend or "default",
             "notes": "prefill: logits_to_keep=1, median do_bench; decode: static cache, CUDA graph when "
                      "capture works (see decode_mode), CUDA events"}
    write_rows(args.out, "e2e", rows, extra=extra)
    plot(rows, Path(args.out) / "e2e.png", f"LLaMA2-7B-shaped e2e ({args.layers} layers, fp16, "
                                           f"{torch.cuda.get_device_name()})")
    return 0 if checks["outputs_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
