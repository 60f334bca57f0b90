"""``ria-prune``: prune a HuggingFace causal LM and report dense vs pruned perplexity.

Order of work, so that a long run cannot fail at its end: every argument, flag
combination and output path is checked before any model is loaded; the model's
shape-dependent checks run right after loading, before calibration; outputs are
written atomically at the end (``_io``). Ctrl-C prints ``ria-prune: interrupted`` and
exits 130 without leaving a complete-looking output directory.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ._errors import BackendUnavailableError, RiaInputError

EPILOG = """\
examples:
  ria-prune                                   # RIA, 50% unstructured, embedded model, offline (18-58 s, 2 cores)
  ria-prune --sparsity-type 2:4 --method wanda --json out/wanda-2of4.json
  ria-prune --model ./my-llama --calib-text calib.txt --eval-text test.txt --device cpu --save out/pruned
  ria-prune --model ./my-llama --calib-text calib.txt --no-eval --save out/pruned   # prune and save only
  ria-prune --model meta-llama/Llama-2-7b-hf --method ria --sparsity-type 2:4 --permute \\
            --calib-dataset c4 --eval-dataset wikitext2 --device cuda --save out/llama2-7b-ria-2of4
  ria-prune --model meta-llama/Llama-2-70b-hf --device map --sparsity-type 2:4   # several GPUs / CPU offload
  ria-prune --method sparsegpt --sparsity-ratio 0.7 --layerwise atp   # ATP, beta searched on calibration data
  ria-prune --method ria --sparsity-ratio 0.7 --layerwise owl --owl-lambda 0.08 --owl-m 5
  ria-prune --method ria --sparsity-type 2:4 --reconstruction          # RIA + SparseGPT-style reconstruction
  ria-prune --method alps --sparsity-type 2:4 --permute                # ALPS + LS refit, RIA-permuted channels
  ria-prune --save out/pruned --overwrite     # replace the output of an earlier run (nothing stale is kept)

sparsity:
  --sparsity-type unstructured prunes --sparsity-ratio (a fraction in [0, 1)) of every linear layer
  (one threshold per linear module as in RIA; --per-output thresholds each output row as in Wanda).
  An N:M type such as 2:4 prunes N of every M consecutive input weights (2:4 = 50%, 1:4 = 25%);
  --sparsity-ratio, --per-output and --layerwise do not apply to it.

data:
  With no --model the embedded default model and its held-out calibration/evaluation text are used.
  --calib-dataset/--eval-dataset (c4, wikitext2, ptb) need the `datasets` package and network;
  local files (--calib-text/--eval-text) work offline. Perplexity uses non-overlapping windows of --seqlen.
  A --model that is not an existing directory is a Hugging Face hub id (the local cache is tried first).

outputs:
  --save and --json are checked before the model is loaded: not an existing file, not the source model,
  not a non-empty directory unless --overwrite. They are written atomically (temporary sibling, fsync,
  rename); --save also writes DIR/ria_prune_report.json. The JSON report follows docs/report_schema.md
  (schema_version 1): settings, seed, data sources and token counts used, versions, device, backends,
  per-linear sparsity and timings. --save and --save-sparse write the weights in the source checkpoint's
  dtype (--save-dtype to change it). Files are created with the usual permissions (0666 minus the umask).

resources:
  Before any weights load, --nsamples x --seqlen must fit in the calibration text (--cap-nsamples lowers
  --nsamples instead), N:M must divide every linear's input width in config.json, and the memory the run
  will hold (model, calibration activations, SparseGPT Hessians, one evaluation batch) must fit in what the
  device has available (MemAvailable on a CPU); otherwise one error names the flag to lower.

threads:
  On a CPU, models under 50M parameters run with one torch thread (small matmuls do not scale, and
  threads that wait on a busy core cost minutes); larger ones use torch's default. --threads N or
  OMP_NUM_THREADS overrides this. Models under 50M parameters are evaluated 16 windows per forward
  pass (--eval-batch-size); the perplexity is the same sum over the same windows.

