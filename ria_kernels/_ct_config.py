"""Which directories hold a compressed-tensors checkpoint: config.json only, no torch (``ria-prune``
asks this before its input checks, which must not import torch)."""
from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT = "sparse-24-bitmask"
QUANT_METHOD = "compressed-tensors"
# the compressed-tensors release whose writer and reader ria_kernels.compressed_tensors follows (tests:
# a checkpoint written by it, and our export read back by it)
PEER_VERSION = "0.14.0.1"
CONFIG_KEYS = ("quantization_config", "compression_config")


def compression_config(directory: str | os.PathLike) -> dict | None:
    """The ``quantization_config`` / ``compression_config`` of ``directory/config.json`` when it is a
    compressed-tensors one, else None."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in CONFIG_KEYS:
        qc = cfg.get(key)
        if isinstance(qc, dict) and (qc.get("quant_method") == QUANT_METHOD or "sparsity_config" in qc):
            return qc
    return None


def is_compressed_tensors_checkpoint(directory: str | os.PathLike) -> bool:
    """``directory`` is a compressed-tensors checkpoint (of any format: loading says which it cannot read)."""
    return compression_config(directory) is not None
