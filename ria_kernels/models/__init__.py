"""One adapter per model family, chosen from ``model.config.model_type``
(never from the model's name): llama, mistral, qwen2, opt."""
from __future__ import annotations

from torch import nn

from .._errors import RiaInputError
from .base import LayerInputs, LinearGroup, ModelAdapter, check_supported, materialized, module_device, to_device
from .llama import LlamaAdapter, MistralAdapter, Qwen2Adapter
from .opt import OPTAdapter

ADAPTERS: list[type[ModelAdapter]] = [LlamaAdapter, MistralAdapter, Qwen2Adapter, OPTAdapter]
SUPPORTED_MODEL_TYPES = tuple(t for cls in ADAPTERS for t in cls.model_types)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``; RiaInputError naming the supported families otherwise."""
    return check_supported(model, ADAPTERS)(model)


def check_config(config) -> None:
    """RiaInputError unless ``config.model_type`` is supported (before loading weights)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RiaInputError(f"unsupported model architecture {model_type!r}; "
                            f"supported model_type values: {sorted(SUPPORTED_MODEL_TYPES)}")


__all__ = ["get_adapter", "check_config", "ModelAdapter", "LinearGroup", "LayerInputs", "ADAPTERS",
           "SUPPORTED_MODEL_TYPES", "module_device", "materialized", "to_device"]