Errors in the input print one line "ria-prune: error: ..." and exit with status 2;
Ctrl-C prints "ria-prune: interrupted" and exits with status 130.
"""

SMALL_MODEL_PARAMS = 50_000_000
# ria_kernels.embedded.EMBEDDED_DIR, named here without importing that module (it imports torch)
EMBEDDED_DIR = Path(__file__).resolve().parent / "assets" / "embedded"
RUN_MARKER = "ria_prune_report.json"  # written into every --save directory


def _version() -> str:
    from . import __version__
    return f"ria-prune (ria-kernels) {__version__}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ria-prune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Post-training pruning of causal LMs with RIA (Relative Importance and Activations), "
                    "Wanda, RI, magnitude or SparseGPT; unstructured or N:M; prints dense and pruned perplexity.")
    p.add_argument("--version", action="version", version=_version())
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or local directory (default: the embedded model shipped with ria-kernels)")
    g.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda if available) | "
                   "map (device_map='auto': several GPUs / CPU offload). Default: auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights dtype while pruning (auto: float16 on GPU, float32 on CPU, also with --device map)")
    g.add_argument("--skip-memory-check", action="store_true",
                   help="run even when the memory estimate (model, calibration activations, Hessians, evaluation "
                        "batch) exceeds what the device has available")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads (default: 1 for models under 50M parameters on a CPU, else torch's default;"
                        " OMP_NUM_THREADS is respected)")
    g = p.add_argument_group("pruning")
    g.add_argument("--method", default="ria", choices=["magnitude", "wanda", "ri", "ria", "sparsegpt", "alps"],
                   help="alps: ADMM (Meng et al. 2024) + least-squares refit; with --permute on RIA-permuted channels")
    g.add_argument("--sparsity-ratio", type=float,
                   help="fraction of weights pruned, unstructured only (default 0.5)")
    g.add_argument("--sparsity-type", default="unstructured", help="'unstructured' or N:M such as 2:4, 4:8, 1:4")
    g.add_argument("--a", type=float, help="RIA activation exponent a in [0, 1] (default 0.5; --method ria only)")
    g.add_argument("--per-output", action="store_true",
                   help="unstructured: prune per output row (Wanda's default) instead of per layer (RIA's)")
    g.add_argument("--permute", action="store_true", help="N:M: channel permutation (allocation + LSA)")
    g.add_argument("--lsa", action=argparse.BooleanOptionalAction, default=None,
                   help="with --permute: linear-sum-assignment refinement after the heuristic allocation (default on)")
    g.add_argument("--blocks", type=int,
                   help="with --permute and LSA: fast LSA over this many communities (default 1)")
    g.add_argument("--reconstruction", nargs="?", const="obs", choices=["obs", "ls"],
                   help="update the kept weights after masking: obs (the default when given alone: SparseGPT/OBS, "
                        "RIA+rec) or ls (exact least-squares refit, masked PCG); not with --method sparsegpt/alps")
    g.add_argument("--sparse-inference", action="store_true",
                   help="2:4 only: after pruning, convert the model with to_sparse_inference (2:4 linears become "
                        "SparseLinear, channel permutations applied for real), report how many linears run on "
                        "which backend, and the converted model's perplexity")
    g.add_argument("--blocksize", type=int, help="SparseGPT column block size (default 128; sparsegpt/--reconstruction)")
    g.add_argument("--percdamp", type=float,
                   help="SparseGPT Hessian damping, fraction of mean diag (default 0.01; sparsegpt/--reconstruction)")
    g.add_argument("--batch-size", type=int, default=1, help="calibration samples per forward pass (default 1)")
    g.add_argument("--offload", action="store_true",
                   help="keep calibration activations on the CPU (less GPU memory; implied by --device map)")
    g.add_argument("--backend", choices=["triton", "torch"],
                   help="force the score/mask backend (default: Triton on CUDA, torch reference otherwise)")
    g.add_argument("--layerwise", default="uniform", choices=["uniform", "atp", "owl"],
                   help="per-layer sparsity allocation (unstructured only)")
    g.add_argument("--beta", type=float, help="ATP common difference; searched on calibration data if omitted")
    g.add_argument("--owl-lambda", type=float, help="OWL: rates lie in [s-lambda, s+lambda] (default 0.08)")
    g.add_argument("--owl-m", type=float, help="OWL: outlier threshold M, metric > M * mean (default 5)")
    g = p.add_argument_group("data")
    g.add_argument("--nsamples", type=int, help="calibration windows (default 128; 32 for the embedded model)")
    g.add_argument("--seqlen", type=int, help="tokens per window (default min(2048, model max); 128 for the embedded model)")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration window sampling (default 0)")
    g.add_argument("--cap-nsamples", action="store_true",
                   help="lower --nsamples to the windows the calibration text holds (tokens // seqlen) instead of "
                        "refusing a run that asks for more")
    g.add_argument("--calib-text", help="local text file for calibration")
    g.add_argument("--calib-dataset", choices=["c4", "wikitext2", "ptb"], help="online calibration dataset")
    g.add_argument("--eval-text", help="local text file for perplexity")
    g.add_argument("--eval-dataset", choices=["wikitext2", "c4", "ptb"], help="online evaluation dataset")
    g.add_argument("--text-encoding", help="encoding of --calib-text/--eval-text (default utf-8; bytes that are not "
                   "valid in it are an error naming the byte offset)")
    g.add_argument("--max-eval-windows", type=int, help="cap the number of evaluation windows (recorded in the report)")
    g.add_argument("--eval-batch-size", type=int,
                   help="evaluation windows per forward pass (default: 16 for models under 50M parameters, else 1)")
    g.add_argument("--no-dense-eval", action="store_true", help="skip the dense perplexity")
    g.add_argument("--no-eval", action="store_true", help="no perplexity at all (e.g. prune and --save only)")
    g.add_argument("--eval-zero-shot", metavar="TASKS",
                   help="comma-separated lm-eval tasks, or 'default' (boolq,rte,hellaswag,arc_challenge,mnli); needs network")
    g = p.add_argument_group("output")
    g.add_argument("--save", metavar="DIR", help="write the pruned model (HF checkpoint), tokenizer and report")
    g.add_argument("--save-dtype", choices=["source", "float32", "float16", "bfloat16"],
                   help="dtype of the weights --save and --save-sparse write (default: source, the checkpoint's own "
                        "dtype)")
    g.add_argument("--save-sparse", metavar="DIR", help="2:4 only: convert with to_sparse_inference and write a "
                   "compressed checkpoint (2:4 values + indices, permutations, config, tokenizer; about 0.56x the "
                   "dense linear bytes); load it with ria_kernels.load_sparse(DIR)")
    g.add_argument("--save-sparse-format", choices=["ria_kernels", "compressed-tensors"], default="ria_kernels",
                   help="format of --save-sparse: this package's (default) or compressed-tensors' sparse-24-bitmask "
                        "for transformers 4.57 + compressed-tensors 0.14 / older vLLM (not with --permute)")
    g.add_argument("--json", metavar="PATH", help="write the JSON report here (schema: docs/report_schema.md)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save / --save-sparse directory or --json file (the old contents are removed)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (not with -v)")
    g.add_argument("-v", "--verbose", action="store_true", help="log backend choices and timings")
    return p


# ------------------------------------------------------------------ checks ---
def _warn(msg: str) -> None:
    print(f"ria-prune: warning: {msg}", file=sys.stderr)


def _resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "map":
        return name
    bad = RiaInputError(f"--device must be cpu, cuda, cuda:N, auto or map, got {name!r}")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise bad from None
    if dev.type == "cpu" and dev.index is None:
        return "cpu"
    if dev.type != "cuda":
        raise bad
    if not torch.cuda.is_available():
        raise RiaInputError(f"--device {name}: no CUDA device is available")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RiaInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name


def _looks_like_path(name: str) -> bool:
    """A --model value that can only mean a local directory (hub ids are 'name' or 'org/name')."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1
            or os.sep in name and Path(name.split(os.sep)[0]).is_dir())


