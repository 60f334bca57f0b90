"""compressed-tensors ``sparse-24-bitmask`` checkpoints <-> this package's compact 2:4 format.

The 2:4 models published for vLLM / transformers 4.57 (e.g. the ``Sparse-Llama-3.1-8B-2of4`` family)
are stored in compressed-tensors' ``sparse-24-bitmask`` format (compressed-tensors <= 0.14; later
versions dropped it). Per compressed linear ``P`` of dense shape ``[N, K]`` the safetensors files hold:

- ``P.compressed [N, K/2]``: the 2 kept values of every group of 4 consecutive input columns, in
  ascending column order (the dense tensor indexed by its boolean keep-mask, row-major);
- ``P.bitmask [N, ceil(K/8)]`` uint8: the keep-mask packed per row with
  ``numpy.packbits(..., axis=-1, bitorder="little")``: bit ``j`` of byte ``b`` is column ``8b + j``,
  so group ``g`` is the low nibble of byte ``g // 2`` for even ``g``, the high nibble for odd ``g``;
  exactly 2 bits are set per group;
- ``P.shape``: int64 ``[[N], [K]]``; ``P.bias`` (if any) as is. Linears left dense (``lm_head`` in the
  published models) keep ``P.weight``.

``config.json`` names the format: ``quantization_config = {"quant_method": "compressed-tensors",
"version": ..., "sparsity_config": {"format": "sparse-24-bitmask", "sparsity_structure": "2:4",
"targets": [...], "ignore": [...], ...}, "transform_config": {}}`` (older writers use the key
``compression_config``); quantization fields (``config_groups``, ``format``) sit beside
``sparsity_config`` when the model is also quantized.

This package's compact format (:mod:`ria_kernels.ops.sparse24_mm`) keeps the same ``values``
(byte-identical: same 2 values per group, same order) and, instead of the bitmask, per group the
4-bit code ``i0 | i1 << 2`` of the two kept columns, with the same nibble placement. So the two
formats differ by a 16-entry table per nibble (:data:`MASK_TO_CODE`, :data:`CODE_TO_MASK`), applied
here a byte at a time (256-entry tables), in row chunks so no temporary grows with the weight.

- :func:`load_compressed_tensors` (what ``load_sparse(dir)`` runs on such a directory): builds the
  model skeleton on the meta device and each compressed linear straight into a compact
  ``SparseLinear`` -- the dense weight is never materialised. Tensors are read one at a time from the
  safetensors files (own reader of the documented layout: an 8-byte header length, a JSON header,
  then the raw tensors) into their final buffers with ``readinto``, not through a memory map, so the
  peak host memory is the loaded model plus one row chunk. A checkpoint in compressed-tensors'
  ``dense`` sparsity format (2:4 metadata over dense ``P.weight`` tensors) is read one linear at a
  time, and the linears that are exactly 2:4 are compressed (one transient dense linear). Sharded checkpoints
  (``model.safetensors.index.json``) and float16 / bfloat16 / float32 values are read; fp8 values,
  sparse + quantized models and other sparsity formats are refused with one line naming the format.
- :func:`save_compressed_tensors` (``save_sparse(model, dir, format="compressed-tensors")``) writes a
  converted, unpermuted model in that format for the older stacks (transformers 4.57 +
  compressed-tensors 0.14, vLLM before its 2:4 removal). A permuted model is refused: its 2:4 pattern
  holds only in permuted channel order, which a standard HF module cannot express.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ._errors import RiaInputError
from ._io import atomic_output_dir
from ._logging import logger

from ._ct_config import CONFIG_KEYS, FORMAT, PEER_VERSION, QUANT_METHOD, compression_config  # noqa: F401
from ._ct_config import is_compressed_tensors_checkpoint  # noqa: F401
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PARAMS = ("compressed", "bitmask", "shape")
# bytes of int64 index temporaries per conversion chunk (the row chunk is sized from it)
_CHUNK_BYTES = 1 << 18

# one nibble: kept-column bitmask (bits i0, i1 set) <-> our code i0 | i1 << 2; 255 = not a 2-of-4 group
MASK_TO_CODE = [255] * 16
CODE_TO_MASK = [255] * 16
for _i0 in range(4):
    for _i1 in range(_i0 + 1, 4):
        MASK_TO_CODE[(1 << _i0) | (1 << _i1)] = _i0 | (_i1 << 2)
        CODE_TO_MASK[_i0 | (_i1 << 2)] = (1 << _i0) | (1 << _i1)


def _byte_table(nibble: list[int], pad_high: bool) -> torch.Tensor:
    """256-entry int16 table: one byte (two groups) -> the other format's byte, -1 if a nibble is not
    a valid group. ``pad_high``: the high nibble is the padding of an odd group count (must be 0)."""
    t = torch.full((256,), -1, dtype=torch.int16)
    for b in range(256):
        lo, hi = nibble[b & 0xF], b >> 4
        if lo == 255:
            continue
        if pad_high:
            if hi == 0:
                t[b] = lo
        elif nibble[hi] != 255:
            t[b] = lo | (nibble[hi] << 4)
    return t


_TABLES: dict[tuple[str, bool], torch.Tensor] = {}


def _table(direction: str, pad_high: bool) -> torch.Tensor:
    key = (direction, pad_high)
    if key not in _TABLES:
        _TABLES[key] = _byte_table(MASK_TO_CODE if direction == "to_meta" else CODE_TO_MASK, pad_high)
    return _TABLES[key]


def _convert(src: torch.Tensor, k: int, direction: str, name: str) -> torch.Tensor:
    """bitmask -> meta (``direction="to_meta"``) or meta -> bitmask (``"to_bitmask"``), both
    ``[N, ceil(K/8)]`` uint8, a row chunk at a time. RiaInputError naming the first bad group."""
    n, nb = src.shape
    groups = k // 4
    odd = groups % 2 == 1
    full, pad = _table(direction, False), _table(direction, True)
    out = torch.empty_like(src)
    rows = max(1, _CHUNK_BYTES // (8 * max(nb, 1)))
    for r0 in range(0, n, rows):
        chunk = src[r0:r0 + rows].long()
        conv = full[chunk]
        if odd:
            conv[:, -1] = pad[chunk[:, -1]]
        bad = conv < 0
        if bool(bad.any()):
            r, b = (int(x) for x in bad.nonzero()[0])
            byte = int(chunk[r, b])
            g = 2 * b + (0 if (MASK_TO_CODE if direction == "to_meta" else CODE_TO_MASK)[byte & 0xF] == 255 else 1)
            nib = (byte >> (4 * (g % 2))) & 0xF
            total = int(bad.sum())
            if direction == "to_meta":
                kept = [c for c in range(4) if nib >> c & 1]
                raise RiaInputError(f"{name}.bitmask: row {r0 + r}, columns {4 * g}..{4 * g + 3} keep {len(kept)} "
                                    f"column(s) {kept} (and {total - 1} more bad byte(s) in rows {r0}..{r0 + len(chunk) - 1}"
                                    f"); sparse-24-bitmask keeps exactly 2 of every 4")
            raise RiaInputError(f"{name}.meta: row {r0 + r}, group {g} has code {nib:#x}, not two distinct "
                                "ascending in-group columns (not a compress_24 output)")
        out[r0:r0 + rows] = conv.to(torch.uint8)
    return out


def bitmask_to_meta(bitmask: torch.Tensor, in_features: int, name: str = "weight") -> torch.Tensor:
    """compressed-tensors' packed keep-mask ``[N, ceil(K/8)]`` -> this package's ``meta`` (same shape)."""
    _check_packed(bitmask, in_features, f"{name}.bitmask")
    return _convert(bitmask, in_features, "to_meta", name)


def meta_to_bitmask(meta: torch.Tensor, in_features: int, name: str = "weight") -> torch.Tensor:
    """This package's ``meta`` ``[N, ceil(K/8)]`` -> compressed-tensors' packed keep-mask."""
    _check_packed(meta, in_features, f"{name}.meta")
    return _convert(meta, in_features, "to_bitmask", name)


def _check_packed(t: torch.Tensor, k: int, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 2 or t.shape[1] != (k + 7) // 8:
        raise RiaInputError(f"{name} must be uint8 [out_features, {(k + 7) // 8}] for in_features={k}, got "
                            f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
    if k % 4:
        raise RiaInputError(f"{name}: in_features={k} is not divisible by 4 (2:4 sparsity)")


# --------------------------------------------------------------------------- safetensors files
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_FP8 = ("F8_E4M3", "F8_E5M2", "F8_E8M0")
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class _SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked up front, tensors read one at a time with
    ``readinto`` into a fresh tensor (no memory map: the page cache is not charged to this process)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ValueError("shorter than its 8-byte header length")
                n = int.from_bytes(head, "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit a file of {size} bytes")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as exc:
            raise RiaInputError(f"{path}: not a readable safetensors file ({exc})") from None
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries: dict[str, tuple[str, list[int], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], list(e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise RiaInputError(f"{path}: malformed header entry for {name!r}") from None
            if self.data_start + end > size or begin > end:
                raise RiaInputError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
            self.entries[name] = (dtype, shape, begin, end)

    def dtype_name(self, name: str) -> str:
        return self.entries[name][0]

    def shape(self, name: str) -> list[int]:
        return self.entries[name][1]

    def read(self, name: str) -> torch.Tensor:
        dtype_s, shape, begin, end = self.entries[name]
        if dtype_s not in _ST_DTYPES:
            raise RiaInputError(f"{self.path}: tensor {name!r} has dtype {dtype_s}, which this reader does not load")
        dtype = _ST_DTYPES[dtype_s]
        out = torch.empty(shape, dtype=dtype)
        nbytes = out.numel() * out.element_size()
        if nbytes != end - begin:
            raise RiaInputError(f"{self.path}: tensor {name!r} is {end - begin} bytes, {dtype_s} {shape} needs {nbytes}")
        if nbytes:
            buf = out.view(-1).view(torch.uint8).numpy()
            with open(self.path, "rb") as f:
                f.seek(self.data_start + begin)
                if f.readinto(memoryview(buf)) != nbytes:
                    raise RiaInputError(f"{self.path}: tensor {name!r} is truncated")
        return out


class _Checkpoint:
    """Every tensor of a directory's ``model.safetensors`` or sharded index, by name (headers only)."""

    def __init__(self, directory: Path):
        single, index = directory / SAFE_WEIGHTS, directory / SAFE_INDEX
        if single.is_file():
            files = {SAFE_WEIGHTS: None}
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = dict.fromkeys(weight_map.values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RiaInputError(f"{index}: unreadable index ({exc})") from None
        else:
            raise RiaInputError(f"{str(directory)!r} has neither {SAFE_WEIGHTS} nor {SAFE_INDEX}")
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise RiaInputError(f"{str(directory)!r}: missing shard {missing[0]} ({len(missing)} of {len(files)} "
                                f"shard files named by {SAFE_INDEX} are absent)")
        self.files = {f: _SafetensorsFile(directory / f) for f in files}
        self.where: dict[str, _SafetensorsFile] = {}
        for f in self.files.values():
            for name in f.entries:
                if name in self.where:
                    raise RiaInputError(f"{str(directory)!r}: tensor {name!r} is stored in two files")
                self.where[name] = f
        if index.is_file() and not single.is_file():
            absent = [n for n, f in weight_map.items() if n not in self.files[f].entries]
            if absent:
                raise RiaInputError(f"{index} names {absent[0]!r} in {weight_map[absent[0]]}, which does not hold it")
        self.nbytes = sum(e[3] - e[2] for f in self.files.values() for e in f.entries.values())

    def read(self, name: str) -> torch.Tensor:
        return self.where[name].read(name)


# --------------------------------------------------------------------------- config
def _check_supported(qc: dict, directory: Path) -> dict:
    """The sparsity config if this package can load the checkpoint; else one-line RiaInputError."""
    sc = qc.get("sparsity_config") or {}
    fmt = sc.get("format") if isinstance(sc, dict) else None
    quant = {k: v for k, v in qc.items() if k not in ("quant_method", "version", "sparsity_config", "transform_config",
                                                      "quantization_status", "global_compression_ratio", "ignore",
                                                      "kv_cache_scheme") and v}
    quant_format = qc.get("format")
    quantized = bool(qc.get("config_groups")) or (quant_format not in (None, "dense") and bool(quant))
    where = f"{str(directory)!r} (compressed-tensors"
    if quantized:
        fmts = sorted({str(g.get("format") or quant_format) for g in (qc.get("config_groups") or {}).values()
                       if isinstance(g, dict)} or {str(quant_format)})
        raise RiaInputError(f"{where} {'sparse ' + fmt + ' + ' if fmt else ''}quantized format {', '.join(fmts)}): "
                            "quantized weights cannot be represented in this package's 2:4 format (fp16/bf16/fp32 "
                            "values only)")
    if fmt not in (FORMAT, "dense"):
        raise RiaInputError(f"{where} sparsity format {fmt!r}): only {FORMAT!r} (2:4), or 'dense' weights that are "
                            "2:4, can be loaded into the compact 2:4 format")
    if isinstance(qc.get("transform_config"), dict) and qc["transform_config"]:
        raise RiaInputError(f"{where} with a transform_config): transformed (rotated) weights are not supported")
    return sc


# --------------------------------------------------------------------------- import
@torch.no_grad()
def load_compressed_tensors(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                            dtype: torch.dtype | None = None, memory: str = "compact",
                            backend: str | None = None) -> nn.Module:
    """Load a compressed-tensors ``sparse-24-bitmask`` checkpoint with its compressed linears as compact
    ``SparseLinear`` (no dense weight materialised) and every other tensor as the file has it."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import check_config
    from .sparse_linear import SPARSE24_DTYPES, SparseLinear, resolve_memory
    directory = Path(directory)
    if not directory.is_dir():
        raise RiaInputError(f"checkpoint directory not found: {str(directory)!r}")
    qc = compression_config(directory)
    if qc is None:
        raise RiaInputError(f"{str(directory)!r} is not a compressed-tensors checkpoint (no quantization_config with "
                            f"quant_method {QUANT_METHOD!r} in config.json)")
    dense_format = _check_supported(qc, directory).get("format") == "dense"
    memory = resolve_memory(memory, None)  # RiaInputError for an unknown mode; an old name is said and mapped
    if dtype is not None and dtype not in SPARSE24_DTYPES:
        raise RiaInputError(f"dtype must be one of {SPARSE24_DTYPES} or None, got {dtype!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RiaInputError(f"device {device}: no CUDA device is available")
    ckpt = _Checkpoint(directory)
    names = set(ckpt.where)
    prefixes = {n[: -len(".compressed")] for n in names if n.endswith(".compressed")}
    for n in names:
        base, _, leaf = n.rpartition(".")
        if leaf in ("bitmask", "shape") and base not in prefixes:
            raise RiaInputError(f"{str(directory)!r}: {n} has no {base}.compressed")
    for p in sorted(prefixes):
        if f"{p}.weight" in names:
            raise RiaInputError(f"{str(directory)!r}: {p} is stored both compressed and as a dense {p}.weight")
        for leaf in PARAMS:
            if f"{p}.{leaf}" not in names:
                raise RiaInputError(f"{str(directory)!r}: {p}.compressed has no {p}.{leaf}")
        vd = ckpt.where[f"{p}.compressed"].dtype_name(f"{p}.compressed")
        if vd in _FP8:
            raise RiaInputError(f"{str(directory)!r}: {p}.compressed holds {vd} (fp8) values; this package's 2:4 format "
                                "holds float16 / bfloat16 / float32 values only")
    if not prefixes and not dense_format:
        raise RiaInputError(f"{str(directory)!r} says {FORMAT} but holds no compressed linear (no *.compressed tensor)")

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    check_config(config)
    for key in CONFIG_KEYS:  # this skeleton is a plain HF model: no HF quantizer must touch it
        if hasattr(config, key):
            delattr(config, key)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    if (directory / "generation_config.json").is_file():
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)

    def cast(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.to(device)

    new: dict[str, nn.Module] = {}
    for p in sorted(prefixes):
        try:
            lin = model.get_submodule(p)
        except AttributeError:
            raise RiaInputError(f"{str(directory)!r}: {p}.compressed names no module of this {config.model_type} "
                                "model") from None
        if not isinstance(lin, nn.Linear):
            raise RiaInputError(f"{str(directory)!r}: {p} is a {type(lin).__name__}, not an nn.Linear")
        shape = ckpt.read(f"{p}.shape").flatten().tolist()
        n, k = lin.out_features, lin.in_features
        if shape != [n, k]:
            raise RiaInputError(f"{str(directory)!r}: {p}.shape is {shape}, the model's {p} is [{n}, {k}]")
        vshape = ckpt.where[f"{p}.compressed"].shape(f"{p}.compressed")
        bshape = ckpt.where[f"{p}.bitmask"].shape(f"{p}.bitmask")
        if k % 4 or vshape != [n, k // 2] or bshape != [n, (k + 7) // 8]:
            raise RiaInputError(f"{str(directory)!r}: {p}.compressed {vshape} / {p}.bitmask {bshape} do not match "
                                f"shape [{n}, {k}] (want [{n}, {k // 2}] and [{n}, {(k + 7) // 8}], K % 4 == 0)")
        meta = bitmask_to_meta(ckpt.read(f"{p}.bitmask"), k, p)
        values = ckpt.read(f"{p}.compressed")
        if values.dtype not in SPARSE24_DTYPES:
            raise RiaInputError(f"{str(directory)!r}: {p}.compressed is {values.dtype}; the 2:4 format holds "
                                f"{SPARSE24_DTYPES}")
        rows = max(1, _CHUNK_BYTES // max(1, values.shape[1]))
        for r0 in range(0, n, rows):  # -0.0 -> +0.0 (the compact format's convention), without a full-size mask
            v = values[r0:r0 + rows]
            v.masked_fill_(v == 0, 0)
        bias = None
        if f"{p}.bias" in names:
            if lin.bias is None:
                raise RiaInputError(f"{str(directory)!r}: {p}.bias is stored but the model's {p} has no bias")
            bias = cast(ckpt.read(f"{p}.bias"))
        elif lin.bias is not None:
            raise RiaInputError(f"{str(directory)!r}: the model's {p} has a bias, the checkpoint has no {p}.bias")
        new[p] = SparseLinear.from_compressed(cast(values), meta.to(device), bias, backend=backend, memory=memory)
        names -= {f"{p}.{leaf}" for leaf in (*PARAMS, "bias")}
    if dense_format:  # sparsity metadata over dense weights: compress the linears that are exactly 2:4, one at a time
        from .inference import why_not_2to4
        ignore = set((qc.get("sparsity_config") or {}).get("ignore") or [])
        kept_dense: dict[str, str] = {}
        for p, lin in list(model.named_modules()):
            if not isinstance(lin, nn.Linear) or f"{p}.weight" not in names:
                continue
            if p in ignore:
                kept_dense[p] = "listed in sparsity_config.ignore"
                continue
            w = ckpt.read(f"{p}.weight")
            why = why_not_2to4(w) if list(w.shape) == [lin.out_features, lin.in_features] else "shape mismatch"
            if why is not None or w.dtype not in SPARSE24_DTYPES:
                kept_dense[p] = why or f"dtype {w.dtype}"
                continue  # read again below with the other dense tensors
            bias = cast(ckpt.read(f"{p}.bias")) if f"{p}.bias" in names else None
            new[p] = SparseLinear(cast(w), bias, backend, memory=memory)  # compresses; the dense w is dropped here
            del w
            names -= {f"{p}.weight", f"{p}.bias"}
        for p, why in list(kept_dense.items())[:8]:
            logger.info("load_sparse: %s stays dense nn.Linear: %s", p, why)
    expected = dict(model.state_dict(keep_vars=True))
    rest = {}
    for name in sorted(names):
        if name not in expected:
            raise RiaInputError(f"{str(directory)!r}: tensor {name!r} matches nothing in the {config.model_type} model "
                                "built from its config")
        t = ckpt.read(name)
        if list(t.shape) != list(expected[name].shape):
            raise RiaInputError(f"{str(directory)!r}: {name} has shape {list(t.shape)}, the model expects "
                                f"{list(expected[name].shape)}")
        rest[name] = cast(t)
    for path, mod in new.items():
        model.set_submodule(path, mod)
    model.load_state_dict(rest, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in rest and "lm_head" not in new:
        model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RiaInputError(f"{str(directory)!r} lacks tensors for {left[:3]}")
    model.to(device)
    for t in model.parameters():
        t.requires_grad_(False)
    dense = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    logger.info("load_sparse: %s (compressed-tensors %s, version %s): %d linears as SparseLinear (memory=%s), "
                "%d left dense as stored (%s)", directory, FORMAT, qc.get("version"), len(new), memory, len(dense),
                ", ".join(dense[:4]) + (", ..." if len(dense) > 4 else ""))
    return model.eval()


# --------------------------------------------------------------------------- export
def _shards(tensors: dict[str, torch.Tensor], max_shard_size: int | None) -> list[dict[str, torch.Tensor]]:
    if max_shard_size is None:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


@torch.no_grad()
def save_compressed_tensors(model: nn.Module, directory: str | os.PathLike, *, report=None, tokenizer=None,
                            overwrite: bool = False, max_shard_size: int | None = None,
                            dtype: torch.dtype | None = None) -> Path:
    """Write the converted, unpermuted ``model`` as a compressed-tensors ``sparse-24-bitmask`` checkpoint
    (``model.safetensors``, or shards of at most ``max_shard_size`` bytes + ``model.safetensors.index.json``;
    ``config.json`` with ``quantization_config``; generation config and tokenizer when present).
    ``dtype``: the dtype of every floating tensor in the files (default: as held)."""
    from safetensors.torch import save_file

    from .inference import conversion_layout
    from .models import get_adapter
    from .sparse_linear import SparseLinear
    get_adapter(model)
    layout = conversion_layout(model)
    permuted = sorted(p for p, s in layout.items() if s["kind"] != "sparse_linear")
    if permuted or getattr(report, "permutations", None):
        first = permuted[0] if permuted else next(iter(report.permutations))
        raise RiaInputError(f"format='compressed-tensors' needs a model without channel permutation ({first} is "
                            "permuted): its 2:4 pattern holds only in permuted channel order, which a standard HF "
                            "module cannot express; prune with permute=False for this export, or keep the "
                            "ria_kernels format")
    sparse = {p: m for p, m in model.named_modules() if isinstance(m, SparseLinear)}
    if not sparse:
        raise RiaInputError("save_sparse needs a model converted by to_sparse_inference (it has no SparseLinear; "
                            "prune with sparsity '2:4' and convert first)")
    if max_shard_size is not None and (not isinstance(max_shard_size, int) or max_shard_size < 1):
        raise RiaInputError(f"max_shard_size must be a positive number of bytes or None, got {max_shard_size!r}")
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise RiaInputError(f"directory {str(target)!r} exists and is not a directory")
    if target.exists() and not overwrite:
        raise RiaInputError(f"directory {str(target)!r} exists; pass overwrite=True to replace it")
    skip = {f"{p}.{leaf}" for p in sparse for leaf in ("values", "meta", "weight")}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        if name in skip:
            continue
        if t.device.type == "meta":
            raise RiaInputError(f"save_sparse: {name} is on the meta device (offloaded models are not supported)")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            if tied:
                continue  # tie_word_embeddings: HF readers re-tie lm_head to the embedding
            t = t.clone()
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
        if name.endswith(".weight") and name[: -len(".weight")] in sparse:
            raise RiaInputError(f"save_sparse: {name} would shadow a compressed linear")
    for p, m in sparse.items():
        tensors[f"{p}.compressed"] = m.values.detach().to("cpu").contiguous()
        tensors[f"{p}.bitmask"] = meta_to_bitmask(m.compact_meta().detach().to("cpu"), m.in_features, p)
        tensors[f"{p}.shape"] = torch.tensor([m.out_features, m.in_features]).reshape(-1, 1)
    dense = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    n_weights = sum(m.in_features * m.out_features for m in [*sparse.values(), *(model.get_submodule(p) for p in dense)])
    zeros = sum(int((m.values == 0).sum()) + m.values.numel() for m in sparse.values())
    sparsity_config = {"format": FORMAT, "sparsity_structure": "2:4", "targets": sorted(sparse), "ignore": sorted(dense),
                       "global_sparsity": zeros / max(n_weights, 1), "registry_requires_subclass": False}
    qc = {"quant_method": QUANT_METHOD, "version": PEER_VERSION, "sparsity_config": sparsity_config,
          "transform_config": {}}
    if dtype is not None:  # only floating tensors: bitmasks and shapes keep their integer dtype
        floating = (torch.float32, torch.float16, torch.bfloat16)  # what save_sparse's own format takes
        if dtype not in floating:
            raise RiaInputError(f"dtype must be one of {floating} or None, got {dtype!r}")
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    shards = _shards(tensors, max_shard_size)
    with atomic_output_dir(target, overwrite=overwrite) as tmp:
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SAFE_WEIGHTS), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            (tmp / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2, sort_keys=True))
        model.config.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["quantization_config"] = qc
        if dtype is not None:  # the config records the in-memory dtype; the files hold ``dtype``
            cfg["dtype"] = str(dtype).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    logger.info("save_sparse(format='compressed-tensors'): %d sparse-24-bitmask linears, %d dense, %d file(s) -> %s",
                len(sparse), len(dense), len(shards), target)
    return target


__all__ = ["load_compressed_tensors", "save_compressed_tensors", "is_compressed_tensors_checkpoint",
           "compression_config", "bitmask_to_meta", "meta_to_bitmask", "FORMAT", "PEER_VERSION", "MASK_TO_CODE",
           "CODE_TO_MASK"]
