"""Layouts that only a GPU can prove, checked first in ``benchmarks/gpu_check.sh``'s extension slice (right
after the build, before any timing): the compressed values and metadata that the extension produces for
cuSPARSELt and CUTLASS, against the libraries' own compressors / torch's reference converters, on weights
with exactly 2 non-zeros in every group of 4 (no degenerate groups: there the encoders legitimately differ,
design note ``one-copy-24-format.md`` section 4.5).

What each GPU test proves (and who relies on it):

* sm80 CUTLASS (any GPU >= 8.0): the extension's own packer (``cutlass_compress``, ``csrc/cutlass_meta.cpp``)
  equals torch's CUTLASS-layout converter (``sparse_semi_structured_from_dense_cutlass``): values are the
  compact values, metadata is CUTLASS's reordered layout, which is ``compact_to_sm80_meta`` of the compact
  metadata. The sm80 kernel reads this, and its GEMM on (compact values, converted metadata) matches the
  reference.
* sm90 CUTLASS (compute capability 9.0): CUTLASS's own sm90 compressor (``cutlass90_compress``) gives the
  compact values and, as metadata, ``sparse24_layout.compact_to_sm90_meta`` of the compact metadata (a
  word permutation derived from CUTLASS's ``TensorEAtom_16bit`` layout, checked on the CPU against CUTLASS's
  own CuTe layout by tests/ops/test_sparse24_layout.py), and the sm90 GEMM run on (compact values, model
  metadata) matches the reference: the one-copy design's assumption that no CUTLASS compressor is needed.
* cuSPARSELt: the extension's ``cslt_compress`` gives the same bytes as torch's ``torch._cslt_compress``
  (same descriptor: row-major, ld = K, 16-byte alignment), and whether its values section is the compact
  values (the design note's open question; main's code does not rely on it, the one-copy design would).

On a CPU the GPU tests skip; the sm90 converter's own properties (a bijection of 16-bit words, the strides the
design note derives) are checked here on the CPU.
"""
from __future__ import annotations

import pytest
import torch

from ria_kernels.ops import sparse_mm
from ria_kernels.ops.sparse24_layout import compact_to_sm80_meta, compact_to_sm90_meta
from ria_kernels.ops.sparse24_mm import compress_24
from ria_kernels.ops.sparse_mm import sparse_mm_reference
from conftest import assert_rel_close

CUDA = torch.cuda.is_available()
DTYPES = [torch.float16, torch.bfloat16]