def _check_flags(args) -> None:
    """Meaningless or conflicting flag combinations: one clear error each."""
    nm = args.sparsity_type != "unstructured"
    if nm and args.sparsity_ratio is not None:
        raise RiaInputError(f"--sparsity-ratio applies to unstructured sparsity; --sparsity-type {args.sparsity_type} "
                            "fixes the pruned fraction (N of every M)")
    if nm and args.per_output:
        raise RiaInputError("--per-output is for unstructured sparsity; N:M is per row already")
    if args.permute and not nm:
        raise RiaInputError("--permute needs an N:M --sparsity-type such as 2:4")
    if args.lsa is not None and not args.permute:
        raise RiaInputError("--lsa/--no-lsa is a step of channel permutation; it needs --permute")
    if args.blocks is not None and not (args.permute and args.lsa is not False):
        raise RiaInputError("--blocks splits the LSA step of channel permutation; it needs --permute (with LSA)")
    if args.reconstruction and args.method == "sparsegpt":
        raise RiaInputError("--reconstruction is what --method sparsegpt does already; use it with another method")
    if args.reconstruction and args.method == "alps":
        raise RiaInputError("--reconstruction: --method alps ends with the least-squares refit already; "
                            "use it with another method")
    if args.blocksize is not None and not (args.method == "sparsegpt" or args.reconstruction == "obs"):
        raise RiaInputError("--blocksize is a SparseGPT setting; it needs --method sparsegpt or --reconstruction obs")
    if args.percdamp is not None and not (args.method in ("sparsegpt", "alps") or args.reconstruction):
        raise RiaInputError("--percdamp is a SparseGPT setting (Hessian damping); it needs --method sparsegpt / "
                            "alps or --reconstruction")
    if args.a is not None and args.method != "ria" and not (args.permute and args.method in ("sparsegpt", "alps")):
        raise RiaInputError(f"--a is RIA's activation exponent; --method {args.method} does not use it")
    if args.layerwise != "uniform" and nm:
        raise RiaInputError("--layerwise atp/owl needs --sparsity-type unstructured")
    if args.beta is not None and args.layerwise != "atp":
        raise RiaInputError("--beta is only used with --layerwise atp")
    for flag, value in (("--owl-lambda", args.owl_lambda), ("--owl-m", args.owl_m)):
        if value is not None and args.layerwise != "owl":
            raise RiaInputError(f"{flag} is only used with --layerwise owl")
    if args.layerwise == "atp" and args.beta is None and args.nsamples is not None and args.nsamples < 2:
        raise RiaInputError("--layerwise atp without --beta searches beta on held-out calibration windows: "
                            "it needs --nsamples >= 2")
    if args.quiet and args.verbose:
        raise RiaInputError("--quiet and -v/--verbose contradict each other; pass one of them")
    if args.a is not None and not (0.0 <= args.a <= 1.0):  # also refuses nan
        raise RiaInputError(f"--a must be in [0, 1] (RIA's activation exponent: 0 is RI without activations, "
                            f"1 weights them as Wanda does; the paper uses 0.5), got {args.a}")
    if args.cap_nsamples and args.calib_dataset:
        raise RiaInputError("--cap-nsamples applies to a calibration text file; --calib-dataset draws its windows "
                            "from the dataset")
    if args.text_encoding is not None and not (args.calib_text or args.eval_text):
        raise RiaInputError("--text-encoding applies to --calib-text/--eval-text; pass one of them")
    if args.calib_text and args.calib_dataset:
        raise RiaInputError("pass only one of --calib-text and --calib-dataset")
    if args.eval_text and args.eval_dataset:
        raise RiaInputError("pass only one of --eval-text and --eval-dataset")
    if args.no_eval:
        for flag, value in (("--eval-text", args.eval_text), ("--eval-dataset", args.eval_dataset),
                            ("--max-eval-windows", args.max_eval_windows), ("--no-dense-eval", args.no_dense_eval),
                            ("--sparse-inference", args.sparse_inference)):
            if value:
                raise RiaInputError(f"{flag} has no effect with --no-eval (nothing is evaluated)")
        if args.eval_batch_size is not None:
            raise RiaInputError("--eval-batch-size has no effect with --no-eval (nothing is evaluated)")
    if args.sparse_inference and args.sparsity_type.replace(" ", "") != "2:4":
        raise RiaInputError("--sparse-inference converts 2:4 linears only (the pattern sparse tensor cores run); "
                            f"--sparsity-type {args.sparsity_type} would leave every linear dense")
    if args.save_dtype is not None and not (args.save or args.save_sparse):
        raise RiaInputError("--save-dtype needs --save DIR or --save-sparse DIR")
    if args.overwrite and not (args.save or args.save_sparse or args.json):
        raise RiaInputError("--overwrite needs --save DIR, --save-sparse DIR or --json PATH")
    if args.save and args.json:
        a, b = Path(args.save).expanduser().resolve(), Path(args.json).expanduser().resolve()
        if a == b:
            raise RiaInputError("--json must not be the --save directory; give a file name (e.g. DIR/report.json)")
    if args.save_sparse:
        a = Path(args.save_sparse).expanduser().resolve()
        for flag, other in (("--save", args.save), ("--json", args.json)):
            b = Path(other).expanduser().resolve() if other else None
            if b is not None and (a == b or (flag == "--save" and (a in b.parents or b in a.parents))):
                raise RiaInputError(f"--save-sparse must not be (or overlap) the {flag} path {other}")
    if args.save_sparse_format != "ria_kernels" and not args.save_sparse:
        raise RiaInputError("--save-sparse-format needs --save-sparse DIR")
    if args.save_sparse_format == "compressed-tensors" and args.permute:
        raise RiaInputError("--save-sparse-format compressed-tensors cannot hold a permuted model (its 2:4 pattern "
                            "holds only in permuted channel order, which a standard HF module cannot express); "
                            "drop --permute or keep the ria_kernels format")
    if args.offload and args.device == "cpu":
        _warn("--offload keeps activations on the CPU; with --device cpu it changes nothing")


def _check_args(args):
    """Everything that can be checked before loading a model. Returns the sparsity spec."""
    from ._io import validate_output_path
    from ._resources import check_nm_divisible, read_config, weight_files
    from ._validation import check_ratio, parse_sparsity
    _check_flags(args)
    if args.eval_zero_shot:
        from .zero_shot import require_lm_eval
        require_lm_eval()  # before minutes of pruning, not after
    if args.sparsity_type == "unstructured":
        ratio = 0.5 if args.sparsity_ratio is None else args.sparsity_ratio
        spec = parse_sparsity(check_ratio(ratio, "--sparsity-ratio"))
    else:
        try:
            spec = parse_sparsity(args.sparsity_type)
        except RiaInputError as exc:
            raise RiaInputError(f"--sparsity-type: {exc}") from None
        if not spec.is_nm:
            raise RiaInputError(f"--sparsity-type must be 'unstructured' or N:M such as 2:4, got {args.sparsity_type!r}")
    for flag, value, lo in (("--nsamples", args.nsamples, 1), ("--seqlen", args.seqlen, 2), ("--blocks", args.blocks, 1),
                            ("--blocksize", args.blocksize, 1), ("--batch-size", args.batch_size, 1),
                            ("--max-eval-windows", args.max_eval_windows, 1), ("--threads", args.threads, 1),
                            ("--eval-batch-size", args.eval_batch_size, 1)):
        if value is not None and value < lo:
            raise RiaInputError(f"{flag} must be >= {lo}, got {value}")
    if args.percdamp is not None and not (0 < args.percdamp < 1):
        raise RiaInputError(f"--percdamp must be in (0, 1), got {args.percdamp}")
    from ._text import check_encoding, read_text
    encoding = check_encoding(args.text_encoding or "utf-8", "--text-encoding")
    for flag, path in (("--calib-text", args.calib_text), ("--eval-text", args.eval_text)):
        if path is not None:
            read_text(path, encoding, flag)  # a directory, missing file or undecodable byte: one line, now
    if args.model is not None:
        m = Path(args.model).expanduser()
        if m.exists() and not m.is_dir():
            raise RiaInputError(f"--model {args.model}: is a file; give the model's directory")
        if not m.exists() and _looks_like_path(args.model):
            raise RiaInputError(f"--model {args.model}: local model directory not found")
        if m.is_dir() and not (m / "config.json").is_file():
            raise RiaInputError(f"--model {args.model}: no config.json in this directory (not a HF model checkpoint)")
        if m.is_dir() and not weight_files(m):
            raise RiaInputError(f"--model {args.model}: no weights in this directory (config.json but no "
                                "*.safetensors or pytorch_model*.bin)")
    config_dir = _local_config_dir(args)
    if spec.is_nm and config_dir is not None:  # before the weights: the widths are in config.json
        check_nm_divisible(read_config(config_dir), spec.m, "--sparsity-type", str(spec))
    source = args.model if args.model is not None and Path(args.model).expanduser().exists() else None
    if args.save:
        validate_output_path(args.save, kind="dir", flag="--save", source=source, overwrite=args.overwrite,
                             markers=(RUN_MARKER, "config.json"))
    if args.save_sparse:
        if str(spec) != "2:4":
            raise RiaInputError(f"--save-sparse needs --sparsity-type 2:4 (the compressed format is 2:4), got {spec}")
        validate_output_path(args.save_sparse, kind="dir", flag="--save-sparse", source=source,
                             overwrite=args.overwrite, markers=("ria_sparse.json",) if args.save_sparse_format
                             == "ria_kernels" else ("config.json",))
    if args.json:
        validate_output_path(args.json, kind="file", flag="--json", source=source, overwrite=args.overwrite)
    _resolve_device(args.device)  # last: it imports torch (to ask for CUDA), every check above does not
    return spec


