"""scripts/cutlass_instantiation_table.py: the ptxas-log and kernel-name parsers, the .rodata constant reader,
and the static model's invariants (pure functions; no compile, no GPU)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import cutlass_instantiation_table as tbl  # noqa: E402

from ria_kernels.ops.sparse_mm import CUTLASS_CONFIGS  # noqa: E402

LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 744 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_90a'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 90 registers, used 0 barriers
"""


def test_parse_ptxas():
    foo, bar = tbl.parse_ptxas(LOG)
    assert (foo.name, foo.arch, foo.registers, foo.stack, foo.spill_stores, foo.spill_loads) == \
        ("_Z3fooPf", "sm_90a", 168, 8, 4, 12)
    assert (bar.name, bar.registers, bar.spill_stores) == ("_Z3barv", 90, 0)


def test_kernel_config_from_demangled_names():
    sm80 = ("void cutlass::Kernel<cutlass::gemm::kernel::SparseGemm<cutlass::gemm::threadblock::SparseMmaMultistage<"
            "cutlass::gemm::GemmShape<128, 16, 64>, cutlass::half_t, ...")
    assert tbl.kernel_config("sm80", sm80) == (CUTLASS_CONFIGS["sm80"][1], "f16")
    sm90 = ("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cute::tuple<int, int, int, int>, "
            "cutlass::gemm::collective::CollectiveMma<cutlass::gemm::MainloopSm90TmaGmmaWarpSpecializedSparse<4, "
            "cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> >, ...>, cute::tuple<cute::C<128>, cute::C<32>, cute::C<128> >, "
            "cutlass::bfloat16_t ...>, ..., cutlass::gemm::StreamKScheduler> >")
    assert tbl.kernel_config("sm90", sm90) == (CUTLASS_CONFIGS["sm90"][2], "bf16")
    assert tbl.kernel_config("sm90", sm90.replace("StreamKScheduler", "void")) is None  # no such row
    assert tbl.kernel_config("sm90", "void cutlass::device_kernel<StructuredSparseCompressor<...>>") is None


def test_elf_int32_symbols_reads_rodata_constants(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a host C compiler")
    src = tmp_path / "c.c"
    src.write_text("__attribute__((used)) const int ria_cfg_sm80_1_smem = 73728;\n"
                   "__attribute__((used)) const int ria_cfg_sm80_1_stages = 6;\n"
                   "__attribute__((used)) const int ria_cfg_zero = 0;\nconst int other = 5;\n")
    obj = tmp_path / "c.o"
    subprocess.run([cc, "-c", "-O2", str(src), "-o", str(obj)], check=True, capture_output=True, timeout=60)
    got = tbl.elf_int32_symbols(str(obj), "ria_cfg_")
    assert got == {"ria_cfg_sm80_1_smem": 73728, "ria_cfg_sm80_1_stages": 6, "ria_cfg_zero": 0}
    assert tbl.elf_int32_symbols(str(src), "ria_cfg_") == {}  # not an ELF file


def test_model_invariants():
    gpu = tbl.H200
    for n, k in tbl.SHAPES:
        for t in tbl.TOKENS:
            dense = tbl.dense_estimate(gpu, t, n, k)
            for est, _ in tbl.candidates(gpu, "sm90", t, n, k):
                assert est.mma_waste >= 1.0 and 0 < est.coverage <= 1.0
                # no 2:4 kernel moves fewer bytes than its weight's values + metadata
                assert est.bytes >= n * k * 1.125
                # the roofline ratio never beats the sparse peak (2x), nor the byte ratio when memory-bound
                roof = max(dense.t_mem_us, dense.t_mma_us) / max(est.t_mem_us, est.t_mma_us)
                assert roof <= 2.0
                if dense.t_mem_us >= dense.t_mma_us:
                    assert roof <= 1.79
    # the prefill tile on a decode token count: 32 tiles for 132 SMs
    e = tbl.cutlass_estimate(gpu, "sm90", CUTLASS_CONFIGS["sm90"][0], 1, 4096, 4096)
    assert e.ctas == 32 and e.coverage == pytest.approx(32 / 132) and e.mma_waste == 128
    # a narrower token tile reads its A fragment for fewer FLOPs
    eff16 = tbl.mma_efficiency(gpu, 2048, 16 * 64, 2.0 * 64 * 16 * 32)
    eff64 = tbl.mma_efficiency(gpu, 2048, 64 * 64, 2.0 * 64 * 64 * 32)
    assert 0 < eff16 < eff64 <= 1.0


def test_render_without_compile_rows_says_it_is_an_estimate():
    text = tbl.render([], "cmd", "nvcc x", "0.1 0.2 0.3")
    assert "Nothing on this page is measured on a GPU" in text
    assert "mma.sp GEMV (proposed)" in text and "| 1024 |" in text
