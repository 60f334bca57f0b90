#!/usr/bin/env python3
"""Train the embedded default model of ria-kernels (deterministic, offline).

Corpus: cleaned plain-text pydoc pages of a fixed, sorted list of Python standard
library modules (``ria_kernels.embedded.CORPUS_MODULES``; every machine with Python
has them), split by module into train / calibration / evaluation so the held-out
text is genuinely held out. Tokenizer: byte-level BPE trained on the train split.
Model: a small LLaMA with grouped-query attention, trained on CPU with AdamW and a
cosine learning-rate schedule, saved in float16 with the held-out text under
ria_kernels/assets/:

    assets/embedded/{config.json, model.safetensors, tokenizer files, TRAINING.json}
    assets/calib.txt, assets/eval.txt

Deterministic for a given --steps (fixed seeds, thread count, data order and
deterministic algorithms), unless the --max-minutes safety cap cuts training
short (TRAINING.json then says so).

    python scripts/train_embedded.py --steps 900    # the shipped model (~13.5 min on 2 busy cores)
    python scripts/train_embedded.py --steps 20 --out /tmp/emb   # smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before tokenizers is imported

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
ASSETS = ROOT / "ria_kernels" / "assets"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def train_tokenizer(text_pages: list[str], vocab_size: int):
    """Byte-level BPE over ``text_pages`` wrapped as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(text_pages, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tokenizer(tok, out_dir: Path) -> None:
    """``save_pretrained``, naming the class ``PreTrainedTokenizerFast`` (which every
    transformers version's AutoTokenizer resolves, unlike v5's ``TokenizersBackend``)."""
    tok.save_pretrained(out_dir)
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def llama_config(tok, args):
    """The LLaMA config both training scripts build from their size flags (tied embeddings, RoPE 1e4,
    512 positions, the tokenizer's BOS/EOS)."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=512, rope_theta=10000.0,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=None)


def train_lm(model, train_ids: torch.Tensor, args, *, mininterval: float) -> tuple[int, float, float, bool, float]:
    """AdamW (decay on matrices only, betas 0.9/0.95), warmup + cosine lr (``lr_at``), random windows
    of ``args.seqlen`` tokens, gradient clip 1.0, stop at ``args.steps`` or ``args.max_minutes``.
    Shared by this script and ``train_wikitext_model.py``. Returns ``(steps_done, last_loss,
    loss_ema, stopped_early, train_seconds)``."""
    from tqdm import tqdm
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    n_start = train_ids.numel() - args.seqlen
    model.train()
    start = time.time()
    budget_s = args.max_minutes * 60
    loss_ema, last_loss, steps_done, stopped_early = None, float("nan"), 0, False
    bar = tqdm(range(args.steps), desc="training", unit="step", mininterval=mininterval)
    for step in bar:
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, n_start, (args.batch,), generator=gen).tolist()
        batch = torch.stack([train_ids[s:s + args.seqlen] for s in starts])
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss = loss.item()
        loss_ema = last_loss if loss_ema is None else 0.95 * loss_ema + 0.05 * last_loss
        steps_done = step + 1
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}", refresh=False)
        if time.time() - start > budget_s and steps_done < args.steps:
            stopped_early = True
            break
    bar.close()
    return steps_done, last_loss, loss_ema, stopped_early, time.time() - start


def unigram_ppl(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity on ``eval_ids`` of add-one-smoothed unigram frequencies of ``train_ids``."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[eval_ids].mean()))


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay from ``peak`` to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=900, help="optimizer steps (sets the LR schedule)")
    ap.add_argument("--max-minutes", type=float, default=15.0,
                    help="safety cap on training wall time; stops early (non-deterministically) if hit")
    ap.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2, help="< --heads: grouped-query attention")
    ap.add_argument("--seqlen", type=int, default=128, help="training and evaluation window")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for determinism)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-text-chars", type=int, default=300_000,
                    help="cap on the shipped calib.txt / eval.txt (characters, whole pages)")
    ap.add_argument("--out", type=Path, default=ASSETS, help="assets folder to write")
    args = ap.parse_args(argv)
    for name in ("steps", "vocab", "hidden", "intermediate", "layers", "heads", "kv_heads", "seqlen", "batch",
                 "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        ap.error("--hidden must be divisible by --heads, and --heads by --kv-heads")
    return args


def join_pages(pages: list[tuple[str, str]], max_chars: int) -> str:
    """Whole pages in order while they fit in ``max_chars``."""
    out, n = [], 0
    for _, text in pages:
        if out and n + len(text) > max_chars:
            break
        out.append(text)
        n += len(text) + 1
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from ria_kernels.calibration import tokenize_text
    from ria_kernels.embedded import CORPUS_MODULES, build_corpus
    from ria_kernels.evaluation import perplexity

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()

    print(f"building the corpus from {len(CORPUS_MODULES)} stdlib modules' pydoc pages ...", flush=True)
    corpus = build_corpus()
    train_text = "\n".join(t for _, t in corpus["train"])
    calib_text = join_pages(corpus["calib"], args.max_text_chars)
    eval_text = join_pages(corpus["eval"], args.max_text_chars)
    for split in ("train", "calib", "eval"):
        pages = corpus[split]
        print(f"  {split:5s}: {len(pages):3d} modules, {sum(len(t) for _, t in pages):,} chars", flush=True)

    tok = train_tokenizer([t for _, t in corpus["train"]], args.vocab)
    train_ids = tokenize_text(tok, train_text)
    eval_ids = tokenize_text(tok, eval_text)
    print(f"tokenizer: vocab {len(tok)}; train tokens {train_ids.numel():,}, eval tokens {eval_ids.numel():,}",
          flush=True)

    model = LlamaForCausalLM(llama_config(tok, args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: LLaMA {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"heads {args.heads} / kv {args.kv_heads}, {n_params / 1e6:.2f}M parameters", flush=True)

    steps_done, last_loss, loss_ema, stopped_early, train_s = train_lm(model, train_ids, args, mininterval=2.0)
    if stopped_early:
        print(f"WARNING: --max-minutes {args.max_minutes} reached after {steps_done}/{args.steps} steps", flush=True)

    out_dir = args.out / "embedded"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "model.safetensors").chmod(0o644)  # written owner-only; it ships with the package
    save_tokenizer(tok, out_dir)
    (args.out / "calib.txt").write_text(calib_text, encoding="utf-8")
    (args.out / "eval.txt").write_text(eval_text, encoding="utf-8")

    # Evaluate what was shipped: fp16 weights loaded back in float32, the shipped eval.txt,
    # the CLI's protocol (windows of --seqlen tokens).
    shipped = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True).eval()
    shipped_tok = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    shipped_eval_ids = tokenize_text(shipped_tok, (args.out / "eval.txt").read_text(encoding="utf-8"))
    assert torch.equal(shipped_eval_ids, eval_ids), "the saved tokenizer does not reproduce the trained one"
    print("evaluating the saved model ...", flush=True)
    eval_ppl = perplexity(shipped, shipped_eval_ids, args.seqlen)
    n_windows = shipped_eval_ids.numel() // args.seqlen
    uni_ppl = unigram_ppl(train_ids, eval_ids, len(tok))

    meta = {
        "command": "python scripts/train_embedded.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "tokenizers": __import__("tokenizers").__version__,
        "platform": platform.platform(), "threads": args.threads,
        "corpus": {split: {"modules": [n for n, _ in pages], "chars": sum(len(t) for _, t in pages)}
                   for split, pages in corpus.items()},
        "shipped_text_chars": {"calib": len(calib_text), "eval": len(eval_text)},
        "vocab_size": len(tok), "params": n_params, "train_tokens": train_ids.numel(),
        "steps": steps_done, "steps_planned": args.steps, "stopped_early_by_time_cap": stopped_early,
        "tokens_seen": steps_done * args.batch * args.seqlen,
        "final_train_loss": round(last_loss, 4), "final_train_loss_ema": round(loss_ema, 4),
        "eval_ppl": round(eval_ppl, 3),
        "eval_protocol": f"shipped fp16 weights loaded as float32, all {n_windows} non-overlapping windows of "
                         f"{args.seqlen} tokens of eval.txt",
        "eval_unigram_ppl": round(uni_ppl, 3),
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
    }
    (out_dir / "TRAINING.json").write_text(json.dumps(meta, indent=1) + "\n")
    asset_bytes = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print("\n=== embedded model ===")
    print(f"steps {steps_done}/{args.steps}, tokens seen {meta['tokens_seen']:,}, train {train_s / 60:.1f} min, "
          f"total {meta['total_seconds'] / 60:.1f} min")
    print(f"final train loss {last_loss:.4f} (EMA {loss_ema:.4f})")
    print(f"eval ppl {eval_ppl:.3f} ({n_windows} windows x {args.seqlen}); unigram baseline {uni_ppl:.3f}; "
          f"vocab {len(tok)}")
    print(f"assets {args.out}: {asset_bytes / 1e6:.2f} MB")
    if asset_bytes > 8 * 1024 * 1024:
        print("WARNING: assets exceed the 8 MiB budget", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