def _local_config_dir(args) -> Path | None:
    """The directory whose config.json describes the model, when it is local (embedded or a directory)."""
    if args.model is None:
        return EMBEDDED_DIR
    m = Path(args.model).expanduser()
    return m if (m / "config.json").is_file() else None


# ------------------------------------------------------------------ loading ---
def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    import socket
    from urllib.parse import urlparse
    try:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    except Exception:  # noqa: BLE001 - no hub client: report it as unreachable
        return False, "huggingface_hub is not installed"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True, ""
    except OSError as exc:
        return False, f"{url.hostname}: {exc.strerror or exc}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_hf_tokenizer(args):
    """(src, from_pretrained kwargs, config, tokenizer, source_dtype) of a local directory or hub id,
    each failure one line; no weights are read yet."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .models import check_config
    name = args.model
    local = Path(name).expanduser().is_dir()
    src = str(Path(name).expanduser()) if local else name
    kwargs: dict = {}
    if local:
        kwargs["local_files_only"] = True
    else:
        try:  # the cache first: no network needed for a model downloaded before
            AutoConfig.from_pretrained(name, local_files_only=True)
            kwargs["local_files_only"] = True
        except Exception:  # noqa: BLE001 - not cached: the hub is asked below
            ok, why = _hub_reachable()
            if not ok:
                raise RiaInputError(f"--model {name}: no local directory of that name, not in the Hugging Face "
                                    f"cache, and the hub is unreachable ({why})") from None
    try:
        config = AutoConfig.from_pretrained(src, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line
        raise RiaInputError(f"cannot load the model config of {name!r}: {_first_line(exc)}") from None
    check_config(config)  # the family is checked before any weights are read
    source_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise RiaInputError(f"cannot load the tokenizer of {name!r} (a model directory needs its tokenizer files): "
                            f"{_first_line(exc)}") from None
    if tok is None or isinstance(tok, bool):
        raise RiaInputError(f"cannot load the tokenizer of {name!r}: no tokenizer files")
    return src, kwargs, config, tok, source_dtype


def _load_hf_weights(args, src: str, kwargs: dict, device: str, dtype):
    """The model's weights (after every check that needs only the config and the tokenizer)."""
    from transformers import AutoModelForCausalLM
    name = args.model
    mkw = dict(kwargs, dtype=dtype)
    if device == "map":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise RiaInputError("--device map needs the `accelerate` package: pip install accelerate") from None
        mkw["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **mkw)
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt checkpoints, missing shards
        raise RiaInputError(f"cannot load the model weights of {name!r}: {_first_line(exc)}") from None
    if device != "map":
        model.to(device)
    return model


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    return str(dtype).replace("torch.", "")


class _Source:
    """What is known of the model before its weights load: config (dict), tokenizer, devices, dtypes."""

    def __init__(self, args):
        import torch
        self.device = _resolve_device(args.device)
        on_gpu = self.device.startswith("cuda") or (self.device == "map" and torch.cuda.is_available())
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                      "auto": torch.float16 if on_gpu else torch.float32}[args.dtype]
        self.args = args
        if args.model is None:
            from transformers import AutoTokenizer
            if self.device == "map":
                self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.config = json.loads((EMBEDDED_DIR / "config.json").read_text())
            self.source_dtype = self.config.get("dtype") or self.config.get("torch_dtype")
            self.tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR, local_files_only=True)
            self.local_dir: Path | None = EMBEDDED_DIR
            return
        self.src, self.kwargs, config, self.tok, self.source_dtype = _load_hf_tokenizer(args)
        self.config = config.to_dict()
        local = Path(self.src)
        self.local_dir = local if local.is_dir() else None

    @property
    def max_positions(self) -> int | None:
        value = self.config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def param_bytes(self) -> int:
        """Bytes of the parameters in the working dtype: the weight files' size scaled from the
        source dtype (a local checkpoint), else a count from the config."""
        from ._resources import DTYPE_BYTES, model_shape, weight_files
        work = DTYPE_BYTES[_dtype_name(self.dtype)]
        files = weight_files(self.local_dir) if self.local_dir is not None else []
        if files:
            src = DTYPE_BYTES.get(_dtype_name(self.source_dtype) or "", 4)
            return sum(f.stat().st_size for f in files) * work // src
        shape = model_shape(self.config)
        if shape is None:
            return 0
        per_layer = (shape.hidden * shape.head_dim * (2 * shape.heads + 2 * shape.kv_heads)
                     + 3 * shape.hidden * shape.intermediate)
        tied = self.config.get("tie_word_embeddings", True)
        return (shape.layers * per_layer + shape.vocab * shape.hidden * (1 if tied else 2)) * work

    def load(self):
        """(model, tokenizer, device, source_dtype) with the weights."""
        if self.args.model is None:
            from .embedded import load_embedded
            model, _tok = load_embedded(dtype=self.dtype, device=self.device)
            return model, self.tok, self.device, self.source_dtype
        model = _load_hf_weights(self.args, self.src, self.kwargs, self.device, self.dtype)
        return model, self.tok, self.device, self.source_dtype


def _load(args) -> _Source:
    """The model's config and tokenizer (the weights load later, with ``.load()``)."""
    return _Source(args)


def _check_memory(args, src: _Source, nsamples: int, seqlen: int, eval_batch: int | None) -> dict:
    """The run's memory estimate against what its device has (see ``_resources``); returns it for the report."""
    from ._resources import available_memory, check_memory, estimate_run_memory
    device = src.device
    est = estimate_run_memory(
        src.config, param_bytes=src.param_bytes(), dtype=_dtype_name(src.dtype), nsamples=nsamples, seqlen=seqlen,
        batch_size=args.batch_size, need_hessian=_needs_hessian(args), eval_batch=eval_batch,
        offload=bool(args.offload or device == "map"), device="cpu" if device == "map" else device)
    if device == "map":  # accelerate spreads the weights itself; the activations are offloaded to the CPU
        est.parts.pop("model", None)
        available = {"cpu": available_memory("cpu")}
    elif device.startswith("cuda"):
        available = {"gpu": available_memory(device), "cpu": available_memory("cpu")}
    else:
        available = {"cpu": available_memory("cpu")}
    if not args.skip_memory_check:
        check_memory(est, device, available)
    return {"estimate_bytes": est.parts, "available_bytes": available}


def _needs_hessian(args) -> bool:
    """SparseGPT, any --reconstruction and ALPS accumulate an in x in Hessian per shared-input group."""
    return args.method in ("sparsegpt", "alps") or bool(getattr(args, "reconstruction", False))


def _set_threads(args, model) -> str:
    """Choose torch's CPU thread count; returns how it was chosen (recorded in the report)."""
    import torch
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        return "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS"
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    if on_cpu and n_params < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
        return f"auto: 1 thread for a {n_params / 1e6:.1f}M-parameter model on the CPU"
    return "torch default"


