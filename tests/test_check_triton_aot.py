"""The AOT gate's parsing, recording and estimate logic (scripts/check_triton_aot.py), fast:
no compilation. The gate itself runs in .ci/run."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_triton_aot", ROOT / "scripts" / "check_triton_aot.py")
gate = importlib.util.module_from_spec(_spec)
sys.modules["check_triton_aot"] = gate
_spec.loader.exec_module(gate)

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_permuted_rms_norm_kernel' for 'sm_90a'
ptxas info    : Function properties for _permuted_rms_norm_kernel
    40 bytes stack frame, 192 bytes spill stores, 188 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 64 bytes smem, 420 bytes cmem[0]
"""

SASS = """
        Function : _fused_nm_kernel
        /*0000*/                   LDC R1, c[0x0][0x28] ;                      /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_CTAID.X ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/              @!P0 LDG.E.U16 R8, desc[UR4][R2.64+0x2] ;
        /*0040*/                   LDG.E R9, desc[UR4][R6.64] ;
        /*0050*/                   STS.128 [R3], R4 ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0070*/                   LDS.64 R10, [R3+0x8] ;
        /*0080*/                   SHFL.BFLY PT, R12, R11, 0x1, 0x1f ;
        /*0090*/               @P1 STG.E.64 desc[UR4][R14.64], R10 ;
        /*00a0*/                   STL [R1], R12 ;
        /*00b0*/                   NOP ;
        /*00c0*/                   EXIT ;
        /*00d0*/                   BRA 0xd0;
"""


def test_parse_ptxas_log():
    got = gate.parse_ptxas_log(PTXAS_LOG)
    assert got == {"registers": 128, "ptxas_barriers": 1, "ptxas_smem": 64, "stack": 40, "spill_stores": 192,
                   "spill_loads": 188}
    clean = gate.parse_ptxas_log("ptxas info    : Used 32 registers, 380 bytes cmem[0]\n"
                                 "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")
    assert clean["registers"] == 32 and clean["spill_stores"] == 0 and clean["ptxas_barriers"] == 0


def test_sass_stats():
    got = gate.sass_stats(SASS)
    assert got["sass_instructions"] == 13  # NOP excluded
    assert (got["bar"], got["shared_ops"], got["shfl"], got["local_ops"]) == (1, 2, 1, 1)
    assert (got["ldg"], got["stg"], got["widest_ldg"], got["widest_stg"]) == (3, 1, 128, 64)
    assert gate._access_bits("LDG.E.U8") == 8 and gate._access_bits("LDG.E.EL") == 32