def exactly_24(n: int, k: int, dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.Tensor:
    """[n, k] weight with exactly 2 non-zeros in every group of 4, each of magnitude in [0.25, 2.25)
    (no zero, no -0.0, nothing that rounds to zero in fp16/bf16)."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(n, k, generator=g) * 2 + 0.25
    sign = torch.where(torch.rand(n, k, generator=g) < 0.5, -1.0, 1.0)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1).argsort(-1) < 2
    return (mag * sign * keep.reshape(n, k)).to(dtype).to(device)


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


# --------------------------------------------------------------------------- CPU: the sm90 converter itself
@pytest.mark.parametrize("n,k", [(64, 128), (72, 144), (128, 384)])
def test_compact_to_sm90_meta_is_a_word_permutation(n, k):
    words = torch.arange(1, n * k // 16 + 1, dtype=torch.int32).view(n, k // 16)  # distinct, non-zero
    meta = words.to(torch.int16).view(torch.uint8).view(n, k // 8)
    out = compact_to_sm90_meta(meta, n, k)
    assert out.shape == (_round_up(n, 64), _round_up(k, 128) // 8) and out.dtype == torch.uint8
    out_words = out.view(-1).view(torch.int16).to(torch.int32)
    expected = words.view(-1).to(torch.int16).to(torch.int32).sort().values
    assert torch.equal(out_words[out_words != 0].sort().values, expected)
    assert int((out_words != 0).sum()) == n * k // 16  # every word once; the rest is zero padding


def test_compact_to_sm90_meta_strides():
    """The byte strides of the design note's table, one index at a time (n = 128: two atoms along M)."""
    n, k = 128, 256
    n_pad = 128

    def offset(r, c):
        meta = torch.zeros(n, k // 8, dtype=torch.uint8)
        meta[r, 2 * c] = 0x5A  # low byte of word c
        meta[r, 2 * c + 1] = 0xC3
        flat = compact_to_sm90_meta(meta, n, k).view(-1)
        (where,) = torch.nonzero(flat, as_tuple=True)
        assert where.tolist() == [int(where[0]), int(where[0]) + 1] and flat[where].tolist() == [0x5A, 0xC3]
        return int(where[0])

    assert offset(0, 0) == 0
    assert offset(8, 0) == 2       # row bit 3
    assert offset(0, 2) == 4       # (c % 8) // 2
    assert offset(1, 0) == 16      # row % 8
    assert offset(0, 1) == 128     # c % 2
    assert offset(16, 0) == 256    # (row % 64) // 16
    assert offset(64, 0) == 1024   # next atom along M
    assert offset(0, 8) == n_pad * 16  # next atom along K


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cutlass_converter_values_are_the_compact_values_on_cpu(dtype):
    """The half of the sm80 claim a CPU can check: torch's CUTLASS-layout converter keeps the same values."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = exactly_24(64, 128, dtype, seed=1)
    ref_values, _ = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(ref_values, compress_24(w)[0])


# --------------------------------------------------------------------------- GPU
def _need(available: str, cc: tuple[int, int] | None = None):
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    if not sparse_mm.load_ops():
        pytest.skip(f"extension unavailable: {sparse_mm.extension_status()}")
    ops = torch.ops.ria_kernels
    if not hasattr(ops, available) or not getattr(ops, available)():
        pytest.skip(f"this build of the extension says {available}() is False")
    if cc is not None and torch.cuda.get_device_capability() != cc:
        pytest.skip(f"needs compute capability {cc[0]}.{cc[1]}, got {torch.cuda.get_device_capability()}")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(64, 128), (256, 512)])
def test_sm80_cutlass_compress_matches_torch_cutlass_converter(dtype, n, k):
    _need("cutlass_available")
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = exactly_24(n, k, dtype, seed=n + k, device="cuda")
    values, meta = torch.ops.ria_kernels.cutlass_compress(w)  # the sm80 op itself (the wrapper picks sm90 on Hopper)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(w)
    compact_values, _ = compress_24(w)
    assert torch.equal(values, compact_values), "sm80 values are not the compact values"
    assert torch.equal(values, ref_values), "sm80 values differ from torch's CUTLASS converter"
    assert meta.dtype == torch.int16 and meta.numel() == ref_meta.numel()
    assert torch.equal(meta.reshape(-1), ref_meta.reshape(-1).view(torch.int16)), \
        "sm80 metadata differs from torch's CUTLASS converter (reorder_meta layout)"
    _, compact_meta = compress_24(w)
    assert torch.equal(meta, compact_to_sm80_meta(compact_meta, n, k)), \
        "sm80 metadata differs from compact_to_sm80_meta of the compact metadata"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 64, 1024])
def test_sm80_gemm_on_compact_values_and_converted_metadata(dtype, tokens):
    _need("cutlass_available")
    n, k = 256, 512
    w = exactly_24(n, k, dtype, seed=tokens + 7, device="cuda")
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(tokens + 2)).to(dtype).cuda()
    values, meta = compress_24(w)
    y = torch.ops.ria_kernels.cutlass_sparse_mm(x, values, compact_to_sm80_meta(meta, n, k), None, None)
    assert_rel_close(y, sparse_mm_reference(x, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(128, 256), (72, 144), (256, 1024)])
def test_sm90_cutlass_compressor_gives_compact_values_and_model_metadata(dtype, n, k):
    _need("cutlass90_available", cc=(9, 0))
    w = exactly_24(n, k, dtype, seed=3 * n + k, device="cuda")
    values, meta = torch.ops.ria_kernels.cutlass90_compress(w)
    compact_values, compact_meta = compress_24(w)
    assert torch.equal(values, compact_values), "CUTLASS's sm90 compressor's values are not the compact values"
    model = compact_to_sm90_meta(compact_meta, n, k)
    assert meta.shape == model.shape and meta.dtype == torch.uint8
    diff = (meta.cpu() != model.cpu()).nonzero()
    assert diff.numel() == 0, (f"sm90 metadata differs from the model in {diff.shape[0]} of {model.numel()} bytes; "
                               f"first at [row, byte] {diff[:4].tolist()}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 64, 1024])
def test_sm90_gemm_on_compact_values_and_model_metadata(dtype, tokens):
    _need("cutlass90_available", cc=(9, 0))
    n, k = 256, 512
    w = exactly_24(n, k, dtype, seed=tokens, device="cuda")
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(tokens + 1)).to(dtype).cuda()
    values, meta = compress_24(w)
    y = torch.ops.ria_kernels.cutlass90_sparse_mm(x, values, compact_to_sm90_meta(meta, n, k).cuda(), None, None)
    assert_rel_close(y, sparse_mm_reference(x, w), dtype)


def _cslt_pair(dtype, n, k):
    _need("cslt_available")
    if not torch.backends.cusparselt.is_available():
        pytest.skip("torch has no cuSPARSELt to compare with")
    w = exactly_24(n, k, dtype, seed=5 * n + k, device="cuda")
    return w, sparse_mm.cslt_compress(w), torch._cslt_compress(w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(128, 256), (1024, 2048)])
def test_cslt_compress_matches_torch_cslt_compress(dtype, n, k):
    w, ours, theirs = _cslt_pair(dtype, n, k)
    theirs = theirs.contiguous().view(-1).view(torch.uint8)
    versions = (f"ours: cuSPARSELt {torch.ops.ria_kernels.cslt_version()}, torch: "
                f"{torch.backends.cusparselt.version()}")
    assert ours.numel() == theirs.numel(), f"compressed sizes differ: {ours.numel()} vs {theirs.numel()} ({versions})"
    assert torch.equal(ours, theirs), f"compressed bytes differ from torch._cslt_compress ({versions})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(128, 256), (1024, 2048)])
def test_cslt_values_section_is_the_compact_values(dtype, n, k):
    """The design note's open question (section 1.4): is cuSPARSELt's buffer [compact values | its own
    metadata]? A failure here is a finding for the one-copy design, not a bug of today's fast mode."""
    w, ours, _ = _cslt_pair(dtype, n, k)
    compact_values, _ = compress_24(w)
    nbytes = compact_values.numel() * compact_values.element_size()
    assert ours.numel() >= nbytes
    head = ours[:nbytes].view(dtype).view(n, k // 2)
    differ = int((head != compact_values).sum())
    assert differ == 0, f"cuSPARSELt's first {nbytes} bytes are not the row-major compact values ({differ} differ)"
