"""Model-family adapters: everything architecture-specific the pruning pipeline
needs (which linears share an input, which norm feeds them, how to run one
decoder layer on captured inputs) lives here, one adapter per family.

Models dispatched with accelerate (``device_map="auto"``: layers on several
GPUs, or offloaded to CPU/disk) are supported: captured inputs are moved to each
layer's *execution* device, and :func:`materialized` brings an offloaded layer's
weights onto that device for editing and writes the edits back to accelerate's
weights map.
"""
from __future__ import annotations

from contextlib import contextmanager
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
    """Hidden states entering a decoder layer, in chunks of ``batch_size`` samples,
    with the keyword arguments (attention mask, position ids, position embeddings,
    ...) each chunk needs. ``hidden[i]`` is ``[batch, seqlen, hidden_size]``."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    @property
    def num_samples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)


class _Captured(Exception):
    """Raised by the layer-0 catcher to stop the forward pass."""


def to_device(obj, device):
    """``obj`` (tensor, or nested tuple/list/dict of them) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj



def _hooks_of(module: nn.Module) -> list:
    """accelerate hooks attached to ``module`` (a SequentialHook is flattened)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def _as_device(dev) -> torch.device:
    if isinstance(dev, int):
        return torch.device("cuda", dev)
    return torch.device(dev)


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the accelerate execution device when it is
    dispatched, else the device of its first real (non-meta) parameter."""
    for m in module.modules():
        for h in _hooks_of(m):
            dev = getattr(h, "execution_device", None)
            if dev is not None and not isinstance(dev, dict):
                return _as_device(dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _store_offloaded(weights_map, key: str, value: torch.Tensor) -> None:
    """Write ``value`` for ``key`` into an accelerate weights map (PrefixedDataset over
    an OffloadedWeightsLoader or a plain dict) so the next forward loads it."""
    while hasattr(weights_map, "prefix") and hasattr(weights_map, "dataset"):
        key = weights_map.prefix + key
        weights_map = weights_map.dataset
    target = getattr(weights_map, "state_dict", weights_map)
    if not isinstance(target, dict):
        raise RiaInputError(f"cannot write pruned weight {key!r} back to an offloaded weights map of type "
                            f"{type(weights_map).__name__}")
    old = target.get(key)
    value = value.detach().to("cpu")
    if isinstance(old, torch.Tensor) and old.device.type == "cpu" and old.shape == value.shape:
        old.copy_(value.to(old.dtype))
    else:  # disk-offloaded: the in-RAM state dict takes precedence over the files
        target[key] = value


@contextmanager
def materialized(module: nn.Module):
    """Inside the block every parameter of ``module`` is a real tensor on its execution
    device (a no-op unless accelerate offloaded it); in-place edits of offloaded weights
    are written back to accelerate's weights map on exit."""
    offloaded = [(m, h) for m in module.modules() for h in _hooks_of(m)
                 if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None]
    if not offloaded:
        yield module
        return
    for m, h in offloaded:
        h.pre_forward(m)
    try:
        yield module
        for m, h in offloaded:
            recurse = bool(getattr(h, "place_submodules", False))
            for name, p in m.named_parameters(recurse=recurse):
                if p.device.type != "meta":
                    _store_offloaded(h.weights_map, name, p.data)
    finally:
        for m, h in offloaded:
            h.post_forward(m, None)


class ModelAdapter:
    """Base adapter. Subclasses set ``family``, ``model_types``, ``norm_kind``,
    ``groups`` and ``_layers_path``."""

    family: str = ""
    model_types: tuple[str, ...] = ()
    norm_kind: str = "rms"
    groups: tuple[LinearGroup, ...] = ()
    _layers_path: str = "model.layers"
    _drop_kwargs = ("past_key_values", "past_key_value", "use_cache", "output_attentions", "layer_head_mask")

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden_size // self.num_heads
        try:
            self.layers()
        except AttributeError:
            raise RiaInputError(f"{type(model).__name__} (model_type {cfg.model_type!r}) has no decoder layers at "
                                f"{self._layers_path!r}; pass a *ForCausalLM model") from None

    # -- structure ---------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self._layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    def linear_names(self) -> list[str]:
        return [n for g in self.groups for n in g.linears]

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        return {n: layer.get_submodule(n) for n in self.linear_names()}

    def full_name(self, layer_index: int, linear: str) -> str:
        """``model.layers.3.self_attn.q_proj`` for ``(3, "self_attn.q_proj")``."""
        return f"{self._layers_path}.{layer_index}.{linear}" if linear else f"{self._layers_path}.{layer_index}"

    def layer_device(self, layer: nn.Module) -> torch.device:
        return module_device(layer)

    # -- inference conversion (ria_kernels.inference) ----------------------
    def norm_params(self, norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """``(weight, bias, eps)`` of a norm module named by a group's ``norm``
        (RMSNorm: ``bias`` is None; ``weight`` None when the norm has no affine)."""
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            eps = getattr(norm, "eps", None)
        if eps is None:
            raise RiaInputError(f"{self.family}: cannot read eps of norm module {type(norm).__name__}")
        return getattr(norm, "weight", None), getattr(norm, "bias", None), float(eps)

    def permuted_norm_error(self) -> str | None:
        """None when a group's norm output may be written in permuted channel order
        (pre-norm decoder: the residual stream is the norm's *input*, so it stays in
        original order); else why not."""
        return None

    def fold_rule(self, group: LinearGroup) -> str:
        """How a permutation of ``group``'s input channels folds into its producers'
        output rows: ``"elementwise"`` (producers reach the group through elementwise
        ops, e.g. act(gate) * up: any permutation folds), ``"per_head"`` (through
        attention: only a permutation that maps every head onto itself, identically
        for the query heads sharing a kv head), ``"none"`` (no producers)."""
        if not group.producers:
            return "none"
        return "per_head" if group.name == "attn_out" else "elementwise"

    # -- running -----------------------------------------------------------
    def _input_device(self) -> torch.device:
        return module_device(self.model.get_input_embeddings())

    @torch.no_grad()
    def capture_layer_inputs(self, calibration: torch.Tensor, *, batch_size: int = 1,
                             offload: bool = False) -> LayerInputs:
        """Run the model up to decoder layer 0 (a catcher raises there) and keep what
        enters it: hidden states plus the kwargs every layer needs. Kept on layer 0's
        device, or on the CPU with ``offload=True``."""
        layer0 = self.layers()[0]
        store = LayerInputs()

        def catcher(_mod, args, kwargs):
            if len(args) > 1:
                raise RiaInputError(f"{self.family}: decoder layer called with {len(args)} positional arguments; "
                                    "this transformers version is not supported")
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kw = {k: v for k, v in kwargs.items() if k not in self._drop_kwargs}
            dev = torch.device("cpu") if offload else hidden.device
            store.hidden.append(hidden.detach().to(dev))
            store.kwargs.append(to_device(kw, dev))
            raise _Captured

        handle = layer0.register_forward_pre_hook(catcher, with_kwargs=True)
        cfg = self.model.config
        was_cache = getattr(cfg, "use_cache", None)
        cfg.use_cache = False
        try:
            first = self._input_device()
            for start in range(0, calibration.shape[0], batch_size):
                ids = calibration[start:start + batch_size].to(first)
                try:
                    self.model(input_ids=ids, use_cache=False)
                except _Captured:
                    pass
                else:  # pragma: no cover - the catcher always fires
                    raise RuntimeError("decoder layer 0 was never called")
        finally:
            handle.remove()
            if was_cache is not None:
                cfg.use_cache = was_cache
        return store

    @torch.no_grad()
    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Run one decoder layer; inputs move to the layer's execution device, the
        output (hidden states only) stays there. Handles layers returning a tensor
        (transformers 5) or a tuple."""
        dev = module_device(layer)
        out = layer(hidden.to(dev), **to_device(kwargs, dev))
        return out[0] if isinstance(out, (tuple, list)) else out


def check_supported(model: nn.Module, adapters: list[type[ModelAdapter]]) -> type[ModelAdapter]:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    for cls in adapters:
        if model_type in cls.model_types:
            return cls
    supported = sorted(t for cls in adapters for t in cls.model_types)
    raise RiaInputError(f"unsupported model architecture {model_type!r}; supported model_type values: {supported}")