def test_problems_flag_spills_and_errors():
    row = {**gate.parse_ptxas_log(PTXAS_LOG), **gate.sass_stats(SASS)}
    assert any("spills" in p for p in gate.problems(row))
    assert gate.problems({"error": "PTXASError: boom\nmore"}) == ["compile error: PTXASError: boom"]
    ok = {**gate.parse_ptxas_log("Used 40 registers\n0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
          **gate.sass_stats("/*0000*/ EXIT ;")}
    assert gate.problems(ok) == []


def test_problems_flag_shared_memory_over_the_arch_limit():
    ok = {**gate.parse_ptxas_log("Used 40 registers\n0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
          **gate.sass_stats("/*0000*/ EXIT ;")}
    # fp32 sparse24_mm's old decode tile: 167,936 B, over sm_80's 166,912 B but within sm_90's 232,448 B
    assert gate.problems({**ok, "arch": "sm_80", "shared_bytes": 166_912}) == []
    assert gate.problems({**ok, "arch": "sm_80", "shared_bytes": 167_936}) == [
        "shared memory 167936 B over the sm_80 limit of 166912 B per block"]
    assert gate.problems({**ok, "arch": "sm_90a", "shared_bytes": 167_936}) == []
    assert gate.problems({**ok, "arch": "sm_90a", "shared_bytes": 232_449})
    assert gate.problems({**ok, "arch": "sm_75", "shared_bytes": 0}) == ["no shared-memory limit known for arch 'sm_75'"]
    assert set(gate.SMEM_LIMIT) == {f"sm_{a}{'a' if a == 90 else ''}" for a in gate.ARCHS}


def test_occupancy_and_launch_estimate():
    assert gate.blocks_per_sm(32, 4, 0) == 16       # 2048 threads / 128
    assert gate.blocks_per_sm(128, 4, 0) == 4       # 65536 regs / (128 * 128)
    assert gate.blocks_per_sm(32, 4, 100 * 1024) == 2
    row = {"kernel": "k", "registers": 32, "num_warps": 4, "shared_bytes": 0, "sass_instructions": 100}
    use = {"label": "x", "grid": [132 * 16 * 10, 1, 1], "bytes": int(4.3e12 * 1e-3)}  # 1 ms of DRAM traffic
    est = gate.launch_estimate(row, use)
    assert est["waves"] == 10 and est["bound"] == "dram" and abs(est["time_us"] - 1000) < 1e-6
    heavy = gate.launch_estimate({**row, "sass_instructions": 10 ** 5}, use)
    assert heavy["bound"] == "issue" and heavy["time_us"] > 1000


def test_estimate_and_markdown_from_rows():
    row = {"triton": "9.9", "arch": "sm_90a", "kernel": "prune_fused._fused_nm_kernel", "config": "M=4",
           "registers": 40, "num_warps": 4, "shared_bytes": 0, "sass_instructions": 300, "spill_stores": 0,
           "spill_loads": 0, "bar": 0, "shared_ops": 0, "shfl": 0, "widest_ldg": 128, "widest_stg": 128,
           "uses": [{"label": "fused_prune ria 2:4 fp16 8192x28672", "grid": [2048, 112, 1], "bytes": 2 * 10 ** 9}]}
    est = gate.estimate([row], "9.9")
    assert [e["op"] for e in est] == ["fused RIA 2:4 prune fp16 8192x28672"]
    assert est[0]["moved_bytes"] == 2 * 10 ** 9 and 0 < est[0]["pct_copy"] <= 100
    md = gate.markdown([{"triton": "9.9", "rows": [row], "cases": [], "total_s": 1.0}], est)
    assert "| 9.9 | sm_90a | prune_fused._fused_nm_kernel | M=4 | 40 | 0 | 0 | 300 | 0 | 0 | 0 | 128 | 128 |" in md


def test_recorder_records_without_running():
    """A launch through JITFunction.run is bound for each arch (signature, constexprs, alignment
    attributes, grid) and nothing executes: works with CPU tensors and no GPU."""
    torch = pytest.importorskip("torch")
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    kernel = JITFunction(copy_kernel)  # not triton.jit: the suite runs with TRITON_INTERPRET=1
    x = torch.empty(1000, dtype=torch.float16)
    y = torch.full((1000,), 7.0, dtype=torch.float16)
    rec = gate.Recorder()
    with rec.installed():
        rec.label = "copy"
        kernel[(triton.cdiv(1000, 256),)](x, y, 1000, BLOCK=256, num_warps=2)
        kernel[(4,)](x, y, 1000, BLOCK=256, num_warps=2)  # same config: de-duplicated
    assert torch.equal(y, torch.full((1000,), 7.0, dtype=torch.float16))  # nothing ran
    assert rec.count == 2 and sorted(l.arch for l in rec.launches.values()) == list(gate.ARCHS)
    launch = next(iter(rec.launches.values()))
    assert launch.signature["x_ptr"] == "*fp16" and launch.options.num_warps == 2
    assert len(launch.uses) == 2 and launch.uses[0][1] == (4, 1, 1) and launch.uses[0][2] == 4000
    assert "BLOCK=256" in launch.config()
    assert JITFunction.run is not None and "recorder" not in repr(JITFunction.run)
