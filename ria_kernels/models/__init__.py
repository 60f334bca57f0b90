"""One adapter per model family, chosen from ``model.config.model_type``."""
from __future__ import annotations

from torch import nn

from .base import LayerInputs, LinearGroup, ModelAdapter, module_device
from .llama import LlamaAdapter, MistralAdapter, Qwen2Adapter
from .opt import OPTAdapter

ADAPTERS: list[type[ModelAdapter]] = [LlamaAdapter, MistralAdapter, Qwen2Adapter, OPTAdapter]


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``; RiaInputError naming the supported families otherwise."""
    from .base import check_supported
    return check_supported(model, ADAPTERS)(model)


__all__ = ["get_adapter", "ModelAdapter", "LinearGroup", "LayerInputs", "ADAPTERS", "module_device"]
