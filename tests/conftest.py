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
- ``make_layer_problem(seed=0, out=48, inp=64, tokens=512)`` -> ``(W, X, H = X^T X)`` of one linear with
  correlated inputs (SparseGPT / LS refit / ALPS tests).
"""
from __future__ import annotations

import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the [test] extra; without it only the property tests are skipped
    settings = None

if settings is not None:
    # Property tests (tests/ops/test_properties.py): "ci" keeps the whole suite within CI's time under
    # the interpreter and draws the same examples every run (derandomize; no example database
    # written), so CI is deterministic; HYPOTHESIS_PROFILE=deep is a long, random local run.
    # deadline=None: interpreter launches take 0.1-10 s depending on the drawn shape.
    _slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=8, deadline=None, suppress_health_check=_slow,
                              derandomize=True, database=None, print_blob=True)
    settings.register_profile("deep", max_examples=300, deadline=None, suppress_health_check=_slow,
                              print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _interpreter_bf16_dot():
    """The Triton CPU interpreter feeds bf16 ``tl.dot`` operands to numpy as their raw uint16
    bits (garbage products); widen them to float32 first, as the GPU's bf16 MMA does exactly.
    Applied once for the whole session, so every bf16 test runs the kernel. Only the
    interpreter's ``create_dot`` is patched, never a kernel; a no-op off the interpreter."""
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as interp
        orig = interp.InterpreterBuilder.create_dot
        convert = interp._convert_float
    except (ImportError, AttributeError):  # another Triton: nothing known to patch
        yield
        return

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        return interp.TensorHandle(convert(h.data, tl.bfloat16, tl.float32, None).view(np.float32), tl.float32)

    interp.InterpreterBuilder.create_dot = lambda self, a, b, d, *rest: orig(self, widen(a), widen(b), d, *rest)
    yield
    interp.InterpreterBuilder.create_dot = orig

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


def make_layer_problem(seed: int = 0, out: int = 48, inp: int = 64, tokens: int = 512):
    """``(W [out, inp], X [tokens, inp], H = X^T X)`` of one linear layer with correlated, unevenly
    scaled inputs (the reconstruction tests: SparseGPT, the LS refit, ALPS)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp ** 0.5 + torch.eye(inp)
    X = torch.randn(tokens, inp, generator=g) @ mix * (torch.rand(inp, generator=g) * 3 + 0.1)  # correlated inputs
    W = torch.randn(out, inp, generator=g)
    return W, X, X.T @ X


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


def cuda_graph_replay(fn, static_x: torch.Tensor, new_x: torch.Tensor):
    """Capture ``fn(static_x)`` in a CUDA graph (after a warm-up on a side stream, so one-time
    work such as kernel compilation, plan creation or config search stays outside the capture),
    then copy ``new_x`` into ``static_x``, poison the captured output with NaN and replay.
    Returns the replayed output, to compare with ``fn``'s reference on ``new_x``."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(static_x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fn(static_x)
    static_x.copy_(new_x)
    static_y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return static_y


# 2:4 matmul checks (tests/ops/test_sparse_mm.py, tests/test_sparse_linear.py): relative error of
# a sparse GPU backend against the float32 reference, per input dtype, and the token counts to test.
SPARSE_MM_REL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
SPARSE_MM_TOKENS = (1, 7, 8, 129, 1024, 8191)


def assert_rel_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """``y`` (a backend's output) within SPARSE_MM_REL[dtype] of the float32 ``ref``, finite everywhere."""
    assert torch.isfinite(y).all(), "output has NaN/inf (unwritten elements of a poisoned buffer?)"
    diff = y.float() - ref
    err = diff.norm() / ref.norm().clamp_min(1e-12)
    assert err <= SPARSE_MM_REL[dtype], f"relative error {float(err):.3e} > {SPARSE_MM_REL[dtype]:.1e}"
    assert diff.abs().max() <= 8 * SPARSE_MM_REL[dtype] * ref.abs().max()


def poison_allocator(nbytes: int) -> None:
    """Fill a freed block with NaN so a kernel that skips elements of its (reused) output shows it."""
    t = torch.full((nbytes // 2 + 1024,), float("nan"), dtype=torch.float16, device="cuda")
    del t


@pytest.fixture(scope="session")
def meta_ops():
    """``torch.ops.ria_kernels_meta_test.pack_2to4_sm80``: the extension's sm80 packer (csrc/cutlass_meta.cpp,
    pure ATen) built for the CPU with torch's cpp_extension, cached in build/meta_cpu_test. Opt-in
    (RIA_KERNELS_COMPILE_CHECK=1: g++, ~1 min the first time). Used by tests/test_build.py and
    tests/ops/test_sparse24_layout.py."""
    if os.environ.get("RIA_KERNELS_COMPILE_CHECK", "0") != "1":
        pytest.skip("set RIA_KERNELS_COMPILE_CHECK=1 to build the CPU metadata-packing test library (g++, ~1 min)")
    from torch.utils.cpp_extension import load

    from ria_kernels import _build

    build_dir = os.path.join(_build.ROOT, "build", "meta_cpu_test")
    os.makedirs(build_dir, exist_ok=True)
    binding = os.path.join(build_dir, "binding.cpp")
    text = ('#include <torch/library.h>\n#include "cutlass_meta.h"\n'
            'TORCH_LIBRARY(ria_kernels_meta_test, m) {\n'
            '  m.def("pack_2to4_sm80(Tensor weight) -> Tensor[]", &ria::cutlass_sp::pack_2to4_sm80);\n}\n')
    if not os.path.exists(binding) or open(binding).read() != text:  # unchanged: no rebuild
        with open(binding, "w") as f:
            f.write(text)
    load(name="ria_kernels_meta_test", sources=[os.path.join(_build.CSRC, "cutlass_meta.cpp"), binding],
         extra_include_paths=[_build.CSRC], build_directory=build_dir, is_python_module=False, verbose=False)
    return torch.ops.ria_kernels_meta_test
