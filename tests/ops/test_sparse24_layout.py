"""CPU proofs of the device orders of the compact 2:4 metadata (ria_kernels/ops/sparse24_layout.py, issue 22).

* sm80: against torch's reference CUTLASS converter (``sparse_semi_structured_from_dense_cutlass``) on weights
  with exactly 2 non-zeros per group (values and metadata), against torch's decoder on weights with degenerate
  groups, and against the extension's own packer ``pack_2to4_sm80`` (csrc/cutlass_meta.cpp built for the CPU
  by the ``meta_ops`` fixture, opt-in: RIA_KERNELS_COMPILE_CHECK=1).
* sm90: against CUTLASS's own CuTe layouts, evaluated for every metadata nibble of several shapes by
  ``csrc/tools/sm90_meta_layout.cpp``, compiled here with the system g++ (cached in build/sm90_meta_layout/).
  It needs the nvidia-cutlass headers (RIA_CUTLASS_INCLUDE, else CUTLASS_DIR / an installed nvidia-cutlass
  wheel as ria_kernels._build finds them, else check_csrc.sh's .cutlass/cutlass) and the CUDA toolkit's CCCL
  headers that CuTe includes ($CUDA_HOME/include[/cccl]); without them those tests skip with the reason,
  unless RIA_CUTLASS_REQUIRED=1 (CI: .ci/run downloads the wheel), where they fail.
* Both converters: exact inverses (hypothesis over shapes), clear errors, and :func:`meta_layout_for`.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess

import pytest
import torch

from ria_kernels import _build
from ria_kernels._errors import RiaInputError
from ria_kernels.ops import sparse24_layout as L
from ria_kernels.ops.sparse24_mm import compress_24, decompress_24
from ria_kernels.ops.sparse_mm import CUTLASS_SHAPE_MULTIPLES

from .test_sparse_mm_layout import exactly_24  # exactly 2 non-zeros (|w| >= 0.25) in every group of 4

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # the [test] extra has it; without it only the property tests skip
    given = None

DTYPES = [torch.float16, torch.bfloat16]


def with_degenerate_groups(n: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """An exactly-2:4 weight, then about a third of its groups reduced to 1 or 0 non-zeros."""
    w = exactly_24(n, k, dtype, seed).view(n, k // 4, 4)
    g = torch.Generator().manual_seed(seed + 1)
    drop = torch.rand(n, k // 4, 4, generator=g) < 0.3
    w = torch.where(drop, torch.zeros((), dtype=dtype), w).view(n, k)
    w[0, :4] = 0
    w[1, 4:8] = torch.tensor([0, 0, 0, 1.5]).to(dtype)
    w[1, 8:12] = torch.tensor([1.5, 0, 0, 0]).to(dtype)
    return w


def random_meta(n: int, k: int, seed: int) -> torch.Tensor:
    """Compact metadata [n, k/8] whose 16-bit words are distinct and non-zero (so a word in the wrong place,
    or a padding word that is not zero, cannot go unnoticed). Any byte value is allowed: the converters move
    whole words and never look at the codes."""
    words = n * k // 16
    assert words < 65536
    g = torch.Generator().manual_seed(seed)
    w = (torch.randperm(65535, generator=g)[:words] + 1).to(torch.int32)
    return torch.where(w >= 32768, w - 65536, w).to(torch.int16).view(torch.uint8).view(n, k // 8)


# --------------------------------------------------------------------------- sm80
SM80_SHAPES = [(32, 32), (32, 64), (64, 128), (96, 320), (256, 512), (160, 1088)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SM80_SHAPES)
def test_sm80_matches_torch_reference_converter(dtype, n, k):
    """Values: the compact values are CUTLASS sm80's compressed A (no conversion). Metadata: the converter's
    int16 buffer is torch's reordered CUTLASS metadata, word for word."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = exactly_24(n, k, dtype, seed=n * 7 + k)
    values, meta = compress_24(w)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(values, ref_values), "compact values are not CUTLASS sm80's compressed A"
    sm80 = L.compact_to_sm80_meta(meta, n, k)
    assert sm80.dtype == torch.int16 and sm80.shape == (n, k // 16) and sm80.is_contiguous()
    assert ref_meta.dtype == torch.int16
    diff = (sm80.reshape(-1) != ref_meta.reshape(-1)).nonzero().view(-1)
    assert diff.numel() == 0, \
        f"{diff.numel()} of {sm80.numel()} sm80 words differ; first flat indices {diff[:4].tolist()}"
    assert torch.equal(L.sm80_to_compact_meta(sm80, n, k), meta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(32, 64), (128, 256)])
