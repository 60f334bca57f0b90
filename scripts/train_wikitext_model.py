#!/usr/bin/env python3
"""Train the second quality-table model: a small LLaMA with grouped-query attention on
WikiText-2 (offline, CPU, deterministic for a given --steps unless the time cap hits).

The shared WikiText-2 copy (``--data``, default /work/shared/data/wikitext-2) has only the
``valid`` and ``test`` splits, so the model (and its byte-level BPE tokenizer) is trained on
``valid.txt``; ``test.txt`` is never read here and is the evaluation set of
``benchmarks/quality_table.py`` (calibration windows are drawn from ``valid.txt``, the
training text, as SparseGPT / Wanda / RIA calibrate on C4 *train*). Writes, fp16:

    benchmarks/assets/wikitext_llama/{config.json, model.safetensors, tokenizer files, TRAINING.json}

    OMP_NUM_THREADS=1 python scripts/train_wikitext_model.py --steps 500 --max-minutes 14
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_embedded import llama_config, save_tokenizer, train_lm, train_tokenizer, unigram_ppl  # noqa: E402

OUT = ROOT / "benchmarks" / "assets" / "wikitext_llama"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/wikitext-2"))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=14.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from ria_kernels.calibration import tokenize_text

    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    train_text = (args.data / "valid.txt").read_text(encoding="utf-8")
    pages = [p for p in train_text.split("\n = ") if p.strip()]  # articles, for the BPE trainer
    tok = train_tokenizer(pages, args.vocab)
    train_ids = tokenize_text(tok, train_text)
    print(f"tokenizer vocab {len(tok)}; train tokens {train_ids.numel():,}", flush=True)
    model = LlamaForCausalLM(llama_config(tok, args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    steps_done, last_loss, loss_ema, stopped_early, train_s = train_lm(model, train_ids, args, mininterval=5.0)
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    (args.out / "model.safetensors").chmod(0o644)
    save_tokenizer(tok, args.out)
    test_ids = tokenize_text(tok, (args.data / "test.txt").read_text(encoding="utf-8"))
    meta = {
        "command": "python scripts/train_wikitext_model.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "platform": platform.platform(),
        "threads": args.threads, "train_text": str(args.data / "valid.txt"), "train_tokens": train_ids.numel(),
        "vocab_size": len(tok), "params": n_params, "steps": steps_done, "steps_planned": args.steps,
        "stopped_early_by_time_cap": stopped_early, "tokens_seen": steps_done * args.batch * args.seqlen,
        "final_train_loss": round(last_loss, 4), "final_train_loss_ema": round(loss_ema, 4),
        "test_unigram_ppl": round(unigram_ppl(train_ids, test_ids, len(tok)), 3),
        "note": "test.txt is not used in training; its perplexity is measured by benchmarks/quality_table.py",
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "TRAINING.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: meta[k] for k in ("steps", "final_train_loss_ema", "train_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
