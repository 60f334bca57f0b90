"""``ria-prune``: prune a HuggingFace causal LM and report dense vs pruned perplexity."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ._errors import BackendUnavailableError, RiaInputError

EPILOG = """\
examples:
  ria-prune                                   # RIA, 50% unstructured, embedded model, offline, < 1 min on CPU
  ria-prune --sparsity-type 2:4 --method wanda --json out/wanda-2of4.json
  ria-prune --model ./my-llama --calib-text calib.txt --eval-text test.txt --device cpu --save out/pruned
  ria-prune --model meta-llama/Llama-2-7b-hf --method ria --sparsity-type 2:4 --permute \\
            --calib-dataset c4 --eval-dataset wikitext2 --device cuda --save out/llama2-7b-ria-2of4
  ria-prune --model meta-llama/Llama-2-70b-hf --device map --sparsity-type 2:4   # several GPUs / CPU offload
  ria-prune --method sparsegpt --sparsity-ratio 0.7 --layerwise atp   # ATP, beta searched on calibration data
  ria-prune --method ria --sparsity-ratio 0.7 --layerwise owl --owl-lambda 0.08 --owl-m 5
  ria-prune --method ria --sparsity-type 2:4 --reconstruction          # RIA + SparseGPT-style reconstruction

sparsity:
  --sparsity-type unstructured prunes --sparsity-ratio (a fraction in [0, 1)) of every linear layer
  (one threshold per linear module as in RIA; --per-output thresholds each output row as in Wanda).
  An N:M type such as 2:4 prunes N of every M consecutive input weights (2:4 = 50%, 1:4 = 25%).

data:
  With no --model the embedded default model and its held-out calibration/evaluation text are used.
  --calib-dataset/--eval-dataset (c4, wikitext2, ptb) need the `datasets` package and network;
  local files (--calib-text/--eval-text) work offline. Perplexity uses non-overlapping windows of --seqlen.

Errors in the input print one line "ria-prune: error: ..." and exit with status 2.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ria-prune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Post-training pruning of causal LMs with RIA (Relative Importance and Activations), "
                    "Wanda, RI, magnitude or SparseGPT; unstructured or N:M; prints dense and pruned perplexity.")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or local directory (default: the embedded model shipped with ria-kernels)")
    g.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda if available) | "
                   "map (device_map='auto': several GPUs / CPU offload). Default: auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights dtype (auto: float16 on GPU, float32 on CPU)")
    g = p.add_argument_group("pruning")
    g.add_argument("--method", default="ria", choices=["magnitude", "wanda", "ri", "ria", "sparsegpt"])
    g.add_argument("--sparsity-ratio", type=float, default=0.5, help="fraction of weights pruned (unstructured)")
    g.add_argument("--sparsity-type", default="unstructured", help="'unstructured' or N:M such as 2:4, 4:8, 1:4")
    g.add_argument("--a", type=float, default=0.5, help="RIA activation exponent a (default 0.5)")
    g.add_argument("--per-output", action="store_true",
                   help="unstructured: prune per output row (Wanda's default) instead of per layer (RIA's)")
    g.add_argument("--permute", action="store_true", help="N:M: channel permutation (allocation + LSA)")
    g.add_argument("--lsa", action=argparse.BooleanOptionalAction, default=True,
                   help="with --permute: linear-sum-assignment refinement after the heuristic allocation")
    g.add_argument("--blocks", type=int, default=1, help="with --permute: fast LSA over this many communities")
    g.add_argument("--reconstruction", action="store_true", help="OBS weight reconstruction after masking (RIA+rec)")
    g.add_argument("--sparse-inference", action="store_true",
                   help="after pruning, convert the model with to_sparse_inference (2:4 linears become SparseLinear, "
                        "channel permutations applied for real) and report its perplexity too")
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    g.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT Hessian damping (fraction of mean diag)")
    g.add_argument("--batch-size", type=int, default=1, help="calibration samples per forward pass (default 1)")
    g.add_argument("--offload", action="store_true",
                   help="keep calibration activations on the CPU (less GPU memory; implied by --device map)")
    g.add_argument("--backend", choices=["triton", "torch"],
                   help="force the score/mask backend (default: Triton on CUDA, torch reference otherwise)")
    g.add_argument("--layerwise", default="uniform", choices=["uniform", "atp", "owl"],
                   help="per-layer sparsity allocation (unstructured only)")
    g.add_argument("--beta", type=float, help="ATP common difference; searched on calibration data if omitted")
    g.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: rates lie in [s-lambda, s+lambda]")
    g.add_argument("--owl-m", type=float, default=5.0, help="OWL: outlier threshold M (metric > M * mean)")
    g = p.add_argument_group("data")
    g.add_argument("--nsamples", type=int, help="calibration windows (default 128; 32 for the embedded model)")
    g.add_argument("--seqlen", type=int, help="tokens per window (default min(2048, model max); 128 for the embedded model)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--calib-text", help="local text file for calibration")
    g.add_argument("--calib-dataset", choices=["c4", "wikitext2", "ptb"], help="online calibration dataset")
    g.add_argument("--eval-text", help="local text file for perplexity")
    g.add_argument("--eval-dataset", choices=["wikitext2", "c4", "ptb"], help="online evaluation dataset")
    g.add_argument("--max-eval-windows", type=int, help="cap the number of evaluation windows")
    g.add_argument("--no-dense-eval", action="store_true", help="skip the dense perplexity")
    g.add_argument("--eval-zero-shot", metavar="TASKS",
                   help="comma-separated lm-eval tasks, or 'default' (boolq,rte,hellaswag,arc_challenge,mnli); needs network")
    g = p.add_argument_group("output")
    g.add_argument("--save", metavar="DIR", help="write the pruned model (HF checkpoint) and tokenizer")
    # --save-sparse (issue #11): compressed 2:4 checkpoint, read back with ria_kernels.load_sparse
    g.add_argument("--save-sparse", metavar="DIR", help="2:4 only: convert with to_sparse_inference and write a "
                   "compressed checkpoint (2:4 values + indices, permutations, config, tokenizer); load it with "
                   "ria_kernels.load_sparse(DIR)")
    g.add_argument("--json", metavar="PATH", help="write the JSON report here")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", help="log backend choices and timings")
    return p


