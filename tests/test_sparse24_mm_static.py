"""The static-estimate script's pure parts (scripts/sparse24_mm_static.py), fast: no compilation."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sparse24_mm_static", ROOT / "scripts" / "sparse24_mm_static.py")
static = importlib.util.module_from_spec(_spec)
sys.modules["sparse24_mm_static"] = static
_spec.loader.exec_module(static)

from ria_kernels.ops import sparse24_mm as S  # noqa: E402

# a prologue, a 5-instruction loop (0x0030..0x0070, closed by the backward BRA) with a NOP, an epilogue
SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_CTAID.X ;
        /*0020*/                   BRA 0x80 ;
        /*0030*/                   LOP3.LUT P0, RZ, R4, 0x8, RZ, 0xc0, !PT ;
        /*0040*/               @!P0 SEL R5, R6, RZ, !P1 ;
        /*0050*/                   NOP ;
        /*0060*/                   IMAD.U32 R7, R6, 0x10000, RZ ;
        /*0070*/              @P2 BRA 0x30 ;
        /*0080*/                   STG.E desc[UR4][R2.64], R5 ;
        /*0090*/                   EXIT ;
"""


def test_loop_mix_counts_the_k_loop_only():
    n, mix = static.loop_mix(SASS)
    assert n == 4 and mix == {"LOP3": 1, "SEL": 1, "IMAD": 1, "BRA": 1}


def test_blocks_per_sm():
    # registers (rounded up to 8) x threads, threads (2048), shared memory: the smallest limit wins
    assert static.blocks_per_sm(128, 4, 34816, 90) == 4          # 65536 / (128 * 128)
    assert static.blocks_per_sm(146, 4, 0, 90) == 3              # 152 * 128 = 19456 -> 3
    assert static.blocks_per_sm(64, 4, 100 * 1024, 90) == 2      # 228 KiB / 100 KiB
    assert static.blocks_per_sm(64, 4, 100 * 1024, 80) == 1      # 164 KiB / 100 KiB
    assert static.blocks_per_sm(32, 32, 0, 90) == 2              # 2048 threads / 1024


def test_model_bounds_by_hand():
    gpu = dict(name="toy", dram=1e12, sms=10, clock=1e9, mma=1e14)
    t, n, k = 1, 640, 1024
    cfg = S.Sparse24Config(64, 16, 128, 2, 4, 3, 128)
    comp = dict(loop=100, alu=40, imad=10, registers=128, shared=1000)
    r = static.model(t, n, k, cfg, None, comp, gpu, 90)
    (gn, gs, gt), kps = S.launch_grid(t, n, k, cfg)
    assert (gn, gs, gt) == (10, 2, 1) and r["programs"] == 20
    w = n * k // 2 * 2 + n * k // 8
    moved = w + 2 * t * k + 2 * t * n + 2 * 2 * t * n * 4
    assert r["kernel_bytes"] == moved and r["partial_bytes"] == 2 * 2 * t * n * 4
    steps = kps // 128                                            # 4 K-steps per split
    per_sm = 2                                                    # 20 programs on 10 SMs
    assert r["bounds_us"]["dram"] == pytest.approx(moved / 1e12 * 1e6, abs=0.01)
    assert r["bounds_us"]["issue"] == pytest.approx(per_sm * steps * 100 * 4 / (4 * 1e9) * 1e6, abs=0.01)
    assert r["bounds_us"]["alu"] == pytest.approx(per_sm * steps * 40 * 4 / (2 * 1e9) * 1e6, abs=0.01)
    assert r["bounds_us"]["mma"] == pytest.approx(2 * 16 * n * k / 1e14 * 1e6, abs=0.01)
    dense = max((2 * n * k + 2 * t * k + 2 * t * n) / 1e12, 2 * t * n * k / 1e14)
    assert r["dense_us"] == pytest.approx(dense * 1e6, abs=0.01)
    assert r["bound"] == max(r["bounds_us"], key=r["bounds_us"].get)
    assert r["speedup"] == pytest.approx(r["dense_us"] / r["kernel_us"], abs=0.01)


def test_markdown_names_every_estimate():
    gpu = static.GPUS["h200"]
    cfg = S.launch_config(1, 4096, 4096, gpu["sms"], torch.float16)
    comp = dict(loop=357, alu=189, imad=61, registers=116, shared=34816, spill_stores=0, spill_loads=0,
                mix={"IMAD": 61, "SEL": 61}, config=static.cfg_label(cfg), variant="split-K", block_n=64,
                block_k=128, num_warps=4, blocks_per_sm=4)
    est = static.model(1, 4096, 4096, cfg, None, comp, gpu, 90)
    est["config_label"] = static.cfg_label(cfg)
    res = dict(date="d", command="c", load="l", triton="t", target="sm_90a", commit="x", gpu=gpu,
               compiled=[comp], estimates=[est], notes=["- n"])
    md = static.markdown(res)
    assert "NOT a measurement" in md and "| 4096x4096 | 1 |" in md and f"**{est['speedup']}**" in md
    assert "maxnreg 128" in md
