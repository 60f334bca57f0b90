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
  ria-prune                                  # RIA, 50%% unstructured, on the embedded model (offline)
  ria-prune --sparsity-type 2:4 --method wanda
  ria-prune --model meta-llama/Llama-2-7b-hf --method ria --sparsity-type 2:4 --permute \\
            --calib-dataset c4 --eval-dataset wikitext2 --device cuda --save out/llama2-7b-ria-2of4
  ria-prune --method sparsegpt --sparsity-ratio 0.7 --layerwise atp   # ATP, beta searched on calibration data

Sparsity: --sparsity-type unstructured uses --sparsity-ratio (a fraction in [0, 1));
an N:M type such as 2:4 prunes N of every M consecutive input weights (2:4 = 50%%, 1:4 = 25%%).
With no --model the embedded default model and its held-out calibration/evaluation text are used.
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
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    g.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT Hessian damping (fraction of mean diag)")
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
    g.add_argument("--json", metavar="PATH", help="write the JSON report here")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", help="log backend choices and timings")
    return p


def _resolve_device(name: str):
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RiaInputError(f"--device {name}: no CUDA device is available")
    return name


def _load(args):
    import torch
    device = _resolve_device(args.device)
    on_gpu = device == "map" or device.startswith("cuda")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "auto": torch.float16 if on_gpu else torch.float32}[args.dtype]
    if args.model is None:
        from .embedded import load_embedded
        model, tok = load_embedded(dtype=dtype, device="cpu" if device == "map" else device)
        return model, tok, device
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    try:
        config = AutoConfig.from_pretrained(args.model)
    except Exception as exc:
        raise RiaInputError(f"cannot load model config {args.model!r}: {exc}") from None
    from .models import ADAPTERS
    from .models.base import check_supported

    class _Probe:  # check the family before downloading weights
        pass
    probe = _Probe()
    probe.config = config
    check_supported(probe, ADAPTERS)
    kwargs = {"dtype": dtype}
    if device == "map":
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if device != "map":
        model.to(device)
    tok = AutoTokenizer.from_pretrained(args.model)
    return model, tok, device


def _text(path, dataset, split, default_path):
    from .calibration import load_dataset_text, read_text
    if path:
        return read_text(path)
    if dataset:
        return load_dataset_text(dataset, split)
    if default_path is not None:
        return read_text(default_path)
    raise RiaInputError(f"no {split} data: pass --{'calib' if split == 'train' else 'eval'}-text PATH "
                        f"or --{'calib' if split == 'train' else 'eval'}-dataset NAME")


def run(args) -> dict:
    import torch

    from .calibration import sample_windows, tokenize_text
    from .evaluation import perplexity
    from .pruning import prune_model

    sparsity = args.sparsity_ratio if args.sparsity_type == "unstructured" else args.sparsity_type
    from ._validation import parse_sparsity
    spec = parse_sparsity(sparsity)  # fail before loading anything
    embedded = args.model is None
    nsamples = args.nsamples or (32 if embedded else 128)
    model, tok, device = _load(args)
    seqlen = args.seqlen or (128 if embedded else min(2048, getattr(model.config, "max_position_embeddings", 2048)))
    calib_default = eval_default = None
    if embedded:
        from .embedded import embedded_text_path
        calib_default, eval_default = embedded_text_path("calib"), embedded_text_path("eval")
    calib_ids = tokenize_text(tok, _text(args.calib_text, args.calib_dataset, "train", calib_default))
    calibration = sample_windows(calib_ids, nsamples, seqlen, args.seed)
    eval_ids = tokenize_text(tok, _text(args.eval_text, args.eval_dataset, "test", eval_default))
    model.eval()
    progress = not args.quiet
    result = {"model": args.model or "embedded", "device": str(device), "dtype": str(next(model.parameters()).dtype),
              "method": args.method, "sparsity": str(spec), "nsamples": nsamples, "seqlen": seqlen}
    if not args.no_dense_eval:
        t = time.perf_counter()
        result["dense_ppl"] = perplexity(model, eval_ids, seqlen, max_windows=args.max_eval_windows)
        result["dense_eval_s"] = time.perf_counter() - t
    layer_sparsities = None
    if args.layerwise != "uniform":
        from . import layerwise
        n_layers = len(__import__("ria_kernels.models", fromlist=["get_adapter"]).get_adapter(model).layers())
        if spec.is_nm:
            raise RiaInputError("--layerwise atp/owl needs --sparsity-type unstructured")
        if args.layerwise == "atp":
            beta = args.beta
            if beta is None:
                beta, table = layerwise.search_atp_beta(model, calibration, method=args.method, sparsity=spec.ratio,
                                                        a=args.a, per_output=args.per_output)
                result["atp_search"] = table
            result["beta"] = beta
            layer_sparsities = layerwise.atp_sparsities(n_layers, spec.ratio, beta)
        else:
            ratios = layerwise.owl_outlier_ratios(model, calibration, m=args.owl_m)
            layer_sparsities = layerwise.owl_sparsities(ratios, spec.ratio, args.owl_lambda)
        result["layer_sparsities"] = layer_sparsities
    report = prune_model(model, calibration, method=args.method, sparsity=sparsity, a=args.a,
                         per_output=args.per_output, layer_sparsities=layer_sparsities,
                         reconstruction=args.reconstruction, permute=args.permute, lsa=args.lsa,
                         blocks=args.blocks, blocksize=args.blocksize, percdamp=args.percdamp,
                         offload=device == "map", progress=progress)
    result["report"] = report.to_dict()
    result["actual_sparsity"] = report.actual_sparsity
    result["prune_time_s"] = report.total_time_s
    t = time.perf_counter()
    result["pruned_ppl"] = perplexity(model, eval_ids, seqlen, max_windows=args.max_eval_windows)
    result["pruned_eval_s"] = time.perf_counter() - t
    if args.eval_zero_shot:
        from .zero_shot import DEFAULT_TASKS, evaluate_zero_shot
        tasks = DEFAULT_TASKS if args.eval_zero_shot == "default" else tuple(args.eval_zero_shot.split(","))
        result["zero_shot"] = evaluate_zero_shot(model, tok, tasks)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
        result["saved_to"] = args.save
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


def _summary(r: dict) -> str:
    lines = [f"model {r['model']} on {r['device']} ({r['dtype']}), method {r['method']}, sparsity {r['sparsity']}",
             f"  calibration: {r['nsamples']} x {r['seqlen']} tokens"]
    if "dense_ppl" in r:
        lines.append(f"  dense  perplexity: {r['dense_ppl']:.3f}")
    lines.append(f"  pruned perplexity: {r['pruned_ppl']:.3f}   (actual sparsity {r['actual_sparsity']:.4f})")
    lines.append(f"  pruning time: {r['prune_time_s']:.2f} s")
    if "layer_sparsities" in r:
        lines.append("  layer sparsities: " + ", ".join(f"{s:.3f}" for s in r["layer_sparsities"]))
    if r.get("saved_to"):
        lines.append(f"  saved to {r['saved_to']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    except (RiaInputError, BackendUnavailableError, FileNotFoundError, OSError) as exc:
        print(f"ria-prune: error: {exc}", file=sys.stderr)
        return 2
    print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
