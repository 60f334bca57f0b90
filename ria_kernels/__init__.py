"""ria-kernels: post-training pruning of LLMs (RIA, Wanda, SparseGPT, ...) and the
kernels that make the pruned models run faster on NVIDIA GPUs."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from ._errors import BackendUnavailableError, RiaInputError  # noqa: E402
from .ops.nm_mask import nm_mask, unstructured_mask  # noqa: E402
from .ops.ria_score import pruning_score, ria_score  # noqa: E402
from .ops.rms_norm import permuted_rms_norm  # noqa: E402

# Heavier pieces (transformers, the CUDA extension) load on first use.
_LAZY = {
    "prune_model": "ria_kernels.pruning",
    "PruneReport": "ria_kernels.pruning",
    "load_prune_report": "ria_kernels.pruning",
    "get_adapter": "ria_kernels.models",
    "SparseLinear": "ria_kernels.sparse_linear",
    "channel_permutation": "ria_kernels.permutation",
    "to_sparse_inference": "ria_kernels.inference",
    "save_sparse": "ria_kernels.sparse_checkpoint",
    "load_sparse": "ria_kernels.sparse_checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ria_kernels' has no attribute {name!r}")


__all__ = ["ria_score", "pruning_score", "nm_mask", "unstructured_mask", "permuted_rms_norm",
           "RiaInputError", "BackendUnavailableError", *_LAZY]
