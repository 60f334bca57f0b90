"""What a ``ria-prune`` run will hold, checked before any weights are read.

- :func:`model_shape` / :func:`check_nm_divisible`: the input widths of every pruned linear,
  read from ``config.json`` alone, so ``--sparsity-type 2:3`` is refused before the weights load.
- :func:`weight_files`: a model directory must hold weights (not only ``config.json``).
- :func:`estimate_run_memory`: the peak bytes of the run's big buffers -- the model's parameters
  in the working dtype, the calibration activations (one hidden state per window is kept between
  decoder layers, plus the rotary tables each batch carries; x1.75 for the allocator, as measured),
  the float32 ``in x in`` Hessians of one decoder layer for SparseGPT / ``--reconstruction`` / ALPS
  (one per shared-input group: q/k/v share one, gate/up share one) with SparseGPT's working copies
  of the largest one, and one evaluation batch (logits in the working dtype, their float32 copy and
  log-softmax, the attention scores of a layer).
- :func:`available_memory`: ``MemAvailable`` of ``/proc/meminfo`` (``os.sysconf`` elsewhere) for the
  CPU, ``torch.cuda.mem_get_info`` for a GPU.

Torch is only imported for a CUDA device: the CLI runs these checks before importing it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import RiaInputError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth", "tf_model.h5", "flax_model.msgpack")
GiB = 1024 ** 3
ACTIVATION_OVERHEAD = 1.75  # RSS growth per byte of kept calibration tensors (see estimate_run_memory)


def read_config(model_dir: str | os.PathLike) -> dict:
    """``config.json`` of a local model directory as a dict (RiaInputError if unreadable)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RiaInputError(f"{path}: unreadable config ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict):
        raise RiaInputError(f"{path}: not a JSON object")
    return cfg


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The weight files of a local model directory (safetensors, shards, PyTorch bins)."""
    d = Path(model_dir)
    found: set[Path] = set()
    for pattern in WEIGHT_PATTERNS:
        found.update(p for p in d.glob(pattern) if p.is_file())
    return sorted(found)


def _int(cfg: dict, *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def linear_in_features(self) -> dict[str, int]:
        """Input width of each kind of pruned linear (attention in/out, MLP in/out)."""
        return {"hidden_size": self.hidden, "num_attention_heads x head_dim": self.heads * self.head_dim,
                "intermediate_size": self.intermediate}


def model_shape(cfg: dict) -> ModelShape | None:
    """The shape fields of a LLaMA-like or OPT config, or None when they are not all there."""
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    inter = _int(cfg, "intermediate_size", "ffn_dim", "n_inner")
    layers = _int(cfg, "num_hidden_layers", "n_layer")
    heads = _int(cfg, "num_attention_heads", "n_head")
    vocab = _int(cfg, "vocab_size")
    if None in (hidden, inter, layers, heads, vocab):
        return None
    head_dim = _int(cfg, "head_dim") or hidden // heads
    return ModelShape(hidden, inter, layers, heads, _int(cfg, "num_key_value_heads") or heads, head_dim, vocab)


def check_nm_divisible(cfg: dict, m: int, flag: str = "--sparsity-type", pattern: str = "") -> None:
    """RiaInputError when a pruned linear's input width (from the config) is not a multiple of M."""
    shape = model_shape(cfg)
    if shape is None:
        return  # an unusual config: the per-linear check after loading still applies
    for name, width in shape.linear_in_features.items():
        if width % m:
            raise RiaInputError(f"{flag} {pattern}: in_features={width} ({name} in config.json) is not divisible "
                                f"by M={m}; choose an M that divides {width}")


@dataclass
class MemoryEstimate:
    """Peak bytes by component, the device they live on and the flag that lowers each."""

    parts: dict[str, int] = field(default_factory=dict)
    device: dict[str, str] = field(default_factory=dict)
    lower: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, nbytes: int, device: str, lower: str) -> None:
        self.parts[name] = int(nbytes)
        self.device[name] = device
        self.lower[name] = lower

    def on(self, device: str) -> int:
        return sum(v for k, v in self.parts.items() if self.device[k] == device)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate_run_memory(cfg: dict, *, param_bytes: int, dtype: str, nsamples: int, seqlen: int,
                        batch_size: int = 1, need_hessian: bool = False, eval_batch: int | None = None,
                        offload: bool = False, device: str = "cpu") -> MemoryEstimate:
    """The run's big buffers (see the module docstring). ``param_bytes``: the model's parameters in
    the working ``dtype``; ``eval_batch``: None when nothing is evaluated; ``device``: "cpu" or
    "cuda..." (calibration activations go to the CPU with ``offload``)."""
    shape = model_shape(cfg)
    est = MemoryEstimate()
    dev = "cpu" if device == "cpu" else "gpu"
    est.add("model", param_bytes, dev, "pass --dtype float16/bfloat16 or --device map")
    if shape is None:
        return est
    b = DTYPE_BYTES.get(dtype, 4)
    act_dev = "cpu" if (offload or dev == "cpu") else "gpu"
    nbatches = -(-nsamples // max(batch_size, 1))
    hidden_states = nsamples * seqlen * shape.hidden * b
    rotary = nbatches * 2 * batch_size * seqlen * shape.head_dim * b  # cos/sin kept with each batch
    # x ACTIVATION_OVERHEAD: what the process's RSS grows by, measured on a CPU (a 1-layer hidden-512 llama,
    # --seqlen 128, wanda, 2026-12-02; the RSS test in tests/test_cli.py): 235 MB for 154 MB of hidden states +
    # rotary tables in 400 windows (1.53x), 321 MB for 195 MB in 512 (1.65x), 438 MB for 308 MB in 800 (1.42x).
    # The window-sized tensors interleave on the heap with the temporaries that made them; the holes stay.
    est.add("calibration activations", (hidden_states + rotary) * ACTIVATION_OVERHEAD, act_dev,
            "lower --nsamples (or --seqlen)" + ("" if offload or dev == "cpu" else ", or pass --offload"))
    # one layer's forward over one batch while statistics are collected (MLP + attention scores)
    est.add("calibration forward", batch_size * seqlen * (3 * shape.intermediate + 4 * shape.hidden) * b
            + batch_size * shape.heads * seqlen * seqlen * 4, dev, "lower --batch-size (or --seqlen)")
    if need_hessian:
        attn_out = shape.heads * shape.head_dim
        groups = [shape.hidden, attn_out, shape.hidden, shape.intermediate]  # qkv, o, gate/up, down
        hess = sum(w * w for w in groups) * 4
        widest = max(groups)
        work = 3 * widest * widest * 4  # SparseGPT: damped copy, Cholesky inverse, its upper factor
        est.add("Hessians (one decoder layer)", hess + work, dev,
                "use a --device with more memory (the in x in Hessians grow with the model's width, not --nsamples)")
    if eval_batch:
        logits = eval_batch * seqlen * shape.vocab * (b + 4 + 4)  # logits, .float(), log-softmax
        attn = eval_batch * shape.heads * seqlen * seqlen * 4
        est.add("evaluation batch", logits + attn + eval_batch * seqlen * 3 * shape.intermediate * b, dev,
                "lower --eval-batch-size")
    return est


def available_memory(device: str) -> int | None:
    """Bytes the run can still use on ``device`` ("cpu" or "cuda[:N]"), None if unknown."""
    if device.startswith("cuda"):
        import torch
        try:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def check_memory(est: MemoryEstimate, device: str, available: dict[str, int | None]) -> None:
    """RiaInputError when the estimate exceeds what a device has, naming the flag to lower
    (that of the largest component on the device that does not fit)."""
    for dev, avail in available.items():
        need = est.on(dev)
        if avail is None or need <= avail:
            continue
        parts = {k: v for k, v in est.parts.items() if est.device[k] == dev}
        worst = max(parts, key=parts.get)
        detail = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= GiB / 100)
        where = "the CPU (MemAvailable)" if dev == "cpu" else device
        raise RiaInputError(f"this run needs about {_gib(need)} on {where} ({detail}) but {_gib(avail)} is available: "
                            f"{est.lower[worst]}; --skip-memory-check runs it anyway")


__all__ = ["read_config", "weight_files", "model_shape", "check_nm_divisible", "estimate_run_memory",
           "available_memory", "check_memory", "MemoryEstimate"]