def _resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "map":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise RiaInputError(f"--device must be cpu, cuda, cuda:N, auto or map, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RiaInputError(f"--device {name}: no CUDA device is available")
    return name


def _check_args(args):
    """Everything that can be checked before loading a model. Returns the sparsity spec."""
    from ._validation import check_ratio, parse_sparsity
    if args.sparsity_type == "unstructured":
        spec = parse_sparsity(check_ratio(args.sparsity_ratio, "--sparsity-ratio"))
    else:
        try:
            spec = parse_sparsity(args.sparsity_type)
        except RiaInputError as exc:
            raise RiaInputError(f"--sparsity-type: {exc}") from None
        if not spec.is_nm:
            raise RiaInputError(f"--sparsity-type must be 'unstructured' or N:M such as 2:4, got {args.sparsity_type!r}")
    for flag, value, lo in (("--nsamples", args.nsamples, 1), ("--seqlen", args.seqlen, 2), ("--blocks", args.blocks, 1),
                            ("--blocksize", args.blocksize, 1), ("--batch-size", args.batch_size, 1),
                            ("--max-eval-windows", args.max_eval_windows, 1)):
        if value is not None and value < lo:
            raise RiaInputError(f"{flag} must be >= {lo}, got {value}")
    if args.permute and not spec.is_nm:
        raise RiaInputError("--permute needs an N:M --sparsity-type such as 2:4")
    if args.layerwise != "uniform" and spec.is_nm:
        raise RiaInputError("--layerwise atp/owl needs --sparsity-type unstructured")
    if args.beta is not None and args.layerwise != "atp":
        raise RiaInputError("--beta is only used with --layerwise atp")
    for flag, path in (("--calib-text", args.calib_text), ("--eval-text", args.eval_text)):
        if path is not None and not Path(path).is_file():
            raise RiaInputError(f"{flag}: text file not found: {path}")
    if args.calib_text and args.calib_dataset:
        raise RiaInputError("pass only one of --calib-text and --calib-dataset")
    if args.eval_text and args.eval_dataset:
        raise RiaInputError("pass only one of --eval-text and --eval-dataset")
    if args.eval_zero_shot:
        from .zero_shot import require_lm_eval
        require_lm_eval()  # before minutes of pruning, not after
    return spec


def _load(args):
    import torch
    device = _resolve_device(args.device)
    on_gpu = device == "map" or device.startswith("cuda")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "auto": torch.float16 if on_gpu else torch.float32}[args.dtype]
    if args.model is None:
        from .embedded import load_embedded
        if device == "map":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tok = load_embedded(dtype=dtype, device=device)
        return model, tok, device
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .models import check_config
    try:
        config = AutoConfig.from_pretrained(args.model)
    except Exception as exc:
        raise RiaInputError(f"cannot load the model config of {args.model!r}: {exc}".splitlines()[0]) from None
    check_config(config)  # the family is checked before any weights are read
    kwargs = {"dtype": dtype}
    if device == "map":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise RiaInputError("--device map needs the `accelerate` package: pip install accelerate") from None
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
        tok = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as exc:
        raise RiaInputError(f"cannot load {args.model!r}: {exc}".splitlines()[0]) from None
    if device != "map":
        model.to(device)
    return model, tok, device


