"""Compressed checkpoints of a model converted by :func:`~ria_kernels.to_sparse_inference`.

``save_sparse(model, dir)`` writes, atomically (a temporary sibling directory, every file fsynced,
then one rename; an existing ``dir`` is replaced only with ``overwrite=True``):

- ``model.safetensors``: every tensor of the converted model's ``state_dict`` -- for each
  ``SparseLinear`` only its compact 2:4 format (``<linear>.values``, ``<linear>.meta``, ``<linear>.bias``;
  never a dense or tensor-core copy), the permutation buffers of the permuted norms and runtime gathers
  (``<module>.perm``), norm weights already in permuted order, and every other parameter as is. Tensors
  that share storage (tied embeddings) are stored once (``aliases`` in the JSON).
- ``ria_sparse.json``: ``format`` (``"ria_kernels.sparse_checkpoint"``), ``format_version``
  (:data:`FORMAT_VERSION`), ``weight_format`` / ``weight_format_version`` (the compact 2:4 format of
  :mod:`ria_kernels.ops.sparse24_mm` and its ``FORMAT_VERSION``), ``family``, ``model_type``, ``dtype``,
  ``method`` / ``sparsity`` / ``a`` / ``permute`` (from the ``PruneReport`` if given), ``layout`` (module
  path -> kind of converted module, :func:`~ria_kernels.inference.conversion_layout`), ``aliases``,
  ``linear_bytes`` (compressed bytes of the SparseLinear weights, and the dense bytes they replace),
  ``versions`` (ria_kernels, torch, transformers, safetensors), ``created`` (UTC).
- ``config.json`` (+ ``generation_config.json``): the HF config, so the skeleton is built without weights.
- ``permutations.safetensors``: the report's per-linear input permutations (only with a report that has them).
- the tokenizer's files, when ``tokenizer=`` is given.

``load_sparse(dir, device=..., dtype=None, memory="compact")`` rebuilds the converted model from that
alone -- no dense checkpoint, no re-pruning: the skeleton is built from the config with its parameters on
the meta device (:func:`_parameters_on_meta`: nothing is allocated or initialised; torch only, so
``pip install ria-kernels`` without accelerate can load), the converted
modules are built from their saved tensors by the same code :func:`to_sparse_inference` uses
(:func:`~ria_kernels.inference.build_converted_module`, :func:`~ria_kernels.inference.install_modules`),
and the remaining parameters are assigned from the file. A directory written with another
``format_version`` or ``weight_format_version`` is refused with ``RiaInputError``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path

import torch
from torch import nn

from ._errors import RiaInputError
from ._io import atomic_output_dir
from ._logging import logger
from .inference import build_converted_module, conversion_layout, install_modules
from .ops import sparse24_mm
from .sparse_linear import SparseLinear, resolve_memory

FORMAT = "ria_kernels.sparse_checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "ria_sparse.json"
TENSORS_FILE = "model.safetensors"
PERMUTATIONS_FILE = "permutations.safetensors"
SAVE_FORMATS = ("ria_kernels", "compressed-tensors")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- saving
def _versions() -> dict[str, str]:
    import safetensors
    import transformers

    from . import __version__
    return {"ria_kernels": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _tensors_to_save(model: nn.Module, layout: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict minus dense copies of SparseLinear weights, shared tensors stored once."""
    dense_copies = {f"{path}.weight" for path, spec in layout.items() if spec["kind"] == "sparse_linear"}
    dense_copies |= {f"{path}.linear.weight" for path, spec in layout.items()
                     if spec["kind"] == "gather" and spec["inner"]["kind"] == "sparse_linear"}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if name in dense_copies:
            continue  # memory="dense" keeps one for reference; the checkpoint holds the compact format only
        if t.device.type == "meta":
            raise RiaInputError(f"save_sparse: {name} is on the meta device (offloaded models are not supported)")
        key = _storage_key(t)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


