"""LLaMA 1/2/3, Mistral and Qwen2: pre-norm RMSNorm decoder with q/k/v (GQA),
o_proj, SwiGLU gate/up/down."""
from .base import LinearGroup, ModelAdapter

_ATTN_IN = LinearGroup("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                       "input_layernorm", ())
_ATTN_OUT = LinearGroup("attn_out", ("self_attn.o_proj",), None, ("self_attn.v_proj",))
_MLP_IN = LinearGroup("mlp_in", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", ())
_MLP_OUT = LinearGroup("mlp_out", ("mlp.down_proj",), None, ("mlp.gate_proj", "mlp.up_proj"))


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama",)
    norm_kind = "rms"
    groups = (_ATTN_IN, _ATTN_OUT, _MLP_IN, _MLP_OUT)


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_types = ("mistral",)


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