# --------------------------------------------------------------------- data ---
def _source(kind: str, path=None, dataset=None) -> dict:
    import hashlib
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path is not None else None
    return {"kind": kind, "path": str(path) if path is not None else None, "dataset": dataset, "sha256": digest}


def _calibration(args, tok, max_positions, nsamples, seqlen, default_path):
    """(windows, source) before any weights load. A text file must hold ``nsamples`` windows of
    ``seqlen`` tokens without reusing a token (more would be the same tokens many times over, and
    memory for nothing): else an error, or with --cap-nsamples fewer windows and a line saying so."""
    from .calibration import calibration_from_dataset, check_seqlen, read_text, sample_windows, tokenize_text
    check_seqlen(seqlen, max_positions, "--seqlen")
    if args.calib_dataset:
        return (calibration_from_dataset(tok, args.calib_dataset, nsamples, seqlen, args.seed,
                                         max_positions=max_positions),
                _source("dataset", dataset=args.calib_dataset))
    path = args.calib_text or default_path
    if path is None:
        raise RiaInputError("no calibration data: pass --calib-text PATH or --calib-dataset {c4,wikitext2,ptb}")
    kind = "file" if args.calib_text else "embedded"
    flag = "--calib-text" if args.calib_text else "embedded calibration text"
    ids = tokenize_text(tok, read_text(path, args.text_encoding or "utf-8", flag=flag))
    n = ids.numel()
    if n <= seqlen:
        raise RiaInputError(f"calibration text has {n} tokens, fewer than seqlen+1={seqlen + 1}")
    holds = n // seqlen
    if nsamples > holds:
        if not args.cap_nsamples:
            raise RiaInputError(f"--nsamples {nsamples} x --seqlen {seqlen} = {nsamples * seqlen:,} tokens, but the "
                                f"calibration text ({path}) holds {n:,}: lower --nsamples to at most {holds} (or "
                                f"--seqlen), or pass --cap-nsamples")
        _warn(f"--cap-nsamples: the calibration text holds {holds} windows of {seqlen} tokens ({n:,} tokens); "
              f"using {holds} instead of --nsamples {nsamples}")
        nsamples = holds
    return sample_windows(ids, nsamples, seqlen, args.seed), _source(kind, path=path)


def _eval_ids(args, tok, seqlen, default_path):
    from .evaluation import eval_tokens
    if args.eval_dataset:
        return eval_tokens(tok, dataset=args.eval_dataset, seqlen=seqlen), _source("dataset", dataset=args.eval_dataset)
    path = args.eval_text or default_path
    if path is None:
        raise RiaInputError("no evaluation data: pass --eval-text PATH or --eval-dataset {wikitext2,c4,ptb} "
                            "(or --no-eval)")
    kind = "file" if args.eval_text else "embedded"
    return eval_tokens(tok, path=path, encoding=args.text_encoding or "utf-8"), _source(kind, path=path)


# ---------------------------------------------------------------------- run ---
def _settings(args, spec, nsamples, seqlen, device, dtype) -> dict:
    ria = args.method == "ria" or (args.permute and args.method in ("sparsegpt", "alps"))  # RIA score for CP
    gptq = args.method == "sparsegpt" or args.reconstruction == "obs"
    hess = gptq or args.method == "alps" or bool(args.reconstruction)
    return {"method": args.method, "sparsity_type": str(spec) if spec.is_nm else "unstructured",
            "sparsity_ratio": spec.ratio, "n": spec.n if spec.is_nm else None, "m": spec.m if spec.is_nm else None,
            "a": (0.5 if args.a is None else args.a) if ria else None, "per_output": args.per_output,
            "permute": args.permute, "lsa": (args.lsa is not False) if args.permute else None,
            "blocks": (args.blocks or 1) if args.permute else None, "reconstruction": bool(args.reconstruction),
            "reconstruction_kind": args.reconstruction, "blocksize": (args.blocksize or 128) if gptq else None,
            "percdamp": (0.01 if args.percdamp is None else args.percdamp) if hess else None,
            "batch_size": args.batch_size, "offload": bool(args.offload or args.device == "map"),
            "backend": args.backend, "layerwise": args.layerwise, "beta": args.beta,
            "owl_lambda": (0.08 if args.owl_lambda is None else args.owl_lambda) if args.layerwise == "owl" else None,
            "owl_m": (5.0 if args.owl_m is None else args.owl_m) if args.layerwise == "owl" else None,
            "seed": args.seed, "nsamples": nsamples, "seqlen": seqlen, "max_eval_windows": args.max_eval_windows,
            "eval_batch_size": None if args.no_eval else args.eval_batch_size,
            "eval": not args.no_eval, "dense_eval": not (args.no_eval or args.no_dense_eval),
            "sparse_inference": args.sparse_inference, "zero_shot_tasks": _zero_shot_tasks(args),
            "save": args.save,
            "save_dtype": (args.save_dtype or "source") if (args.save or args.save_sparse) else None,
            "save_sparse": args.save_sparse,
            "json": args.json, "overwrite": args.overwrite, "threads": args.threads, "device": device, "dtype": dtype}


def _zero_shot_tasks(args) -> list[str]:
    if not args.eval_zero_shot:
        return []
    from .zero_shot import DEFAULT_TASKS
    if args.eval_zero_shot == "default":
        return list(DEFAULT_TASKS)
    return [t.strip() for t in args.eval_zero_shot.split(",") if t.strip()]


def _ppl_entry(res, seconds: float) -> dict:
    return {"ppl": res.ppl, "windows": res.windows, "tokens": res.tokens, "predicted_tokens": res.predicted_tokens,
            "time_s": seconds}


def _save_dtype(args, source_dtype, work_dtype):
    """The dtype --save and --save-sparse write: --save-dtype, default the source checkpoint's."""
    import torch
    name = args.save_dtype or "source"
    if name == "source":
        name = _dtype_name(source_dtype)
        if name not in ("float32", "float16", "bfloat16"):
            _warn(f"the source checkpoint records no usable dtype ({name!r}); saving in {_dtype_name(work_dtype)}")
            name = _dtype_name(work_dtype)
    return getattr(torch, name)