def test_sm80_meta_of_degenerate_groups_decodes_with_torch_reference(dtype, n, k):
    """Groups with < 2 non-zeros: torch's encoder picks other positions (so its metadata differs), but
    torch's CUTLASS-layout decoder applied to (compact values, compact_to_sm80_meta(meta)) gives W back:
    the package's own codes are valid sm80 metadata."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

    w = with_degenerate_groups(n, k, dtype, seed=n + k)
    values, meta = compress_24(w)
    dense = sparse_semi_structured_to_dense_cutlass(values, L.compact_to_sm80_meta(meta, n, k))
    assert torch.equal(dense, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(32, 32), (64, 96), (128, 512)])
def test_sm80_matches_the_extensions_packer(meta_ops, dtype, n, k):
    """csrc/cutlass_meta.cpp (what cutlass_compress runs on the GPU), built for the CPU: same values and, in
    sm80 order, the same codes as compress_24 + compact_to_sm80_meta, degenerate groups included."""
    w = with_degenerate_groups(n, k, dtype, seed=3 * n + k)
    ext_values, ext_meta = meta_ops.pack_2to4_sm80(w)
    values, meta = compress_24(w)
    assert torch.equal(ext_values, values)
    sm80 = L.compact_to_sm80_meta(meta, n, k)
    assert ext_meta.dtype == torch.int16 and ext_meta.shape == sm80.shape
    assert torch.equal(ext_meta, sm80)
    assert torch.equal(L.sm80_to_compact_meta(ext_meta, n, k), meta)
    assert torch.equal(decompress_24(values, L.sm80_to_compact_meta(ext_meta, n, k)), w)


# --------------------------------------------------------------------------- sm90 vs CUTLASS's CuTe layouts
TOOL_SRC = os.path.join(_build.ROOT, "csrc", "tools", "sm90_meta_layout.cpp")
SM90_SHAPES = [(64, 128), (128, 256), (192, 384), (72, 144), (200, 400), (8, 16), (256, 1024)]
REQUIRED = os.environ.get("RIA_CUTLASS_REQUIRED", "0") == "1"


def _cutlass_include() -> str | None:
    marker = os.path.join("cutlass", "gemm", "collective", "builders", "sm90_sparse_config.inl")
    env = os.environ.get("RIA_CUTLASS_INCLUDE")
    candidates = [env] if env else []
    candidates.append(_build.find_cutlass())  # CUTLASS_DIR, else an installed nvidia-cutlass wheel
    candidates += sorted(os.path.dirname(os.path.dirname(p)) for p in glob.glob(
        os.path.join(_build.ROOT, ".cutlass", "cutlass", "**", "include", "cutlass", "cutlass.h"), recursive=True))
    for inc in candidates:
        if inc and os.path.isfile(os.path.join(inc, marker)):
            return inc
    return None


def _cuda_includes(homes: list[str] | None = None) -> list[str] | None:
    """The CUDA toolkit's include dirs CuTe needs on the host: cuda_runtime_api.h and CCCL's cuda/std/."""
    if homes is None:
        homes = [h for h in (_build._cuda_home(), "/usr/local/cuda") if h]
    for home in dict.fromkeys(homes):
        inc = os.path.join(home, "include")
        if not os.path.isfile(os.path.join(inc, "cuda_runtime_api.h")):
            continue
        for cccl in (os.path.join(inc, "cccl"), inc):  # CUDA 13 moved CCCL into include/cccl
            if os.path.isfile(os.path.join(cccl, "cuda", "std", "utility")):
                return list(dict.fromkeys([cccl, inc]))
    return None


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"RIA_CUTLASS_REQUIRED=1 but {reason}")
    pytest.skip(reason)


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def test_header_discovery(tmp_path, monkeypatch):
    """RIA_CUTLASS_INCLUDE wins when it holds the sparse config; a folder without it is passed over; the CUDA
    include dirs are CUDA 13's include/cccl + include, or CUDA 12's include alone."""
    monkeypatch.setattr(_build, "find_cutlass", lambda: None)
    monkeypatch.setattr(_build, "ROOT", str(tmp_path / "repo"))  # no .cutlass/ there
    monkeypatch.setenv("RIA_CUTLASS_INCLUDE", str(tmp_path / "empty"))
    assert _cutlass_include() is None
    inc = tmp_path / "cutlass" / "include"
    _touch(inc / "cutlass" / "gemm" / "collective" / "builders" / "sm90_sparse_config.inl")
    monkeypatch.setenv("RIA_CUTLASS_INCLUDE", str(inc))
    assert _cutlass_include() == str(inc)

    cuda = tmp_path / "cuda"
    homes = [str(tmp_path / "none"), str(cuda)]
    assert _cuda_includes(homes) is None
    _touch(cuda / "include" / "cuda_runtime_api.h")
    assert _cuda_includes(homes) is None  # no CCCL
    _touch(cuda / "include" / "cuda" / "std" / "utility")
    assert _cuda_includes(homes) == [str(cuda / "include")]
    _touch(cuda / "include" / "cccl" / "cuda" / "std" / "utility")
    assert _cuda_includes(homes) == [str(cuda / "include" / "cccl"), str(cuda / "include")]


@pytest.fixture(scope="module")
def sm90_tool() -> str:
    """Path of the compiled host program (rebuilt only when its source, headers' location or compiler change)."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        _unavailable("sm90 CuTe layout check: no C++ compiler (g++ or $CXX) to build csrc/tools/sm90_meta_layout.cpp")
    cutlass = _cutlass_include()
    if cutlass is None:
        _unavailable("sm90 CuTe layout check: the nvidia-cutlass headers (cutlass/gemm/collective/builders/"
                     "sm90_sparse_config.inl) were not found: set RIA_CUTLASS_INCLUDE to their include dir, or "
                     "`pip download --no-deps nvidia-cutlass==4.2.0.0` and unzip it (.ci/run does this)")
    cuda = _cuda_includes()
    if cuda is None:
        _unavailable("sm90 CuTe layout check: CuTe needs the CUDA toolkit's host headers (cuda_runtime_api.h and "
                     "CCCL's cuda/std/), not found under $CUDA_HOME/include or /usr/local/cuda/include")
    flags = ["-std=c++17", "-O1", "-Wno-deprecated-declarations", f"-I{cutlass}", *(f"-I{d}" for d in cuda)]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(open(TOOL_SRC, "rb").read() + repr((cxx, version, flags)).encode()).hexdigest()[:16]
    out_dir = os.path.join(_build.ROOT, "build", "sm90_meta_layout", key)
    exe = os.path.join(out_dir, "sm90_meta_layout")
    if not os.path.isfile(exe):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{exe}.tmp{os.getpid()}"
        proc = subprocess.run([cxx, *flags, TOOL_SRC, "-o", tmp], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"host compile of {TOOL_SRC} failed:\n{proc.stderr[-6000:]}"
        os.replace(tmp, exe)  # atomic: a concurrent run sees either no program or a whole one
    return exe


@pytest.fixture(scope="module")
def cute_layouts(sm90_tool) -> dict:
    """{(n, k): int64 [n_pad, k_pad/4] nibble index of every group} and the program's header fields."""
    args = [str(v) for shape in SM90_SHAPES for v in shape]
    proc = subprocess.run([sm90_tool, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"sm90_meta_layout failed ({proc.returncode}): {proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    head = lines[0].split()
    assert head[0] == "sm90_meta_layout", lines[0]
    result = {"header": dict(zip(head[1::2], head[2::2])), "atom": lines[1].removeprefix("atom ")}
    i = 2
    while i < len(lines):
        tag, n, k, n_pad, k_pad = lines[i].split()
        assert tag == "shape"
        n, k, n_pad, k_pad = int(n), int(k), int(n_pad), int(k_pad)
        rows = [list(map(int, line.split())) for line in lines[i + 1:i + 1 + n_pad]]
        assert lines[i + 1 + n_pad] == "end"
        result[(n, k)] = (n_pad, k_pad, torch.tensor(rows, dtype=torch.int64))
        i += n_pad + 2
    return result


def test_cute_program_reports_the_configuration_the_module_assumes(cute_layouts):
    """The headers' CUTLASS is the version csrc/ builds against, and its sparse config has the module's padding
    (TensorEAlignmentM/K) and 8 logical columns per metadata byte."""
    h = cute_layouts["header"]
    assert h["cutlass"] == "4.2.0", \
        f"CUTLASS {h['cutlass']}: the layout was derived for 4.2.0 (nvidia-cutlass==4.2.0.0)"
    assert (int(h["align_m"]), int(h["align_k"]), int(h["k_per_byte"])) == (L.SM90_META_ALIGN_M, L.SM90_META_ALIGN_K, 8)
    assert cute_layouts["atom"] == "((_8,_2,_4),(_16,_2,_4)):((_128,_16,_2048),(_1,_1024,_32))"


@pytest.mark.parametrize("n,k", SM90_SHAPES)
def test_sm90_converter_matches_cute_layout(cute_layouts, n, k):
    """Every metadata nibble (group) of an [n, k] weight sits where CUTLASS's fill_layoutE puts it, every
    padding nibble is zero, and the buffer has CUTLASS's padded shape."""
    n_pad, k_pad, nibble_at = cute_layouts[(n, k)]
    assert (n_pad, k_pad // 8) == L.sm90_meta_shape(n, k)
    total = n_pad * k_pad // 4
    assert torch.equal(nibble_at.view(-1).sort().values, torch.arange(total)), "CuTe layout is not a bijection"
    meta = random_meta(n, k, seed=n + 13 * k)
    out = L.compact_to_sm90_meta(meta, n, k)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (n_pad, k_pad // 8) and out.is_contiguous()
    out_nibbles = torch.stack([out & 0xF, out >> 4], dim=-1).view(-1)          # nibble j = byte j//2, low first
    compact_nibbles = torch.stack([meta & 0xF, meta >> 4], dim=-1).view(n, k // 4)
    expected = torch.zeros(total, dtype=torch.uint8)
    expected[nibble_at[:n, : k // 4].reshape(-1)] = compact_nibbles.reshape(-1)
    diff = (out_nibbles != expected).nonzero().view(-1)
    assert diff.numel() == 0, (f"{diff.numel()} of {total} nibbles differ from CUTLASS's layout; first nibble "
                               f"indices {diff[:4].tolist()}")
    assert torch.equal(L.sm90_to_compact_meta(out, n, k), meta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sm90_converter_on_compress_24_codes(cute_layouts, dtype):
    """The real codes of an exactly-2:4 weight, decoded back through CUTLASS's nibble positions: W."""
    n, k = 72, 144
    n_pad, k_pad, nibble_at = cute_layouts[(n, k)]
    w = exactly_24(n, k, dtype, seed=5)
    values, meta = compress_24(w)
    out = L.compact_to_sm90_meta(meta, n, k)
    nibbles = torch.stack([out & 0xF, out >> 4], dim=-1).view(-1)
    codes = nibbles[nibble_at[:n, : k // 4]].to(torch.int64)                      # [n, k/4], via CuTe's positions
    dense = torch.zeros(n, k // 4, 4, dtype=dtype)
    dense.scatter_(-1, torch.stack([codes & 3, codes >> 2], dim=-1), values.view(n, k // 4, 2))
    assert torch.equal(dense.view(n, k), w)


# --------------------------------------------------------------------------- both: inverses, padding, errors
def _sm80_shapes():
    return st.tuples(st.integers(1, 9).map(lambda a: 32 * a), st.integers(1, 11).map(lambda b: 32 * b))


def _sm90_shapes():
    return st.tuples(st.integers(1, 211), st.integers(1, 29).map(lambda b: 16 * b))


if given is not None:
    @given(shape=_sm80_shapes(), seed=st.integers(0, 2**16))
    def test_sm80_round_trip_property(shape, seed):
        n, k = shape
        meta = random_meta(n, k, seed)
        sm80 = L.compact_to_sm80_meta(meta, n, k)
        assert sm80.shape == (n, k // 16)
        assert torch.equal(sm80.view(-1).sort().values, meta.view(torch.int16).view(-1).sort().values)  # a permutation
        assert torch.equal(L.sm80_to_compact_meta(sm80, n, k), meta)
        assert torch.equal(L.compact_to_sm80_meta(L.sm80_to_compact_meta(sm80, n, k), n, k), sm80)

    @given(shape=_sm90_shapes(), seed=st.integers(0, 2**16))
    def test_sm90_round_trip_property(shape, seed):
        n, k = shape
        meta = random_meta(n, k, seed)
        sm90 = L.compact_to_sm90_meta(meta, n, k)
        n_pad, kb_pad = L.sm90_meta_shape(n, k)
        assert sm90.shape == (n_pad, kb_pad) and n_pad % 64 == 0 and kb_pad % 16 == 0
        words = sm90.view(torch.int16).view(-1)
        assert int((words != 0).sum()) == n * k // 16  # every word once (all non-zero), the rest zero padding
        assert torch.equal(words[words != 0].sort().values, meta.view(torch.int16).view(-1).sort().values)
        assert torch.equal(L.sm90_to_compact_meta(sm90, n, k), meta)
        assert torch.equal(L.compact_to_sm90_meta(L.sm90_to_compact_meta(sm90, n, k), n, k), sm90)
else:  # pragma: no cover
    def test_round_trip_properties_need_hypothesis():
        pytest.skip("hypothesis is not installed (pip install -e .[test])")


def test_converters_run_on_non_contiguous_and_offset_inputs():
    n, k = 64, 128
    big = random_meta(n, 2 * k, seed=1)
    meta = big[:, 1: 1 + k // 8]  # odd byte offset, row stride 2x: not viewable as int16 in place
    ref = meta.contiguous()
    assert torch.equal(L.compact_to_sm80_meta(meta, n, k), L.compact_to_sm80_meta(ref, n, k))
    assert torch.equal(L.compact_to_sm90_meta(meta, n, k), L.compact_to_sm90_meta(ref, n, k))
    assert meta.data_ptr() == big.data_ptr() + 1  # the input is not modified or replaced
    sm80 = L.compact_to_sm80_meta(ref, n, k)
    assert torch.equal(L.sm80_to_compact_meta(sm80.t().contiguous().t(), n, k), ref)


@pytest.mark.parametrize("fn,n,k,match", [
    (L.compact_to_sm80_meta, 48, 64, "multiple of 32"),
    (L.compact_to_sm80_meta, 32, 48, "multiple of 32"),
    (L.compact_to_sm80_meta, 0, 64, "positive"),
    (L.compact_to_sm90_meta, 64, 24, "multiple of 16"),
    (L.compact_to_sm90_meta, 0, 16, "positive"),
    (L.sm80_to_compact_meta, 32, 40, "multiple of 32"),
    (L.sm90_to_compact_meta, 8, 8, "multiple of 16"),
])
def test_shapes_the_layouts_cannot_take_raise(fn, n, k, match):
    with pytest.raises(RiaInputError, match=match):
        fn(torch.zeros(max(n, 1), max(k // 8, 1), dtype=torch.uint8), n, k)


def test_wrong_buffers_raise():
    n, k = 64, 128
    meta = random_meta(n, k, seed=2)
    with pytest.raises(RiaInputError, match=r"uint8 of shape \[64, 16\]"):
        L.compact_to_sm80_meta(meta.view(torch.int16), n, k)
    with pytest.raises(RiaInputError, match=r"shape \[64, 16\]"):
        L.compact_to_sm90_meta(meta[:32], n, k)
    with pytest.raises(RiaInputError, match="int16"):
        L.sm80_to_compact_meta(meta, n, k)
    with pytest.raises(RiaInputError, match=r"\[128, 32\]"):
        L.sm90_to_compact_meta(meta, 72, 144)
    with pytest.raises(RiaInputError, match="ints"):
        L.compact_to_sm90_meta(meta, 64.0, k)
    with pytest.raises(RiaInputError, match="layout must be one of"):
        L.compact_to_layout(meta, n, k, "sm100")
    with pytest.raises(RiaInputError, match="layout must be one of"):
        L.layout_to_compact(meta, n, k, "cslt")


def test_sm90_inverse_refuses_non_zero_padding():
    n, k = 72, 144  # padded to 128 x 256: padding rows 72..127, padding words 9..15 of every row
    meta = random_meta(n, k, seed=3)
    good = L.compact_to_sm90_meta(meta, n, k)
    for r, c in [(n, 0), (0, k // 16), (127, 15)]:  # a padding row, a padding column, the last padding word
        # where word (r, c) of the padded [128, 256/16] words lands: the same permutation as a 128 x 256 weight's
        probe = torch.zeros(128, 256 // 8, dtype=torch.uint8)
        probe[r, 2 * c] = 1
        at = int(L.compact_to_sm90_meta(probe, 128, 256).view(-1).nonzero()[0])
        bad = good.clone()
        assert int(bad.view(-1)[at]) == 0
        bad.view(-1)[at] = 7
        with pytest.raises(RiaInputError, match="padding"):
            L.sm90_to_compact_meta(bad, n, k)
        assert torch.equal(L.sm90_to_compact_meta(bad, n, k, check_padding=False), meta)


@pytest.mark.parametrize("layout,n,k", [("rowmajor", 24, 44), ("sm80", 64, 128), ("sm90", 72, 144)])
def test_layout_dispatch_round_trips(layout, n, k):
    w = exactly_24(n, k, torch.float16, seed=9)
    _, meta = compress_24(w)
    dev = L.compact_to_layout(meta, n, k, layout)
    if layout == "rowmajor":
        assert dev is meta
    assert torch.equal(L.layout_to_compact(dev, n, k, layout), meta)


# --------------------------------------------------------------------------- which layout
@pytest.mark.parametrize("cap,n,k,dtype,want", [
    (None, 4096, 4096, torch.float16, "rowmajor"),           # CPU / no tensor-core kernel
    ((9, 0), 4096, 4096, torch.float16, "sm90"),
    ((9, 0), 4096, 11008, torch.bfloat16, "sm90"),
    ((9, 0), 72, 144, torch.float16, "sm90"),                 # sm90 pads the metadata
    ((9, 0), 4, 16, torch.float16, "rowmajor"),               # n % 8
    ((9, 0), 64, 40, torch.float16, "rowmajor"),              # k % 16
    ((9, 0), 65536, 65536, torch.float16, "rowmajor"),        # n * k >= 2^31: int32 sizes in the kernel
    ((9, 0), 4096, 4096, torch.float32, "rowmajor"),          # fp32 has no 2:4 tensor-core kernel here
    ((8, 0), 4096, 4096, torch.float16, "sm80"),
    ((8, 6), 4096, 11008, torch.bfloat16, "sm80"),
    ((8, 9), 96, 192, torch.float16, "sm80"),
    ((12, 0), 4096, 4096, torch.float16, "sm80"),             # the sm80 kernel runs on any sm80+ GPU but Hopper
    ((8, 0), 72, 128, torch.float16, "rowmajor"),             # n % 32
    ((8, 0), 64, 96, torch.float16, "rowmajor"),              # k % 64 (the kernel; the converter takes k % 32)
    ((7, 5), 4096, 4096, torch.float16, "rowmajor"),          # no sparse tensor cores
])
def test_meta_layout_for(cap, n, k, dtype, want):
    assert L.meta_layout_for(cap, n, k, dtype) == want


def test_meta_layout_for_follows_the_kernel_limits():
    """The multiples come from sparse_mm.CUTLASS_SHAPE_MULTIPLES (the kernels' checks), and every shape it gives
    a device layout can be converted."""
    for arch, cap in (("sm80", (8, 0)), ("sm90", (9, 0))):
        mn, mk = CUTLASS_SHAPE_MULTIPLES[arch]
        assert L.meta_layout_for(cap, mn, mk, torch.float16) == arch
        assert L.meta_layout_for(cap, mn * 3, mk * 5, torch.bfloat16) == arch
        assert L.meta_layout_for(cap, mn + 1, mk, torch.float16) == "rowmajor"
        assert L.meta_layout_for(cap, mn, mk + 4, torch.float16) == "rowmajor"
        n, k = mn * 3, mk * 5
        meta = random_meta(n, k, seed=4)
        assert torch.equal(L.layout_to_compact(L.compact_to_layout(meta, n, k, arch), n, k, arch), meta)
