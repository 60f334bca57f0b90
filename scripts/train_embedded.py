#!/usr/bin/env python3
"""Train the embedded default model of ria-kernels (deterministic, offline).

Corpus: plain-text pydoc pages of the Python standard library (every machine with
Python has them), split by module into train / calibration / evaluation so the
held-out text is genuinely held out. Tokenizer: byte-level BPE trained on the
train split. Model: a small LLaMA (grouped-query attention), trained on CPU for a
bounded time, saved in float16 with the held-out text under ria_kernels/assets/.

    python scripts/train_embedded.py --max-minutes 8
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import json
import math
import platform
import pydoc
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
ASSETS = ROOT / "ria_kernels" / "assets"
# Modules with side effects on import, GUI or platform-specific, or test suites.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
        "msvcrt", "winreg", "winsound", "_winapi", "nt", "msilib", "_msi", "pydoc_data", "xxsubtype",
        "__phello__", "_overlapped", "asyncio.windows_events", "readline", "curses"}
MAX_CHARS_PER_MODULE = 60_000


def module_names() -> list[str]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    return names


def render(name: str) -> str | None:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = importlib.import_module(name)
            text = pydoc.render_doc(mod, renderer=pydoc.plaintext)
    except BaseException:  # noqa: BLE001 - any failure just skips the module
        return None
    # drop the FILE section (machine-specific paths)
    text = text.split("\nFILE\n")[0]
    return text[:MAX_CHARS_PER_MODULE]


def build_corpus() -> dict[str, str]:
    """Deterministic split by module: every 12th module -> eval, the next -> calib."""
    parts = {"train": [], "calib": [], "eval": []}
    docs = [(n, render(n)) for n in module_names()]
    docs = [(n, t) for n, t in docs if t]
    for i, (_, text) in enumerate(docs):
        split = "eval" if i % 12 == 5 else "calib" if i % 12 == 6 else "train"
        parts[split].append(text)
    return {k: "\n\n".join(v) for k, v in parts.items()}


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([text[i:i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-minutes", type=float, default=8.0, help="training time budget (wall clock)")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()

    from tqdm import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    corpus = build_corpus()
    print({k: len(v) for k, v in corpus.items()}, "characters")
    tok = train_tokenizer(corpus["train"], args.vocab)
    ids = torch.tensor(tok(corpus["train"], add_special_tokens=False).input_ids, dtype=torch.long)
    eval_ids = torch.tensor(tok(corpus["eval"], add_special_tokens=False).input_ids, dtype=torch.long)
    print(f"train tokens {ids.numel()}, eval tokens {eval_ids.numel()}")

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    warmup = 100
    total = args.max_steps
    budget = args.max_minutes * 60
    model.train()
    start = time.time()
    bar = tqdm(range(total), desc="training", unit="step")
    loss_ema = None
    step = 0
    for step in bar:
        # cosine schedule over the step budget, cut short by the time budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        frac_time = (time.time() - start) / budget
        lr *= max(0.05, 1 - frac_time) if frac_time > 0.8 else 1.0
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, ids.numel() - args.seqlen - 1, (args.batch,), generator=gen)
        batch = torch.stack([ids[s:s + args.seqlen] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = float(loss) if loss_ema is None else 0.98 * loss_ema + 0.02 * float(loss)
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.2e}")
        if time.time() - start > budget:
            break
    train_s = time.time() - start
    model.eval()
    from ria_kernels.evaluation import perplexity
    ppl = perplexity(model, eval_ids, args.seqlen, max_windows=200)

    out_dir = args.out / "embedded"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    for split in ("calib", "eval"):
        (args.out / f"{split}.txt").write_text(corpus[split][:200_000], encoding="utf-8")
    meta = {
        "command": "python scripts/train_embedded.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "params": n_params, "steps": step + 1, "train_seconds": round(train_s, 1),
        "final_train_loss_ema": round(loss_ema, 4), "eval_ppl_fp32_200_windows": round(ppl, 3),
        "total_seconds": round(time.time() - t0, 1), "args": {k: str(v) for k, v in vars(args).items()},
    }
    (out_dir / "TRAINING.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