def _save(args, model, tok, source_dtype, report, result) -> None:
    """The pruned checkpoint, its tokenizer, permutations and run report, written atomically."""
    import torch

    from ._io import atomic_output_dir, atomic_write_text
    from .pruning import _json_safe
    work_dtype = next(model.parameters()).dtype
    save_dtype = _save_dtype(args, source_dtype, work_dtype)
    state_dict = None
    if save_dtype != work_dtype:  # keep the source's size on disk; the in-memory model stays as it is
        state_dict = {k: (v.to(save_dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    with atomic_output_dir(args.save, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if state_dict is not None:  # save_pretrained records the in-memory dtype; the files hold save_dtype
            config_path = Path(tmp) / "config.json"
            config = json.loads(config_path.read_text())
            config["dtype"] = _dtype_name(save_dtype)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tok.save_pretrained(tmp)
        if report.permutations:  # so the saved model can be run permuted later (load_prune_report)
            report.save_permutations(tmp)
        result["outputs"]["save"] = str(args.save)
        result["settings"]["save_dtype"] = _dtype_name(save_dtype)
        atomic_write_text(Path(tmp) / RUN_MARKER, json.dumps(_json_safe(result), indent=1))


def _sparse_inference_summary(model, n_linears: int, device: str) -> dict:
    """What ``to_sparse_inference`` + the evaluation actually ran: SparseLinear modules, their memory
    mode and the backend each used (per token bucket it saw), and whether a sparse kernel ran."""
    from .sparse_linear import SparseLinear
    used: dict[str, int] = {}
    modes: dict[str, int] = {}
    converted = 0
    for inner in model.modules():  # a runtime-gathered o_proj's SparseLinear is a submodule too
        if not isinstance(inner, SparseLinear):
            continue
        converted += 1
        modes[inner.memory] = modes.get(inner.memory, 0) + 1
        ran = sorted({b for b, _cfg in inner._memo.values()}) or [inner.backend]
        for b in ran:
            used[b] = used.get(b, 0) + 1
    on_gpu = str(device).startswith("cuda")
    no_copy = sum(1 for m in model.modules() if isinstance(m, SparseLinear) and m.cusparselt_without_copy)
    ran_sparse = on_gpu and any(b != "dense" for b in used)
    if converted == 0:
        note = "nothing ran sparse: no linear was converted (none is 2:4)"
    elif not on_gpu:
        note = (f"nothing ran sparse: {converted} linears hold compressed 2:4 weights, but on {device} the compact "
                "format runs its torch reference (decompress, then a dense matmul); the 2:4 kernels need CUDA")
    elif not ran_sparse:
        note = f"nothing ran sparse: all {converted} SparseLinear modules ran dense"
    else:
        note = ", ".join(f"{k} x{v}" for k, v in sorted(used.items()))
    if no_copy:
        note += (f"; {no_copy} memory='cusparselt' modules hold only the compact format (no cuSPARSELt copy can be "
                 f"built on {device})")
    return {"linears": n_linears, "converted": converted, "memory_modes": modes, "backends_used": used,
            "ran_sparse": ran_sparse, "note": note}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(args, argv: list[str] | None = None) -> dict:
    """Check, load, calibrate, (dense eval), prune, (eval), (save), (sparse inference), (JSON);
    returns the run report (schema: docs/report_schema.md)."""
    t_total = time.perf_counter()
    started = _now()
    if args.model is not None:
        from ._ct_config import is_compressed_tensors_checkpoint
        if is_compressed_tensors_checkpoint(Path(args.model).expanduser()):  # already 2:4: load compact, no pruning
            return _run_compressed_tensors(args, argv, t_total, started)
    spec = _check_args(args)  # fail before loading anything (and before importing torch)
    if args.quiet:  # after the checks: importing transformers takes a second
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    from ._io import atomic_write_text
    from ._logging import logger
    from .evaluation import evaluate_perplexity
    from .models import get_adapter
    from .pruning import _json_safe, check_blocks, prune_model
    from .run_report import SCHEMA_VERSION, machine, versions
    sparsity = str(spec) if spec.is_nm else spec.ratio
    embedded = args.model is None
    nsamples = args.nsamples or (32 if embedded else 128)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    src = _load(args)  # config and tokenizer: everything below up to src.load() reads no weights
    max_pos = src.max_positions
    seqlen = args.seqlen or (128 if embedded else min(2048, max_pos or 2048))
    calib_default = eval_default = None
    if embedded:
        calib_default, eval_default = EMBEDDED_DIR.parent / "calib.txt", EMBEDDED_DIR.parent / "eval.txt"
    t_data = time.perf_counter()
    calibration, calib_source = _calibration(args, src.tok, max_pos, nsamples, seqlen, calib_default)
    eval_ids = eval_source = None
    if not args.no_eval:
        eval_ids, eval_source = _eval_ids(args, src.tok, seqlen, eval_default)
    timings["data"] = time.perf_counter() - t_data
    from ._resources import DTYPE_BYTES
    n_params_est = src.param_bytes() // DTYPE_BYTES[_dtype_name(src.dtype)]
    eval_batch = args.eval_batch_size or (16 if n_params_est < SMALL_MODEL_PARAMS else 1)
    memory = _check_memory(args, src, int(calibration.shape[0]), seqlen, None if args.no_eval else eval_batch)
    model, tok, device, source_dtype = src.load()
    timings["load"] = time.perf_counter() - t - timings["data"]
    model.eval()
    threads_source = _set_threads(args, model)
    adapter = get_adapter(model)
    check_blocks(adapter, spec, args.blocks or 1, "--blocks")
    n_layers = adapter.num_layers
    layer_sparsities = None
    layerwise_info = None
    if args.layerwise == "atp" and args.beta is not None:
        from . import layerwise
        layer_sparsities = layerwise.atp_sparsities(n_layers, spec.ratio, args.beta)  # checks beta before work
    progress = not args.quiet
    dtype = _dtype_name(next(model.parameters()).dtype)
    result: dict = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ria-prune", "argv": list(sys.argv[1:] if argv is None else argv), "started_at": started,
                 "finished_at": ""},
        "versions": versions(), "machine": machine(str(device), threads_source),
        "model": {"source": args.model or "embedded", "family": adapter.family, "num_layers": n_layers,
                  "parameters": sum(p.numel() for p in model.parameters()), "source_dtype": _dtype_name(source_dtype),
                  "dtype": dtype, "max_position_embeddings": max_pos},
        "settings": _settings(args, spec, nsamples, seqlen, str(device), dtype),
        "calibration": {"source": calib_source, "nsamples": int(calibration.shape[0]),
                        "seqlen": int(calibration.shape[1]), "tokens": int(calibration.numel()), "seed": args.seed},
        "evaluation": None, "backends": {}, "layerwise": None, "pruning": {}, "sparse_inference": None,
        "zero_shot": None, "outputs": {"save": None, "save_sparse": None, "json": None}, "timings_s": timings,
    }
    small = result["model"]["parameters"] < SMALL_MODEL_PARAMS
    eval_batch = args.eval_batch_size or (16 if small else 1)  # small models: per-forward overhead dominates
    logger.info("memory estimate (bytes): %s; available: %s", memory["estimate_bytes"], memory["available_bytes"])
    if not args.no_eval:
        result["settings"]["eval_batch_size"] = eval_batch
    ev = dict(max_windows=args.max_eval_windows, progress=progress, batch_size=eval_batch)
    if eval_ids is not None:
        result["evaluation"] = {"source": eval_source, "seqlen": seqlen, "available_tokens": int(eval_ids.numel()),
                                "max_eval_windows": args.max_eval_windows, "windows": 0, "tokens": 0}
        if not args.no_dense_eval:
            t = time.perf_counter()
            res = evaluate_perplexity(model, eval_ids, seqlen, desc="dense perplexity", **ev)
            timings["dense_eval"] = time.perf_counter() - t
            result["evaluation"]["dense"] = _ppl_entry(res, timings["dense_eval"])
    prune_kwargs = dict(a=0.5 if args.a is None else args.a, per_output=args.per_output,
                        reconstruction=args.reconstruction, permute=args.permute, lsa=args.lsa is not False,
                        blocks=args.blocks or 1, blocksize=args.blocksize or 128,
                        percdamp=0.01 if args.percdamp is None else args.percdamp, batch_size=args.batch_size,
                        offload=args.offload or args.device == "map", backend=args.backend)
    if args.layerwise != "uniform":
        from . import layerwise
        t = time.perf_counter()
        layerwise_info = {"kind": args.layerwise, "beta": None, "beta_searched": False, "search": None,
                          "owl_outlier_ratios": None}
        if args.layerwise == "atp":
            beta = args.beta
            if beta is None:
                beta, table = layerwise.search_atp_beta(model, calibration, method=args.method, sparsity=spec.ratio,
                                                        progress=progress, **prune_kwargs)
                layerwise_info.update(search=table, beta_searched=True)
                layer_sparsities = layerwise.atp_sparsities(n_layers, spec.ratio, beta)
            layerwise_info["beta"] = beta
        else:
            ratios = layerwise.owl_outlier_ratios(model, calibration, m=result["settings"]["owl_m"])
            layerwise_info["owl_outlier_ratios"] = ratios
            layer_sparsities = layerwise.owl_sparsities(ratios, spec.ratio, result["settings"]["owl_lambda"])
        timings["layerwise"] = time.perf_counter() - t
        layerwise_info["time_s"] = timings["layerwise"]
        layerwise_info["layer_sparsities"] = [float(x) for x in layer_sparsities]
        result["layerwise"] = layerwise_info
    report = prune_model(model, calibration, method=args.method, sparsity=sparsity,
                         layer_sparsities=layer_sparsities, progress=progress, **prune_kwargs)
    timings["prune"] = report.total_time_s
    result["pruning"] = report.to_dict()
    perm = result["pruning"]["permutation"] or {}
    result["backends"] = {"score": report.backend.get("score"), "mask": report.backend.get("mask"),
                          "sparsegpt": report.backend.get("sparsegpt"), "alps": report.backend.get("alps"),
                          "device": report.backend.get("device", ""), "lsa_solver": perm.get("lsa_solver"),
                          "permutation_gain": perm.get("gain_backend")}
    if eval_ids is not None:
        t = time.perf_counter()
        res = evaluate_perplexity(model, eval_ids, seqlen, desc="pruned perplexity", **ev)
        timings["pruned_eval"] = time.perf_counter() - t
        result["evaluation"].update(windows=res.windows, tokens=res.tokens)
        result["evaluation"]["pruned"] = _ppl_entry(res, timings["pruned_eval"])
    if args.eval_zero_shot:
        from .zero_shot import evaluate_zero_shot
        t = time.perf_counter()
        result["zero_shot"] = evaluate_zero_shot(model, tok, tuple(_zero_shot_tasks(args)))
        timings["zero_shot"] = time.perf_counter() - t
    if args.save:
        t = time.perf_counter()
        _save(args, model, tok, source_dtype, report, result)
        timings["save"] = time.perf_counter() - t
    if args.sparse_inference:
        from .inference import to_sparse_inference
        t = time.perf_counter()
        to_sparse_inference(model, report)  # in place, after --save (SparseLinear is not a HF module)
        timings["sparse_inference_convert"] = time.perf_counter() - t
        t = time.perf_counter()
        res = evaluate_perplexity(model, eval_ids, seqlen, desc="sparse-inference perplexity", **ev)
        timings["sparse_inference_eval"] = time.perf_counter() - t
        result["evaluation"]["sparse_inference"] = _ppl_entry(res, timings["sparse_inference_eval"])
        summary = _sparse_inference_summary(model, sum(len(la.linears) for la in report.layers), str(device))
        summary["convert_s"] = timings["sparse_inference_convert"]
        result["sparse_inference"] = summary
        result["backends"]["sparse_linear"] = summary["backends_used"]
    if args.save_sparse:  # after the dense --save; converts in place unless --sparse-inference already did
        from .inference import to_sparse_inference
        from .sparse_checkpoint import save_sparse
        t = time.perf_counter()
        if not args.sparse_inference:
            to_sparse_inference(model, report)
        save_dtype = _save_dtype(args, source_dtype, next(model.parameters()).dtype)
        save_sparse(model, args.save_sparse, report=report, tokenizer=tok, overwrite=args.overwrite, dtype=save_dtype,
                    format=args.save_sparse_format)
        result["settings"]["save_dtype"] = _dtype_name(save_dtype)
        timings["save_sparse"] = time.perf_counter() - t
        result["outputs"]["save_sparse"] = str(args.save_sparse)
    timings["total"] = time.perf_counter() - t_total
    result["tool"]["finished_at"] = _now()
    if args.json:
        result["outputs"]["json"] = str(args.json)
        atomic_write_text(args.json, json.dumps(_json_safe(result), indent=1))
    return _json_safe(result)


def _fmt_ppl(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['ppl']:.3f}" if entry.get("ppl") is not None else "inf"


def _run_compressed_tensors(args, argv, t_total: float, started: str) -> dict:
    """``--model DIR`` holding a compressed-tensors sparse-24-bitmask checkpoint (a model pruned elsewhere):
    load it straight into compact SparseLinear modules, evaluate it, optionally --save-sparse it; no pruning."""
    import torch

    from ._io import validate_output_path
    from .calibration import model_max_positions
    from .evaluation import evaluate_perplexity
    from .run_report import machine, versions
    from .sparse_checkpoint import load_sparse, save_sparse
    parser = build_parser()
    pruning = ["method", "sparsity_ratio", "a", "per_output", "permute", "lsa", "blocks", "reconstruction",
               "blocksize", "percdamp", "layerwise", "beta", "owl_lambda", "owl_m", "nsamples", "calib_text",
               "calib_dataset", "save", "save_dtype", "json", "eval_zero_shot", "sparse_inference", "offload", "backend"]
    given = [k for k in pruning if getattr(args, k) != parser.get_default(k)]
    if given or args.sparsity_type not in ("unstructured", "2:4"):
        flag = "--" + (given[0] if given else "sparsity_type").replace("_", "-")
        raise RiaInputError(f"--model {args.model} is a compressed-tensors checkpoint that is already 2:4 sparse: it "
                            f"is loaded and evaluated as it is, {flag} does not apply")
    device = _resolve_device(args.device)
    if device == "map":
        raise RiaInputError("--device map is not supported for a compressed-tensors checkpoint; use cpu or cuda")
    if args.no_eval and not args.save_sparse:
        raise RiaInputError("--no-eval without --save-sparse: nothing to do with the loaded checkpoint")
    for flag, value, lo in (("--seqlen", args.seqlen, 2), ("--max-eval-windows", args.max_eval_windows, 1),
                            ("--eval-batch-size", args.eval_batch_size, 1), ("--threads", args.threads, 1)):
        if value is not None and value < lo:
            raise RiaInputError(f"{flag} must be >= {lo}, got {value}")
    if args.eval_text is not None and not Path(args.eval_text).is_file():
        raise RiaInputError(f"--eval-text: text file not found: {args.eval_text}")
    if not args.no_eval and not (args.eval_text or args.eval_dataset):
        raise RiaInputError("evaluating a --model checkpoint needs --eval-text PATH or --eval-dataset (or --no-eval)")
    if args.save_sparse:
        validate_output_path(args.save_sparse, kind="dir", flag="--save-sparse", source=args.model,
                             overwrite=args.overwrite, markers=("ria_sparse.json", "config.json"))
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = load_sparse(Path(args.model).expanduser(), device=device, dtype=dtype)
    timings["load"] = time.perf_counter() - t
    tok = None
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(Path(args.model).expanduser(), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - needed only to evaluate
        if not args.no_eval:
            raise RiaInputError(f"cannot load the tokenizer of {args.model!r}: {_first_line(exc)}") from None
    threads_source = _set_threads(args, model)
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    summary = _sparse_inference_summary(model, 0, str(device))
    summary["linears"] = summary["converted"] + n_linears
    result = {"imported": {"format": "compressed-tensors sparse-24-bitmask", "source": args.model},
              "tool": {"name": "ria-prune", "argv": list(sys.argv[1:] if argv is None else argv), "started_at": started},
              "versions": versions(), "machine": machine(str(device), threads_source),
              "model": {"source": args.model, "dtype": _dtype_name(next(model.parameters()).dtype)},
              "evaluation": None, "sparse_inference": summary, "outputs": {"save_sparse": None}, "timings_s": timings}
    if not args.no_eval:
        seqlen = args.seqlen or min(2048, model_max_positions(model) or 2048)
        ids, source = _eval_ids(args, tok, seqlen, None)
        t = time.perf_counter()
        res = evaluate_perplexity(model, ids, seqlen, desc="perplexity", max_windows=args.max_eval_windows,
                                  progress=not args.quiet, batch_size=args.eval_batch_size or 1)
        timings["eval"] = time.perf_counter() - t
        result["evaluation"] = {"source": source, "seqlen": seqlen, "sparse_inference": _ppl_entry(res, timings["eval"])}
    if args.save_sparse:
        save_sparse(model, args.save_sparse, tokenizer=tok, overwrite=args.overwrite, format=args.save_sparse_format)
        result["outputs"]["save_sparse"] = str(args.save_sparse)
    timings["total"] = time.perf_counter() - t_total
    return result


def _summary(r: dict) -> str:
    if r.get("imported"):
        si, ev = r["sparse_inference"], r.get("evaluation")
        lines = [f"ria-prune: {r['model']['source']} ({r['imported']['format']}, {r['model']['dtype']}) loaded on "
                 f"{r['machine']['device']}: {si['converted']} of {si['linears']} linears as compact SparseLinear, "
                 "no pruning"]
        if ev:
            lines.append(f"  perplexity: {_fmt_ppl(ev['sparse_inference'])}   ({ev['sparse_inference']['windows']} "
                         f"windows x {ev['seqlen']}; {si['note']})")
        if r["outputs"]["save_sparse"]:
            lines.append(f"  compressed 2:4 checkpoint: {r['outputs']['save_sparse']}")
        lines.append(f"  total time: {r['timings_s']['total']:.1f} s")
        return "\n".join(lines)
    s, m = r["settings"], r["model"]
    lines = [f"ria-prune: {m['source']} ({m['family']}) on {r['machine']['device']} ({m['dtype']}): "
             f"method {s['method']}, sparsity {s['sparsity_type'] if s['n'] else s['sparsity_ratio']}"]
    ev = r.get("evaluation")
    cal = r["calibration"]
    if ev:
        cap = f", capped by --max-eval-windows {ev['max_eval_windows']}" if ev["max_eval_windows"] else ""
        evaluated = (f"{ev['windows']} windows x {ev['seqlen']} = {ev['tokens']} of {ev['available_tokens']} tokens"
                     f"{cap}")
    else:
        evaluated = "skipped (--no-eval)"
    lines.append(f"  calibration: {cal['nsamples']} x {cal['seqlen']} tokens (seed {cal['seed']}); "
                 f"evaluation: {evaluated}")
    p = r["pruning"]
    if ev and ev.get("dense"):
        lines.append(f"  dense  perplexity: {_fmt_ppl(ev['dense'])}")
    if ev:
        lines.append(f"  pruned perplexity: {_fmt_ppl(ev['pruned'])}   (actual sparsity {p['actual_sparsity']:.4f})")
    else:
        lines.append(f"  pruned (actual sparsity {p['actual_sparsity']:.4f})")
    si = r.get("sparse_inference")
    if si:
        if si["ran_sparse"]:
            lines.append(f"  sparse-inference perplexity: {_fmt_ppl(ev.get('sparse_inference'))}   "
                         f"({si['converted']} of {si['linears']} linears converted to SparseLinear; ran: {si['note']})")
        else:
            lines.append(f"  sparse inference: {si['converted']} of {si['linears']} linears converted; {si['note']}; "
                         f"the converted model's perplexity {_fmt_ppl(ev.get('sparse_inference'))} is a dense run")
    lw = r.get("layerwise")
    if lw:
        if lw["kind"] == "atp":
            how = f"searched over {len(lw['search'])} values" if lw["beta_searched"] else "given"
            lines.append(f"  ATP beta {lw['beta']:.4g} ({how}, {lw['time_s']:.2f} s)")
        else:
            lines.append(f"  OWL outlier pass: {lw['time_s']:.2f} s")
        lines.append("  layer sparsities: " + ", ".join(f"{x:.3f}" for x in lw["layer_sparsities"]))
    b = {k: v for k, v in r["backends"].items() if v and k != "sparse_linear"}
    lines.append(f"  pruning time: {p['total_time_s']:.2f} s   backend: " + ", ".join(f"{k}={v}" for k, v in b.items())
                 + f"   threads: {r['machine']['torch_threads']}")
    cp = p.get("permutation")
    if cp:
        how = (f"blocks={cp['blocks']}" + (f" (used {','.join(map(str, cp['blocks_used']))})"
                                           if cp["blocks_used"] and cp["blocks_used"] != [cp["blocks"]] else "")
               + f", gain {cp['gain_backend']}, LSA {cp['lsa_solver']}") if cp["lsa"] else "allocation only (--no-lsa)"
        slowest = f", slowest layer {cp['max_layer_time_s']:.2f} s" if cp["max_layer_time_s"] is not None else ""
        lines.append(f"  channel permutation: {cp['time_s']:.2f} s over {cp['problems']} problems{slowest}; {how}")
    if r.get("zero_shot"):
        lines.append("  zero-shot: " + json.dumps(r["zero_shot"]))
    lines.append(f"  total time: {r['timings_s']['total']:.1f} s")
    if r["outputs"].get("save"):
        lines.append(f"  saved to {r['outputs']['save']} ({r['settings']['save_dtype']})")
    if r["outputs"].get("save_sparse"):
        lines.append(f"  compressed 2:4 checkpoint: {r['outputs']['save_sparse']} ({r['settings']['save_dtype']})")
    if r["outputs"].get("json"):
        lines.append(f"  JSON report: {r['outputs']['json']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ria-prune``; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    from ._logging import enable_cli_logging
    try:
        args = build_parser().parse_args(argv)
        enable_cli_logging(verbose=args.verbose)
        result = run(args, argv)
        print(_summary(result))
        return 0
    except KeyboardInterrupt:
        print("ria-prune: interrupted", file=sys.stderr)
        return 130
    except (RiaInputError, BackendUnavailableError, FileNotFoundError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ria-prune: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ria-prune: error: {_first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
