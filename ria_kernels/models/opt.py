"""OPT: pre-LayerNorm decoder with q/k/v, out_proj, fc1/fc2 (ReLU)."""
from .base import LinearGroup, ModelAdapter


class OPTAdapter(ModelAdapter):
    family = "opt"
    model_types = ("opt",)
    norm_kind = "layernorm"
    _layers_path = "model.decoder.layers"
    groups = (
        LinearGroup("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                    "self_attn_layer_norm", ()),
        LinearGroup("attn_out", ("self_attn.out_proj",), None, ("self_attn.v_proj",)),
        LinearGroup("mlp_in", ("fc1",), "final_layer_norm", ()),
        LinearGroup("mlp_out", ("fc2",), None, ("fc1",)),
    )

    def __init__(self, model):
        super().__init__(model)
        self.num_kv_heads = self.num_heads

    def permuted_norm_error(self) -> str | None:
        if getattr(self.model.config, "do_layer_norm_before", True):
            return None
        # opt-350m normalises *after* the residual add: the norm output is the
        # residual stream itself, so permuting it would permute the residual.
        return ("OPT with do_layer_norm_before=False (post-LayerNorm, e.g. opt-350m) cannot take permuted "
                "norm outputs: the LayerNorm output is the residual stream")
