"""Model-family adapters: everything architecture-specific the pruning pipeline
needs (which linears share an input, which norm feeds them, how to run one
decoder layer on captured inputs) lives here, one adapter per family."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .._errors import RiaInputError


@dataclass(frozen=True)
class LinearGroup:
    """Linears of one decoder layer that read the same input tensor."""

    name: str                   # "attn_in" | "attn_out" | "mlp_in" | "mlp_out"
    linears: tuple[str, ...]    # paths relative to the decoder layer
    norm: str | None            # norm whose output is this group's input (None: not a norm output)
    producers: tuple[str, ...]  # linears whose output channels are this group's input channels


@dataclass
class LayerInputs:
    """Hidden states entering a decoder layer, in chunks, with the keyword
    arguments (attention mask, position embeddings, ...) each chunk needs."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


class _Captured(Exception):
    pass


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class ModelAdapter:
    """Base adapter. Subclasses set ``family``, ``norm_kind``, ``groups`` and ``_layers_path``."""

    family: str = ""
    model_types: tuple[str, ...] = ()
    norm_kind: str = "rms"
    groups: tuple[LinearGroup, ...] = ()
    _layers_path: str = "model.layers"
    _drop_kwargs = ("past_key_values", "past_key_value", "use_cache", "output_attentions")

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden_size // self.num_heads

    # -- structure ---------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self._layers_path)

    def linear_names(self) -> list[str]:
        return [n for g in self.groups for n in g.linears]

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        return {n: layer.get_submodule(n) for n in self.linear_names()}

    def full_name(self, layer_index: int, linear: str) -> str:
        return f"{self._layers_path}.{layer_index}.{linear}"

    # -- running -----------------------------------------------------------
    @torch.no_grad()
    def capture_layer_inputs(self, calibration: torch.Tensor, *, batch_size: int = 1,
                             offload: bool = False) -> LayerInputs:
        """Run the model up to decoder layer 0 and keep what enters it."""
        layer0 = self.layers()[0]
        store = LayerInputs()
        target = torch.device("cpu") if offload else None

        def hook(_mod, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kw = {k: v for k, v in kwargs.items() if k not in self._drop_kwargs and k != "hidden_states"}
            dev = target or hidden.device
            store.hidden.append(hidden.to(dev))
            store.kwargs.append(_to_device(kw, dev))
            raise _Captured

        handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
        was_cache = getattr(self.model.config, "use_cache", None)
        self.model.config.use_cache = False
        try:
            first = self._input_device()
            for start in range(0, calibration.shape[0], batch_size):
                ids = calibration[start:start + batch_size].to(first)
                try:
                    self.model(input_ids=ids, use_cache=False)
                except _Captured:
                    pass
        finally:
            handle.remove()
            if was_cache is not None:
                self.model.config.use_cache = was_cache
        return store

    def _input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @torch.no_grad()
    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Run one decoder layer; inputs move to the layer's device, output stays there."""
        dev = module_device(layer)
        out = layer(hidden.to(dev), **_to_device(kwargs, dev))
        return out[0] if isinstance(out, (tuple, list)) else out


def check_supported(model: nn.Module, adapters: list[type[ModelAdapter]]) -> type[ModelAdapter]:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    for cls in adapters:
        if model_type in cls.model_types:
            return cls
    supported = sorted(t for cls in adapters for t in cls.model_types)
    raise RiaInputError(f"unsupported model architecture {model_type!r}; supported model_type values: {supported}")
