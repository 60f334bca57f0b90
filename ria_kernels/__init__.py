"""ria-kernels: post-training pruning of LLMs (RIA, Wanda, SparseGPT, ...) and the
kernels that make the pruned models run faster on NVIDIA GPUs."""
from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

from ._errors import BackendUnavailableError, RiaInputError  # noqa: E402

# Everything that needs torch loads on first use, so that ``ria-prune`` checks its flags (and
# exits 2 on a bad one) without importing torch, Triton or transformers first.
_LAZY = {
    "nm_mask": "ria_kernels.ops.nm_mask",
    "unstructured_mask": "ria_kernels.ops.nm_mask",
    "pruning_score": "ria_kernels.ops.ria_score",
    "ria_score": "ria_kernels.ops.ria_score",
    "permuted_rms_norm": "ria_kernels.ops.rms_norm",
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
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule such as ria_kernels.ops
    raise AttributeError(f"module 'ria_kernels' has no attribute {name!r}")


__all__ = ["ria_score", "pruning_score", "nm_mask", "unstructured_mask", "permuted_rms_norm",
           "RiaInputError", "BackendUnavailableError", *_LAZY]
