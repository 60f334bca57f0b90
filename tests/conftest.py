"""Shared test helpers (importable as ``from conftest import ...``) and fixtures.

Everything is built from configs, offline, in float32 on the CPU, in well under a second:

- ``FAMILIES = ("llama", "mistral", "qwen2", "opt")``, ``VOCAB = 128``.
- ``make_tiny_model(family, seed=0, layers=2)`` -> ``*ForCausalLM`` in eval mode: hidden 64,
  intermediate/ffn 128 (divisible by 16), 4 heads; GQA (2 kv heads) for mistral and qwen2.
  Fixture ``tiny_model`` returns this factory: ``def test_x(tiny_model): m = tiny_model("opt")``.
- ``make_calibration(nsamples=4, seqlen=16, seed=0)`` -> LongTensor [nsamples, seqlen] of ids < VOCAB.
  Fixture ``calibration`` = ``make_calibration()``.
- ``make_tiny_tokenizer(path)`` -> word-level fast tokenizer over ``w0 .. w125`` (ids 2..127), saved
  to ``path`` (use with ``model.save_pretrained(path)`` to get a loadable checkpoint).
- ``make_text(n_words=3000, seed=0)`` -> text of random words that tokenizer knows.
"""
from __future__ import annotations

import pytest
import torch

FAMILIES = ("llama", "mistral", "qwen2", "opt")
VOCAB = 128


def make_tiny_model(family: str, seed: int = 0, layers: int = 2):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, OPTConfig,
                              OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  max_position_embeddings=256)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=128, num_key_value_heads=4, **common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(intermediate_size=128, num_key_value_heads=2, sliding_window=None,
                                                 **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(intermediate_size=128, num_key_value_heads=2, **common))
    elif family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers,
                                         num_attention_heads=4, ffn_dim=128, max_position_embeddings=256,
                                         word_embed_proj_dim=64, do_layer_norm_before=True))
    else:
        raise ValueError(family)
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model


def make_calibration(nsamples: int = 4, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=g)


@pytest.fixture
def calibration():
    return make_calibration()


WORDS = [f"w{i}" for i in range(VOCAB - 2)]


def make_tiny_tokenizer(path):
    """A word-level fast tokenizer over the words ``w0 .. w125``, saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(path)
    return fast


def make_text(n_words: int = 3000, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist())