def _calibration(args, tok, nsamples, seqlen, default_path):
    from .calibration import calibration_from_dataset, calibration_from_file
    if args.calib_dataset:
        return calibration_from_dataset(tok, args.calib_dataset, nsamples, seqlen, args.seed)
    path = args.calib_text or default_path
    if path is None:
        raise RiaInputError("no calibration data: pass --calib-text PATH or --calib-dataset {c4,wikitext2,ptb}")
    return calibration_from_file(tok, path, nsamples, seqlen, args.seed)


def _eval_ids(args, tok, seqlen, default_path):
    from .evaluation import eval_tokens
    if args.eval_dataset:
        return eval_tokens(tok, dataset=args.eval_dataset, seqlen=seqlen)
    path = args.eval_text or default_path
    if path is None:
        raise RiaInputError("no evaluation data: pass --eval-text PATH or --eval-dataset {wikitext2,c4,ptb}")
    return eval_tokens(tok, path=path)


def run(args) -> dict:
    """Load, calibrate, (dense eval), prune, eval, (save); returns the JSON-safe result."""
    from .evaluation import perplexity
    from .models import get_adapter
    from .pruning import prune_model

    spec = _check_args(args)  # fail before loading anything
    if args.save_sparse and str(spec) != "2:4":  # --save-sparse (issue #11)
        raise RiaInputError(f"--save-sparse needs --sparsity-type 2:4, got {spec}")
    sparsity = str(spec) if spec.is_nm else spec.ratio
    embedded = args.model is None
    nsamples = args.nsamples or (32 if embedded else 128)
    t_load = time.perf_counter()
    model, tok, device = _load(args)
    model.eval()
    adapter = get_adapter(model)
    max_pos = getattr(model.config, "max_position_embeddings", 2048) or 2048
    seqlen = args.seqlen or (128 if embedded else min(2048, max_pos))
    calib_default = eval_default = None
    if embedded:
        from .embedded import embedded_text_path
        calib_default, eval_default = embedded_text_path("calib"), embedded_text_path("eval")
    calibration = _calibration(args, tok, nsamples, seqlen, calib_default)
    eval_ids = _eval_ids(args, tok, seqlen, eval_default)
    progress = not args.quiet
    result = {"model": args.model or "embedded", "family": adapter.family, "device": str(device),
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "method": args.method,
              "sparsity": str(spec), "a": args.a, "nsamples": nsamples, "seqlen": seqlen,
              "eval_tokens": int(eval_ids.numel()), "load_s": time.perf_counter() - t_load}
    ev = dict(max_windows=args.max_eval_windows, progress=progress)
    if not args.no_dense_eval:
        t = time.perf_counter()
        result["dense_ppl"] = perplexity(model, eval_ids, seqlen, **ev)
        result["dense_eval_s"] = time.perf_counter() - t
    prune_kwargs = dict(a=args.a, per_output=args.per_output, reconstruction=args.reconstruction,
                        permute=args.permute, lsa=args.lsa, blocks=args.blocks, blocksize=args.blocksize,
                        percdamp=args.percdamp, batch_size=args.batch_size,
                        offload=args.offload or device == "map", backend=args.backend)
    layer_sparsities = None
    if args.layerwise != "uniform":
        from . import layerwise
        n_layers = adapter.num_layers
        t = time.perf_counter()
        if args.layerwise == "atp":
            beta = args.beta
            if beta is None:
                beta, table = layerwise.search_atp_beta(model, calibration, method=args.method, sparsity=spec.ratio,
                                                        **prune_kwargs)
                result["atp_search"] = table
            result["beta"] = beta
            layer_sparsities = layerwise.atp_sparsities(n_layers, spec.ratio, beta)
        else:
            ratios = layerwise.owl_outlier_ratios(model, calibration, m=args.owl_m)
            result["owl_outlier_ratios"] = ratios
            layer_sparsities = layerwise.owl_sparsities(ratios, spec.ratio, args.owl_lambda)
        result["layerwise_s"] = time.perf_counter() - t
        result["layer_sparsities"] = [float(x) for x in layer_sparsities]
    report = prune_model(model, calibration, method=args.method, sparsity=sparsity,
                         layer_sparsities=layer_sparsities, progress=progress, **prune_kwargs)
    result["report"] = report.to_dict()
    result["actual_sparsity"] = report.actual_sparsity
    result["prune_time_s"] = report.total_time_s
    result["backend"] = report.backend
    t = time.perf_counter()
    result["pruned_ppl"] = perplexity(model, eval_ids, seqlen, **ev)
    result["pruned_eval_s"] = time.perf_counter() - t
    if args.eval_zero_shot:
        from .zero_shot import DEFAULT_TASKS, evaluate_zero_shot
        tasks = DEFAULT_TASKS if args.eval_zero_shot == "default" else \
            tuple(t.strip() for t in args.eval_zero_shot.split(",") if t.strip())
        result["zero_shot"] = evaluate_zero_shot(model, tok, tasks)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
        if report.permutations:  # so the saved model can be run permuted later (load_prune_report)
            report.save_permutations(args.save)
        result["saved_to"] = str(args.save)
    if args.sparse_inference:
        from .inference import to_sparse_inference
        t = time.perf_counter()
        to_sparse_inference(model, report)  # in place, after --save (SparseLinear is not a HF module)
        result["sparse_inference_convert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        result["sparse_inference_ppl"] = perplexity(model, eval_ids, seqlen, **ev)
        result["sparse_inference_eval_s"] = time.perf_counter() - t
    if args.save_sparse:  # --save-sparse (issue #11): after the dense --save, converts in place if not done yet
        from .inference import to_sparse_inference
        from .sparse_checkpoint import save_sparse
        if not args.sparse_inference:
            to_sparse_inference(model, report)
        result["saved_sparse_to"] = str(save_sparse(model, args.save_sparse, report=report, tokenizer=tok,
                                                    overwrite=True))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        result["json"] = str(args.json)
    return result


def _summary(r: dict) -> str:
    lines = [f"ria-prune: {r['model']} ({r['family']}) on {r['device']} ({r['dtype']}): "
             f"method {r['method']}, sparsity {r['sparsity']}",
             f"  calibration: {r['nsamples']} x {r['seqlen']} tokens; evaluation: {r['eval_tokens']} tokens"]
    if "dense_ppl" in r:
        lines.append(f"  dense  perplexity: {r['dense_ppl']:.3f}")
    lines.append(f"  pruned perplexity: {r['pruned_ppl']:.3f}   (actual sparsity {r['actual_sparsity']:.4f})")
    if "sparse_inference_ppl" in r:
        lines.append(f"  sparse-inference perplexity: {r['sparse_inference_ppl']:.3f}   (to_sparse_inference model)")
    if "layer_sparsities" in r:
        lines.append("  layer sparsities: " + ", ".join(f"{s:.3f}" for s in r["layer_sparsities"]))
    b = r.get("backend", {})
    lines.append(f"  pruning time: {r['prune_time_s']:.2f} s   backend: "
                 + ", ".join(f"{k}={v}" for k, v in b.items()))
    if "zero_shot" in r:
        lines.append("  zero-shot: " + json.dumps(r["zero_shot"]))
    if r.get("saved_to"):
        lines.append(f"  saved to {r['saved_to']}")
    if r.get("saved_sparse_to"):  # --save-sparse (issue #11)
        lines.append(f"  compressed 2:4 checkpoint: {r['saved_sparse_to']}")
    if r.get("json"):
        lines.append(f"  JSON report: {r['json']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ria-prune``; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if args.quiet:
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except Exception:
            pass
    try:
        result = run(args)
    except (RiaInputError, BackendUnavailableError, FileNotFoundError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ria-prune: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ria-prune: error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 2
    print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
