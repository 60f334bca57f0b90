"""``SparseLinear``, the module: holds the compact 2:4 weight (plus what its memory mode adds), picks
a backend per token bucket through :func:`~ria_kernels.sparse_linear.backends.choose_backend`, and
runs it. :func:`tune_model` and :func:`linear_bytes` act on every ``SparseLinear`` of a model."""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._device import capturing as _capturing  # the package's one capture query (tests patch it here)
from .._errors import BackendUnavailableError, RiaInputError
from .._logging import log_once
from ..ops import sparse_mm
from ..ops.sparse24_mm import sparse24_mm
from .backends import (COPY_BACKENDS, CSLT_TOKEN_MULTIPLE, DEFAULT_CSLT_CONFIG, TENSOR_CORE_BACKENDS,
                       _compress_for_backend, _cslt_matmul, _cutlass_matmul, backend_unavailable_reasons,
                       choose_backend, compact_kernel_reads, cutlass_meta_layout, requested_backend)
from .format import (SPARSE24_DTYPES, check_2to4, compact_to_layout, compress_24, decompress_24, layout_meta_spec,
                     layout_to_compact, positive_zeros)
from .tuning import (_autotune_enabled, _now, _time_ms, _timings, device_section, get_tune_table, l2_flusher,
                     shape_key, token_bucket)

MEMORY_MODES = ("compact", "cusparselt", "dense")
DEFAULT_MEMORY = "compact"
# earlier names of a mode, still accepted (with a warning): "fast" held compact + one tensor-core copy; the
# CUTLASS kernels now read the compact weight itself, so the only copy left to ask for is cuSPARSELt's
MEMORY_ALIASES = {"fast": "cusparselt"}


def resolve_memory(memory: str | None, forced: str | None) -> str:
    """The memory mode for ``memory`` and the forced backend: ``None`` -> ``DEFAULT_MEMORY``, or what a
    forced backend needs (dense -> ``"dense"``, cusparselt -> ``"cusparselt"``; cutlass and
    torch_semi_structured run in either non-dense mode). ``"fast"`` is the old name of ``"cusparselt"``
    (a warning). RiaInputError when they contradict each other."""
    if memory is None:
        if forced == "dense":
            return "dense"
        return "cusparselt" if forced == "cusparselt" else DEFAULT_MEMORY
    if isinstance(memory, str) and memory in MEMORY_ALIASES:
        log_once(("SparseLinear.memory_alias", memory), "SparseLinear memory=%r is now memory=%r (the CUTLASS kernels "
                 "read the compact weight itself; only cuSPARSELt needs a copy)", memory, MEMORY_ALIASES[memory],
                 level=logging.WARNING)
        memory = MEMORY_ALIASES[memory]
    if not isinstance(memory, str) or memory not in MEMORY_MODES:
        raise RiaInputError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if forced == "dense" and memory != "dense":
        raise RiaInputError(f"backend 'dense' needs memory='dense' (memory={memory!r} keeps no dense weight; "
                            "the dense weight is kept only for reference/debugging)")
    if forced == "cusparselt" and memory != "cusparselt":
        raise RiaInputError(f"backend 'cusparselt' needs memory='cusparselt' (memory={memory!r} holds no "
                            "cuSPARSELt copy)")
    if forced in TENSOR_CORE_BACKENDS and memory == "dense":
        raise RiaInputError(f"backend {forced!r} needs memory='compact' or 'cusparselt' (memory='dense' is the "
                            "F.linear reference)")
    return memory


def _meta_bytes(n: int, k: int, layout: str) -> int:
    dtype, shape = layout_meta_spec(n, k, layout)
    return shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- the module