@torch.no_grad()
def save_sparse(model: nn.Module, directory: str | os.PathLike, *, report=None, tokenizer=None,
                overwrite: bool = False, dtype: torch.dtype | None = None, format: str = "ria_kernels") -> Path:
    """Write the converted ``model`` as a compressed checkpoint in ``directory`` (see the module
    docstring for the files); returns the directory. ``report``: the ``PruneReport`` (its method,
    sparsity and permutations are recorded); ``tokenizer``: saved alongside when given; ``dtype``:
    the dtype of every floating tensor in the file (default: as held; ``ria-prune`` passes the
    source checkpoint's dtype, so that a float32 working copy does not double the file).
    ``format="compressed-tensors"``: compressed-tensors' ``sparse-24-bitmask`` instead, for the older
    stacks (unpermuted models only; :mod:`ria_kernels.compressed_tensors`)."""
    if format not in SAVE_FORMATS:
        raise RiaInputError(f"format must be one of {SAVE_FORMATS}, got {format!r}")
    if format == "compressed-tensors":
        from .compressed_tensors import save_compressed_tensors
        return save_compressed_tensors(model, directory, report=report, tokenizer=tokenizer, overwrite=overwrite,
                                       dtype=dtype)
    from safetensors.torch import save_file

    from .models import get_adapter
    adapter = get_adapter(model)
    layout = conversion_layout(model)
    n_sparse = sum(1 for s in layout.values() if s["kind"] == "sparse_linear"
                   or (s["kind"] == "gather" and s["inner"]["kind"] == "sparse_linear"))
    if n_sparse == 0:
        raise RiaInputError("save_sparse needs a model converted by to_sparse_inference (it has no SparseLinear; "
                            "prune with sparsity '2:4' and convert first)")
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise RiaInputError(f"directory {str(target)!r} exists and is not a directory")
    if target.exists() and not overwrite:
        raise RiaInputError(f"directory {str(target)!r} exists; pass overwrite=True to replace it")
    if dtype is not None and dtype not in _DTYPES.values():
        raise RiaInputError(f"dtype must be one of {tuple(_DTYPES.values())} or None, got {dtype!r}")
    tensors, aliases = _tensors_to_save(model, layout)
    if dtype is not None:  # only floating tensors: meta (indices) and perm buffers keep their integer dtype
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    sparse_mods = [m for m in model.modules() if isinstance(m, SparseLinear)]
    value_size = torch.empty((), dtype=dtype or sparse_mods[0].values.dtype).element_size()
    compressed = sum(m.values.numel() * value_size + m.compact_meta().numel() for m in sparse_mods)  # stored row-major
    dense_equiv = sum(m.in_features * m.out_features * value_size for m in sparse_mods)
    values_dtype = str(dtype or sparse_mods[0].values.dtype).replace("torch.", "")
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "weight_format": "sparse24", "weight_format_version": sparse24_mm.FORMAT_VERSION,
        "family": adapter.family, "model_type": getattr(model.config, "model_type", None), "dtype": values_dtype,
        "method": getattr(report, "method", None), "sparsity": None if report is None else str(report.sparsity),
        "a": getattr(report, "a", None), "permute": getattr(report, "permute", None),
        "sparse_linears": n_sparse, "layout": layout, "aliases": aliases,
        "linear_bytes": {"compressed": compressed, "dense_equivalent": dense_equiv},
        "files": [TENSORS_FILE, "config.json"], "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_output_dir(target, overwrite=overwrite) as tmp:  # temp sibling, fsync, rename
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        model.config.save_pretrained(tmp)
        if dtype is not None:  # the config records the in-memory dtype; the file holds ``dtype``
            cfg = json.loads((tmp / "config.json").read_text())
            cfg["dtype"] = values_dtype
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
            meta["files"].append("generation_config.json")
        perms = getattr(report, "permutations", None) or {}
        if perms:
            save_file({k: v.detach().to("cpu", torch.long).clone() for k, v in perms.items()},  # groups share one
                      str(tmp / PERMUTATIONS_FILE))
            meta["files"].append(PERMUTATIONS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            meta["files"].append("tokenizer")
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    logger.info("save_sparse: %d SparseLinear (%d compressed weight bytes for %d dense) -> %s", n_sparse,
                compressed, dense_equiv, target)
    return target


# --------------------------------------------------------------------------- loading
def read_sparse_metadata(directory: str | os.PathLike) -> dict:
    """The checkpoint's ``ria_sparse.json``, checked for this package's format versions."""
    path = Path(directory) / METADATA_FILE
    if not Path(directory).is_dir():
        raise RiaInputError(f"sparse checkpoint directory not found: {str(directory)!r}")
    if not path.is_file():
        raise RiaInputError(f"{str(directory)!r} is not a ria_kernels sparse checkpoint (no {METADATA_FILE})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise RiaInputError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RiaInputError(f"{path} is not a {FORMAT} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RiaInputError(f"{str(directory)!r} was written in sparse checkpoint format version "
                            f"{meta.get('format_version')!r} (ria_kernels {meta.get('versions', {}).get('ria_kernels')}); "
                            f"this ria_kernels reads version {FORMAT_VERSION} only: re-export it with save_sparse")
    if meta.get("weight_format") != "sparse24" or meta.get("weight_format_version") != sparse24_mm.FORMAT_VERSION:
        raise RiaInputError(f"{str(directory)!r} holds 2:4 weights in format {meta.get('weight_format')!r} version "
                            f"{meta.get('weight_format_version')!r}; this ria_kernels reads sparse24 version "
                            f"{sparse24_mm.FORMAT_VERSION} only: re-export it with save_sparse")
    return meta


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter a module registers inside goes to the meta device (no memory, and the
    module's weight init then runs on meta tensors: free); buffers stay real, so values computed
    at construction and kept out of the state_dict (rotary frequencies) are right. The one piece
    of accelerate's ``init_empty_weights`` that load_sparse needs, so loading does not depend on
    accelerate (not an install requirement)."""
    real = nn.Module.register_parameter

    def register_parameter(module, name, param):
        real(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = real


def _skeleton(directory: Path):
    """The model built from its config with parameters on the meta device (buffers such as rotary
    frequencies are computed normally: they are not in a state_dict)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import check_config
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    check_config(config)
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config)
    gen_path = directory / "generation_config.json"
    if gen_path.is_file():
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
    return model


@torch.no_grad()
def load_sparse(directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                memory: str = "compact", backend: str | None = None) -> nn.Module:
    """Rebuild the converted model saved by :func:`save_sparse` in ``directory`` on ``device`` -- or load a
    compressed-tensors ``sparse-24-bitmask`` checkpoint (detected from its ``config.json``) straight into
    the compact format (:func:`ria_kernels.compressed_tensors.load_compressed_tensors`).

    ``dtype``: cast the floating tensors (default: as saved); ``memory`` / ``backend``: the
    ``SparseLinear`` memory mode (``"compact"``: one copy, its metadata laid out for ``device``'s CUTLASS
    kernel; ``"cusparselt"``: plus cuSPARSELt's copy, built from the compact format on ``device``; ``"dense"``) and forced backend. Returns the model in eval mode; its
    tokenizer, if saved, loads with ``AutoTokenizer.from_pretrained(directory)``."""
    from safetensors.torch import load_file
    directory = Path(directory)
    from .compressed_tensors import is_compressed_tensors_checkpoint, load_compressed_tensors
    if not (directory / METADATA_FILE).is_file() and is_compressed_tensors_checkpoint(directory):
        # a compressed-tensors sparse-24-bitmask checkpoint (a published 2:4 model): straight to compact
        return load_compressed_tensors(directory, device=device, dtype=dtype, memory=memory, backend=backend)
    meta = read_sparse_metadata(directory)
    memory = resolve_memory(memory, None)  # RiaInputError for an unknown mode; an old name is said and mapped
    if dtype is not None and dtype not in _DTYPES.values():
        raise RiaInputError(f"dtype must be one of {tuple(_DTYPES.values())} or None, got {dtype!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise RiaInputError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RiaInputError(f"device {device}: no CUDA device is available")
    model = _skeleton(directory)
    tensors = load_file(str(directory / TENSORS_FILE), device=str(device))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    layout: dict[str, dict] = meta["layout"]
    new: dict[str, nn.Module] = {}
    for path, spec in layout.items():
        prefix = path + "."
        own = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        mod = build_converted_module(spec, own, backend=backend, memory=memory)
        new[path] = mod
    install_modules(model, new)  # the same swap to_sparse_inference does
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    installed = {f"{path}.{k}" for path, mod in new.items() for k in mod.state_dict()}
    aliases: dict[str, str] = meta.get("aliases", {})
    missing = [k for k in missing if k not in installed and k not in aliases]
    if missing or unexpected:
        raise RiaInputError(f"{str(directory)!r} does not match its config: missing {missing[:3]}, "
                            f"unexpected {list(unexpected)[:3]}")
    for name, source in aliases.items():  # tied weights: the same Parameter, as when saved
        owner, _, attr = name.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.device.type == "meta"]
    if left:
        raise RiaInputError(f"{str(directory)!r} lacks tensors for {left[:3]}")
    model.to(device)  # the non-persistent buffers built with the skeleton (SparseLinear copies stay as built)
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("load_sparse: %s (%s, %d converted modules, memory=%s) on %s", directory, meta.get("family"),
                len(layout), memory, device)
    return model.eval()


__all__ = ["save_sparse", "load_sparse", "read_sparse_metadata", "FORMAT", "FORMAT_VERSION", "METADATA_FILE"]