class SparseLinear(nn.Module):
    """``y = x W^T + b`` with a 2:4-sparse ``W [out_features, in_features]``; drop-in for ``nn.Linear``.

    Held (see the module docstring for the modes): buffers ``values`` / ``meta`` (the compact 2:4
    format, always; persistent: they are the ``state_dict``, whose ``meta`` is always row-major),
    ``bias`` (a parameter, or None), ``weight`` (the masked dense weight, a parameter, only with
    ``memory="dense"``; else None). ``meta`` is held in ``meta_layout``: the order of the device's
    CUTLASS kernel (``"sm80"`` / ``"sm90"``) where that kernel can run this weight and the compact
    kernel reads that order too, so both read the one copy; else ``"rowmajor"``, plus (where CUTLASS
    can run but the compact kernel cannot read its order) the non-persistent ``cutlass_meta``
    (1/16 of the dense bytes). ``memory="cusparselt"`` adds cuSPARSELt's copy (``cslt_weight``,
    non-persistent). All of it is re-laid / rebuilt from the compact format whenever ``.to()``
    changes the device or dtype. :meth:`held_bytes` itemises them; :meth:`dense_weight`
    decompresses the weight on demand (tests, debugging -- never on the forward path).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None, *,
                 memory: str | None = None):
        super().__init__()
        check_2to4(weight)
        if weight.dtype not in SPARSE24_DTYPES:
            raise RiaInputError(f"weight dtype must be one of {SPARSE24_DTYPES}, got {weight.dtype}")
        w = positive_zeros(weight.detach())
        values, meta = compress_24(w)
        self._setup(values, meta, bias, backend, memory, dense=w)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, backend: str | None = None,
                    memory: str | None = None) -> "SparseLinear":
        """Build from a pruned ``nn.Linear`` (validates the 2:4 pattern, compresses once)."""
        if not isinstance(linear, nn.Linear):
            raise RiaInputError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, backend, memory=memory)

    @classmethod
    def from_compressed(cls, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None, *,
                        backend: str | None = None, memory: str | None = None) -> "SparseLinear":
        """Build from a weight already in the compact format (``compress_24``'s ``(values, meta)``, e.g.
        read from a compressed checkpoint; ``meta`` row-major): nothing dense is read or re-pruned."""
        if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.dtype not in SPARSE24_DTYPES:
            raise RiaInputError(f"values must be a 2-D {SPARSE24_DTYPES} tensor [out_features, in_features/2], got "
                                f"{getattr(values, 'dtype', type(values))} {tuple(getattr(values, 'shape', ()))}")
        if not isinstance(meta, torch.Tensor) or meta.dim() != 2 or meta.shape[0] != values.shape[0] \
                or meta.device != values.device:
            raise RiaInputError(f"meta must be a 2-D tensor with {values.shape[0]} rows on {values.device}, got "
                                f"{tuple(getattr(meta, 'shape', ()))} on {getattr(meta, 'device', None)}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(values, meta, bias, backend, memory, dense=None)
        return self

    def _setup(self, values, meta, bias, backend, memory, dense) -> None:
        n, k = values.shape[0], 2 * values.shape[1]
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
            raise RiaInputError(f"bias must have shape [{n}], got {getattr(bias, 'shape', type(bias))}")
        self.in_features, self.out_features = k, n
        forced = requested_backend(backend)
        self.memory = resolve_memory(memory, forced)
        if self.memory == "dense" and forced is None:
            forced = "dense"  # the dense mode is the reference path: it runs F.linear
        self._forced = forced
        self.register_buffer("values", values.detach().contiguous())
        self.register_buffer("meta", meta.detach().contiguous())
        self.meta_layout = "rowmajor"  # the order self.meta is in now (_prepare lays it out for the device)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(values.dtype).clone(),
                                                           requires_grad=False)
        if self.memory == "dense":
            w = dense if dense is not None else decompress_24(self.values, self.meta)
            self.weight = nn.Parameter(w.detach().clone().contiguous(), requires_grad=False)
        else:
            self.register_parameter("weight", None)
        # cuSPARSELt's copy and CUTLASS's own metadata order beside a row-major meta: non-persistent (the
        # checkpoint holds only the compact format)
        for name in ("cslt_weight", "cutlass_meta"):
            self.register_buffer(name, None, persistent=False)
        self._torch_sparse = None  # torch's 2:4 tensor (forced torch_semi_structured only)
        # token bucket -> (backend, cslt config); read as a plain dict under torch.compile
        self._memo: dict[int, tuple[str, tuple[int, int, int] | None]] = {}
        # cuSPARSELt plans made by eager calls: (tokens padded to 8, config, bias pointer)
        self._plans: set[tuple] = set()
        self._prepare()

    # ----------------------------------------------------------------- copies
    def _device_type(self) -> str:
        """Where the weight lives (``"cuda"`` / ``"cpu"``); a method so CPU tests can stand in a GPU."""
        return self.values.device.type

    def _get_copy(self, backend: str):
        """What ``backend`` runs from: cuSPARSELt's copy, CUTLASS's ``(values, metadata)`` (the module's own
        buffers when ``meta`` is in the CUTLASS order) or torch's 2:4 tensor; None when not held."""
        if backend == "cusparselt":
            return self.cslt_weight
        if backend == "cutlass":
            if self.meta_layout != "rowmajor":
                return self.values, self.meta
            return None if self.cutlass_meta is None else (self.values, self.cutlass_meta)
        if backend == "torch_semi_structured":
            return self._torch_sparse
        raise RiaInputError(f"{backend!r} is not a tensor-core backend")

    def _set_copy(self, backend: str, copy) -> None:
        if backend == "cusparselt":
            self.cslt_weight = copy
        elif backend == "torch_semi_structured":
            self._torch_sparse = copy
        else:
            raise RiaInputError(f"{backend!r} runs from the compact weight, not from a copy of its own")

    def _held_copies(self) -> list[str]:
        """The backends holding a compressed copy of their own (cuSPARSELt, torch's 2:4 tensor)."""
        return [b for b in COPY_BACKENDS if self._get_copy(b) is not None]

    def _tensor_core_ready(self) -> list[str]:
        """The tensor-core backends this module can run now (own copy or the compact weight itself)."""
        return [b for b in TENSOR_CORE_BACKENDS if self._get_copy(b) is not None]

    def compact_meta(self) -> torch.Tensor:
        """The metadata in the row-major compact order (``compress_24``'s; what checkpoints store)."""
        return layout_to_compact(self.meta, self.out_features, self.in_features, self.meta_layout)

    def _tensor_core_copy(self, backend: str):
        """Build ``backend``'s copy from the compact format (a transient dense weight, freed here)."""
        dense = self.weight if self.weight is not None else decompress_24(self.values, self.compact_meta())
        return _compress_for_backend(backend, dense)

    def _lay_out_meta(self, dev: torch.device, dt: torch.dtype) -> str | None:
        """Put ``meta`` in the order the device's kernels read; returns why CUTLASS cannot run (None: it can).

        One copy where the compact kernel reads the CUTLASS order too; else row-major ``meta`` plus
        ``cutlass_meta`` in CUTLASS's order (logged: 1/16 of the dense bytes more)."""
        n, k = self.out_features, self.in_features
        compact = self.compact_meta()
        self.cutlass_meta = None
        if self.memory == "dense":
            target, why = "rowmajor", "memory='dense' is the F.linear reference"
        else:
            target = cutlass_meta_layout(dev, dt, n, k)
            why = None
            if target == "rowmajor":
                why = backend_unavailable_reasons(dev, dt, n, k, ("cutlass",))["cutlass"] or \
                    f"the cutlass kernel for this GPU does not take [{n}x{k}] {dt}"
            elif _meta_bytes(n, k, target) > _meta_bytes(n, k, "rowmajor"):
                # sm90 pads to 64 rows x 128 columns: the one copy would outgrow the compact format
                why = f"the {target} metadata of [{n}x{k}] needs padding (more bytes than the compact format)"
                target = "rowmajor"
        if target != "rowmajor" and not compact_kernel_reads(dev, target):
            self.cutlass_meta = compact_to_layout(compact, n, k, target)
            log_once(("SparseLinear.second_meta", target), "SparseLinear: the compact kernel cannot read %s metadata "
                     "yet: holding row-major meta plus a %s copy for CUTLASS (+1/16 of the dense bytes)", target, target,
                     level=logging.WARNING)
            target = "rowmajor"
        self.meta = compact_to_layout(compact, n, k, target)
        self.meta_layout = target
        return why

    def _prepare(self) -> None:
        """(Re)build what the memory mode holds besides the compact format, for the current device and
        dtype of ``values``; reset the per-bucket choices. Called at construction and after ``.to()``."""
        dev, dt = self.values.device, self.values.dtype
        n, k = self.out_features, self.in_features
        for b in COPY_BACKENDS:
            self._set_copy(b, None)
        self._memo.clear()
        self._plans.clear()
        self._section = device_section(dev) if dev.type == "cuda" else None
        reasons = backend_unavailable_reasons(dev, dt, n, k, ("sparse24",))
        if self.memory == "dense":
            reasons["dense"] = None
        reasons["cutlass"] = self._lay_out_meta(dev, dt)
        copies = []
        if self._forced in COPY_BACKENDS:
            copies = [self._forced]
        elif self.memory == "cusparselt" and self._forced is None:
            copies = ["cusparselt"]
        can = backend_unavailable_reasons(dev, dt, n, k, COPY_BACKENDS)
        for b in COPY_BACKENDS:
            if b in copies and can[b] is None:
                self._set_copy(b, self._tensor_core_copy(b))
                reasons[b] = None
            elif b in copies:
                reasons[b] = can[b]
            else:
                reasons[b] = (f"memory={self.memory!r} holds no cuSPARSELt copy" if b == "cusparselt"
                              else "torch_semi_structured is forced-only")
        if self._forced == "sparse24":
            reasons["cutlass"] = reasons["cutlass"] or "backend 'sparse24' forced"
        if self._forced is not None and reasons.get(self._forced) is not None:
            raise BackendUnavailableError(f"SparseLinear [{n}x{k} {dt}]: backend {self._forced!r} forced but "
                                          f"unavailable: {reasons[self._forced]}")
        self._unavailable = reasons
        ready = [b for b in self._tensor_core_ready() if reasons.get(b) is None]
        self.backend = self._forced or ("auto" if ready else "sparse24")
        skipped = {b: r for b, r in reasons.items() if r is not None}
        log_once(("SparseLinear.build", n, k, str(dt), str(dev.type), self.memory, self.backend, tuple(ready),
                  self.meta_layout, tuple(sorted(skipped))),
                 "SparseLinear [%dx%d %s]: memory=%s, backend=%s, meta=%s, tensor-core backends=%s%s", n, k, dt,
                 self.memory, self.backend, self.meta_layout, ready or None,
                 f", not available: {skipped}" if skipped else "")
        if self.cusparselt_without_copy:  # e.g. on a CPU: say it, instead of silently running as "compact"
            log_once(("SparseLinear.cusparselt_without_copy", str(dev.type), str(dt)),
                     "SparseLinear memory='cusparselt' on %s (%s) holds no cuSPARSELt copy: it cannot be built here "
                     "(%s); it runs as memory='compact'", dev.type, dt, reasons["cusparselt"], level=logging.WARNING)
        if self.backend == "auto":
            self._load_memo()

    @property
    def cusparselt_without_copy(self) -> bool:
        """``memory="cusparselt"`` that could hold no cuSPARSELt copy here (a CPU, an unsupported dtype or
        GPU): the module holds and runs what ``memory="compact"`` does."""
        return self.memory == "cusparselt" and self._forced is None and self.cslt_weight is None

    def _apply(self, fn, recurse=True):
        before = (self.values.dtype, self.values.device)
        out = super()._apply(fn, recurse)
        if (self.values.dtype, self.values.device) != before:
            self._prepare()  # tensor-core copies are device/dtype specific: rebuild from the compact format
        return out

    def dense_weight(self) -> torch.Tensor:
        """The masked dense weight ``[out_features, in_features]``, decompressed now (allocates; for
        tests and debugging -- the forward path never builds it)."""
        return self.weight.detach() if self.weight is not None else decompress_24(self.values, self.compact_meta())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.meta_layout != "rowmajor":  # the checkpoint format is row-major (portable), whatever the device
            destination[prefix + "meta"] = self.compact_meta()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "meta"
        if self.meta_layout != "rowmajor" and isinstance(state_dict.get(key), torch.Tensor):
            # state dicts hold row-major metadata: lay it out like ours (load_state_dict passes its own copy)
            state_dict[key] = compact_to_layout(state_dict[key], self.out_features, self.in_features,
                                                self.meta_layout)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def held_bytes(self) -> dict[str, int]:
        """Bytes this module holds, by component (parameters, buffers and torch's 2:4 tensor)."""
        out = {name: t.numel() * t.element_size() for name, t in
               [*self.named_parameters(recurse=False), *self.named_buffers(recurse=False)] if t is not None}
        ts = self._torch_sparse
        if ts is not None:
            out["torch_semi_structured"] = sum(t.numel() * t.element_size() for t in
                                               (getattr(ts, "packed", None), getattr(ts, "meta", None))
                                               if isinstance(t, torch.Tensor))
        return out

    # ----------------------------------------------------------------- selection
    def _key(self, bucket: int) -> str:
        return shape_key(self.out_features, self.in_features, self.values.dtype, self.bias is not None, bucket)

    def _load_memo(self) -> None:
        """Pre-fill the per-bucket choices from the on-disk table (so compiled code sees them)."""
        if self._section is None:
            return
        prefix = self._key(0).rsplit("T=", 1)[0]
        for key, entry in get_tune_table().entries(self._section).items():
            if key.startswith(prefix):
                self._decide(int(key.rsplit("T=", 1)[1]), entry, measure=None)

    def _decide(self, bucket: int, entry: dict | None, measure) -> tuple[str, tuple | None]:
        timings = _timings(entry)
        device_type = self._device_type()
        backend, why = choose_backend(self._forced, device_type=device_type, unavailable=self._unavailable,
                                      timings=timings, measure=measure, bucket=bucket)
        if measure is not None and timings is None:
            entry = get_tune_table().get(self._section, self._key(bucket))  # written by the measurement
            timings = _timings(entry)
        cfg = None
        if backend == "cusparselt":
            cfg = tuple(entry["cslt_config"]) if entry and entry.get("cslt_config") else None
        log_once(("SparseLinear", self.out_features, self.in_features, str(self.values.dtype), bucket, backend,
                  self.memory), "SparseLinear [%dx%d %s] memory=%s tokens<=%d: backend=%s (%s)", self.out_features,
                 self.in_features, self.values.dtype, self.memory, bucket, backend, why)
        timeable = device_type == "cuda" and any(self._unavailable.get(b) is None for b in TENSOR_CORE_BACKENDS)
        if timings is not None or not timeable:  # a "cannot time now" pick is not memoised: a later eager call may
            self._memo[bucket] = (backend, cfg)
        return backend, cfg

    def _untimed_choice(self, bucket) -> tuple[str, tuple | None]:
        """What runs for a bucket with no memoised choice while nothing may be timed (tracing): the forced
        backend, else the static default."""
        if self._forced is not None:
            return self._forced, DEFAULT_CSLT_CONFIG if self._forced == "cusparselt" else None
        return choose_backend(None, device_type=self._device_type(), unavailable=self._unavailable,
                              bucket=bucket)[0], None

    def _select(self, tokens) -> tuple[str, tuple | None]:
        compiling = torch.compiler.is_compiling()
        bucket = token_bucket(tokens)
        hit = self._memo.get(bucket)
        if hit is None:
            hit = self._untimed_choice(bucket) if compiling else self._select_eager(int(bucket))
        if hit[0] == "cusparselt" and not compiling and _capturing(self.values.device):
            hit = self._capture_guard(int(tokens), hit)
        return hit

    def _plan_key(self, tokens: int, cfg) -> tuple:
        padded = -(-int(tokens) // CSLT_TOKEN_MULTIPLE) * CSLT_TOKEN_MULTIPLE
        return padded, tuple(cfg or DEFAULT_CSLT_CONFIG), 0 if self.bias is None else self.bias.data_ptr()

    def _capture_guard(self, tokens: int, hit: tuple[str, tuple | None]) -> tuple[str, tuple | None]:
        """Inside CUDA-graph capture a cuSPARSELt call must find its plan made beforehand (plan creation
        and search cannot be captured): else the compact kernel runs (automatic) or it refuses (forced)."""
        if self._plan_key(tokens, hit[1]) in self._plans:
            return hit
        msg = (f"SparseLinear [{self.out_features}x{self.in_features}]: no cuSPARSELt plan was made for {tokens} "
               f"tokens before this CUDA-graph capture (plans cannot be created inside a capture)")
        if self._forced == "cusparselt":
            raise BackendUnavailableError(msg + "; run the module once eagerly at this token count first "
                                                "(SparseLinear.prepare_capture)")
        log_once(("SparseLinear.capture_fallback", self.out_features, self.in_features, tokens),
                 "%s; the compact 2:4 kernel runs in the graph", msg, level=30)
        return "sparse24", None

    def _select_eager(self, bucket: int) -> tuple[str, tuple | None]:
        capturing = _capturing(self.values.device)
        if self._forced == "cusparselt":
            entry = get_tune_table().get(self._section, self._key(bucket))
            if entry and entry.get("cslt_config"):
                cfg = tuple(entry["cslt_config"])
            elif capturing:
                raise BackendUnavailableError(
                    f"SparseLinear [{self.out_features}x{self.in_features}]: backend 'cusparselt' forced but no "
                    f"cuSPARSELt config was searched for tokens<={bucket}, and searching / plan creation cannot run "
                    "inside CUDA-graph capture: call tune() or prepare_capture() at these token counts first")
            else:
                cfg = self._search_cslt(bucket)
                merged = dict(entry or {"ms": {}, "choice": None, "tokens": bucket})
                merged.update(cslt_config=list(cfg), date=_now())
                get_tune_table().put(self._section, self._key(bucket), merged)
                get_tune_table().save()
            return self._memo_forced(bucket, cfg)
        if self._forced is not None:
            return self._memo_forced(bucket, None)
        entry = None if self._section is None else get_tune_table().get(self._section, self._key(bucket))
        measure = None
        if _timings(entry) is None and not capturing and _autotune_enabled() and self._device_type() == "cuda":
            measure = lambda cands: self._measure(bucket, cands)["ms"]  # noqa: E731
        return self._decide(bucket, entry, measure)

    def _memo_forced(self, bucket: int, cfg) -> tuple[str, tuple | None]:
        choice = choose_backend(self._forced, device_type=self._device_type(), unavailable=self._unavailable)[0]
        log_once(("SparseLinear", self.out_features, self.in_features, str(self.values.dtype), bucket, choice),
                 "SparseLinear [%dx%d %s] tokens<=%d: backend=%s (forced)", self.out_features, self.in_features,
                 self.values.dtype, bucket, choice)
        self._memo[bucket] = (choice, cfg)
        return choice, cfg

    # ----------------------------------------------------------------- measurement
    def _example(self, tokens: int) -> torch.Tensor:
        dev = self.values.device
        g = torch.Generator(device=dev).manual_seed(tokens)
        return torch.randn(tokens, self.in_features, device=dev, dtype=self.values.dtype, generator=g)

    def _search_cslt(self, tokens: int) -> tuple[int, int, int]:
        x = self._example(tokens)
        return tuple(sparse_mm.cslt_search(x, self.cslt_weight, self.out_features, self.bias, None))

    def _measure(self, bucket: int, backends: Sequence[str]) -> dict:
        """Time ``backends`` at ``bucket`` tokens (L2 flushed before every call); store, persist, return."""
        x = self._example(bucket)
        cfg = self._search_cslt(bucket) if "cusparselt" in backends else None
        flush = l2_flusher(self.values.device)
        ms = {b: _time_ms(lambda b=b: self._run(b, x, cfg), flush=flush) for b in backends}
        choice, _ = choose_backend(None, device_type="cuda", unavailable={b: None for b in backends}, timings=ms)
        entry = {"ms": ms, "choice": choice, "cslt_config": None if cfg is None else list(cfg), "tokens": bucket,
                 "date": _now()}
        table = get_tune_table()
        table.put(self._section, self._key(bucket), entry)
        table.save()
        return entry

    def _tune_bucket(self, bucket: int, remeasure: bool) -> None:
        if remeasure:
            self._memo.pop(bucket, None)
        usable = [b for b in TENSOR_CORE_BACKENDS if self._unavailable.get(b, "") is None]
        if self._forced is not None or not usable or self._device_type() != "cuda" or bucket in self._memo:
            return
        entry = None if remeasure else get_tune_table().get(self._section, self._key(bucket))
        timings = _timings(entry)
        if timings is None or any(b not in timings for b in usable):
            entry = self._measure(bucket, usable + ["sparse24"])
        self._decide(bucket, entry, measure=None)

    def tune(self, token_counts: Iterable[int], *, remeasure: bool = False) -> dict[int, str]:
        """Measure every token bucket of ``token_counts`` now, eagerly (or search the config of a forced
        cuSPARSELt); returns ``{bucket: backend}``. Call before ``torch.compile`` / graph capture. Every
        tensor-core backend the module can run (CUTLASS on the compact weight, cuSPARSELt's copy in
        ``memory="cusparselt"``) is timed against the compact kernel."""
        buckets = []
        for t in token_counts:
            if int(t) < 1:
                raise RiaInputError(f"token_counts must be >= 1, got {t}")
            buckets.append(token_bucket(int(t)))
        for b in buckets:
            self._tune_bucket(b, remeasure)
        return {b: self._select(b)[0] for b in buckets}

    def prepare_capture(self, token_counts: Iterable[int]) -> dict[int, str]:
        """Run the module once eagerly at every exact token count of ``token_counts`` (choices timed,
        cuSPARSELt plans made, kernels compiled), so a CUDA-graph capture at those counts replays them;
        returns ``{tokens: backend}``."""
        out = {}
        with torch.no_grad():
            for t in token_counts:
                if int(t) < 1:
                    raise RiaInputError(f"token_counts must be >= 1, got {t}")
                self(torch.zeros(int(t), self.in_features, dtype=self.values.dtype, device=self.values.device))
                out[int(t)] = self._select(int(t))[0]
        return out

    def backend_for(self, tokens: int) -> str:
        """The backend ``forward`` uses for ``tokens`` rows (eager; may time the bucket first)."""
        return self._select(int(tokens))[0]

    def release_unused(self) -> list[str]:
        """Free what only an unused tensor-core backend needs (after ``tune``: cuSPARSELt's copy, the
        second CUTLASS metadata beside a row-major ``meta``); returns those backends. The compact weight
        itself is never freed, so CUTLASS on it stays."""
        if self._forced is not None:
            return []
        used = {b for b, _ in self._memo.values()}
        freed = [b for b in self._held_copies() if b not in used]
        for b in freed:
            self._set_copy(b, None)
            self._unavailable[b] = "released by release_unused()"
        if self.cutlass_meta is not None and "cutlass" not in used:
            self.cutlass_meta = None
            self._unavailable["cutlass"] = "released by release_unused()"
            freed.append("cutlass")
        if freed and not any(self._unavailable.get(b) is None for b in self._tensor_core_ready()):
            self.backend = "sparse24"
        return freed

    # ----------------------------------------------------------------- compute
    def _run(self, backend: str, x2: torch.Tensor, cfg) -> torch.Tensor:
        if backend == "sparse24":
            return sparse24_mm(x2, self.values, self.meta, self.bias, meta_layout=self.meta_layout)
        if backend == "dense":
            return F.linear(x2, self.weight, self.bias)
        if backend == "cusparselt":
            cfg = tuple(cfg) if cfg is not None else DEFAULT_CSLT_CONFIG
            y = _cslt_matmul(x2, self.cslt_weight, self.out_features, self.bias, cfg)
            if not torch.compiler.is_compiling():
                self._plans.add(self._plan_key(x2.shape[0], cfg))  # the extension made (or reused) this plan
            return y
        if backend == "cutlass":
            return _cutlass_matmul(x2, *self._get_copy("cutlass"), self.bias)
        return F.linear(x2, self._torch_sparse, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RiaInputError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype != self.values.dtype:
            raise RiaInputError(f"x dtype {x.dtype} != SparseLinear dtype {self.values.dtype}")
        x2 = x.reshape(-1, self.in_features)  # a view when x is contiguous
        tokens = x2.shape[0]
        if tokens == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        backend, cfg = self._select(tokens)
        if backend == "dense":
            return F.linear(x, self.weight, self.bias)
        if x.device != self.values.device:
            raise RiaInputError(f"x is on {x.device} but this SparseLinear's compressed weight is on "
                                f"{self.values.device}")
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        return self._run(backend, x2, cfg).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"memory={self.memory}" + (" (no cuSPARSELt copy here)" if self.cusparselt_without_copy else "")
                + f", meta={self.meta_layout}, backend={self.backend}")


def tune_model(model: nn.Module, token_counts: Iterable[int]) -> dict[str, dict[int, str]]:
    """:meth:`SparseLinear.tune` on every ``SparseLinear`` of ``model`` (the table is shared by
    shape, so repeated shapes are measured once)."""
    counts = list(token_counts)
    return {name: m.tune(counts) for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def linear_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the linears of ``model`` (parameters + buffers of every ``nn.Linear`` and
    ``SparseLinear``; a gathered linear's permutation is not a linear's): ``{"sparse": ..., "dense": ...,
    "total": ...}`` where ``sparse`` counts SparseLinear modules and ``dense`` plain ``nn.Linear``."""
    out = {"sparse": 0, "dense": 0}
    for m in model.modules():
        if isinstance(m, SparseLinear):
            out["sparse"] += sum(m.held_bytes().values())
        elif isinstance(m, nn.Linear):
            out["dense"] += sum(t.numel() * t.element_size() for t in
                                [*m.parameters(recurse=False), *m.buffers(recurse=False)])
    out["total"] = out["sparse"] + out["dense"]
    return out
