"""Sequential layer-wise pruning, as in the Wanda / RIA / SparseGPT repositories:
the inputs of decoder layer 0 are captured once, then for each decoder layer

1. one calibration pass on its (already pruned-upstream) inputs accumulates the
   activation statistics of every linear (``calibration.collect_stats``);
2. every linear is scored (``ops.ria_score.pruning_score``) and masked
   (``ops.nm_mask.nm_mask`` / ``unstructured_mask``; one threshold per linear module
   by default as in RIA, per output row with ``per_output=True`` as in Wanda), and
   optionally refit (``reconstruction="obs"`` / ``"ls"``), or pruned by SparseGPT or ALPS
   (``ria_kernels.alps``; one eigendecomposition per shared input); pruned weights are
   zeroed in place;
3. the layer's outputs are recomputed with the pruned weights and become the next
   layer's inputs.

All inputs are validated before the model is touched.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ._backend import BACKENDS, resolve_backend
from ._errors import RiaInputError
from ._logging import logger
from ._validation import SparsitySpec, check_ratio, parse_sparsity
from .calibration import LinearStats, check_calibration, check_seqlen, collect_stats, model_max_positions
from .models import ModelAdapter, get_adapter, materialized, module_device
from .ops.nm_mask import nm_mask, unstructured_mask
from .ops.ria_score import METHODS as SCORE_METHODS
from .ops.ria_score import pruning_score

METHODS = SCORE_METHODS + ("sparsegpt", "alps")
RECONSTRUCTIONS = ("obs", "ls")  # SparseGPT/OBS update; least-squares refit by masked PCG (ria_kernels.refit)
STAGES = ("capture", "stats", "score", "permutation", "mask", "sparsegpt", "alps_eig", "alps_admm", "refit",
          "recompute")


@dataclass
class LinearReport:
    """One linear after pruning: actual sparsity (pruned / total), counts, seconds spent.
    Where a Hessian was collected: ``output_error`` = ``||(W'-W) X||^2 / ||W X||^2`` on the
    calibration inputs; ALPS adds its ADMM ``iterations``, final ``rho`` and last
    ``support_change``; ``cg_iterations``: PCG refit iterations (ALPS, ``reconstruction="ls"``)."""

    sparsity: float
    kept: int
    total: int
    time_s: float
    output_error: float | None = None
    iterations: int | None = None
    cg_iterations: int | None = None
    support_change: float | None = None
    rho: float | None = None

    def to_dict(self) -> dict:
        out = {"sparsity": self.sparsity, "kept": self.kept, "total": self.total, "time_s": self.time_s}
        for k in ("output_error", "iterations", "cg_iterations", "support_change", "rho"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


@dataclass
class LayerReport:
    index: int
    target_sparsity: float
    linears: dict[str, LinearReport] = field(default_factory=dict)
    time_s: float = 0.0           # whole layer: stats pass + pruning + output recompute
    stats_time_s: float = 0.0
    permutation_time_s: float | None = None   # channel-permutation search, summed over the layer's groups

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.linears.values())

    @property
    def total(self) -> int:
        return sum(r.total for r in self.linears.values())

    @property
    def actual_sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        out = {"index": self.index, "target_sparsity": float(self.target_sparsity),
               "actual_sparsity": self.actual_sparsity, "time_s": self.time_s, "stats_time_s": self.stats_time_s,
               "linears": {n: r.to_dict() for n, r in self.linears.items()}}
        if self.permutation_time_s is not None:
            out["permutation_time_s"] = self.permutation_time_s
        return out


@dataclass
class PruneReport:
    """What ``prune_model`` did. ``permutations``: full linear name -> input-channel
    permutation (CPU LongTensor; the N:M pattern holds on ``weight[:, perm]``)."""

    method: str
    sparsity: str
    a: float
    per_output: bool
    family: str = ""
    nsamples: int = 0
    seqlen: int = 0
    reconstruction: bool = False
    reconstruction_kind: str | None = None   # "obs" | "ls" | None
    permute: bool = False
    layer_sparsities: list[float] | None = None
    backend: dict[str, str] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)
    permutation_stats: dict[str, dict] = field(default_factory=dict)
    permutation_blocks: int | None = None     # the blocks (LSA communities) asked for, with permute
    capture_time_s: float = 0.0
    total_time_s: float = 0.0
    stage_times_s: dict[str, float] = field(default_factory=dict)  # STAGES -> seconds, summed over layers

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def actual_sparsity(self) -> float:
        """Pruned fraction over all pruned linears (embeddings / head excluded)."""
        return 1.0 - self.kept / self.total if self.total else 0.0

    def permutation_summary(self) -> dict | None:
        """What the channel-permutation search used and cost over the whole run (None without it):
        the blocks asked for and the effective values (capped at the groups of M of an input), the
        gain backends and LSA solvers that ran, the number of problems, total and slowest layer's
        search seconds."""
        if not self.permute:
            return None
        stats = self.permutation_stats.values()
        layer_s = [la.permutation_time_s for la in self.layers if la.permutation_time_s is not None]
        return {"blocks": self.permutation_blocks,
                "blocks_used": sorted({s["blocks"] for s in stats if s.get("blocks") is not None}),
                "lsa": any(s.get("lsa_solver") for s in stats),
                "gain_backend": ",".join(sorted({s["gain_backend"] for s in stats if s.get("gain_backend")})) or None,
                "lsa_solver": ",".join(sorted({s["lsa_solver"] for s in stats if s.get("lsa_solver")})) or None,
                "problems": len(self.permutation_stats),
                "time_s": float(sum(s["time_s"] for s in stats)),
                "max_layer_time_s": max(layer_s) if layer_s else None}

    def to_dict(self) -> dict:
        """JSON-safe summary, numbers as numbers (permutations are listed by name; the tensors
        stay in the object). ``sparsity_type``: ``"unstructured"`` or the N:M pattern such as
        ``"2:4"``; ``sparsity_ratio``: the target pruned fraction. Field list: docs/report_schema.md."""
        try:
            spec = parse_sparsity(self.sparsity)
        except RiaInputError:  # e.g. a report loaded from an older permutations file
            spec = None
        return _json_safe({
            "method": self.method, "sparsity_type": (str(spec) if spec.is_nm else "unstructured") if spec else None,
            "sparsity_ratio": spec.ratio if spec else None, "a": self.a, "per_output": self.per_output,
            "family": self.family, "nsamples": self.nsamples, "seqlen": self.seqlen,
            "reconstruction": self.reconstruction, "reconstruction_kind": self.reconstruction_kind,
            "permute": self.permute,
            "layer_sparsities": self.layer_sparsities, "backend": self.backend,
            "actual_sparsity": self.actual_sparsity, "pruned_weights": self.total - self.kept,
            "total_weights": self.total, "capture_time_s": self.capture_time_s,
            "total_time_s": self.total_time_s, "stage_times_s": dict(self.stage_times_s),
            "layers": [layer.to_dict() for layer in self.layers],
            "permutations": sorted(self.permutations),
            "permutation_stats": self.permutation_stats,
            "permutation": self.permutation_summary(),
        })

    def save_permutations(self, path: str | Path) -> Path:
        """Write what ``to_sparse_inference`` needs (family, sparsity, permutations) with
        ``torch.save``; a directory gets ``PERMUTATIONS_FILE`` inside it. Returns the file."""
        path = Path(path)
        if path.is_dir():
            path = path / PERMUTATIONS_FILE
        torch.save({"format": 1, "method": self.method, "sparsity": self.sparsity, "family": self.family,
                    "permutations": {k: v.detach().to("cpu", torch.long) for k, v in self.permutations.items()}},
                   path)
        return path


PERMUTATIONS_FILE = "ria_permutations.pt"


def load_prune_report(path: str | Path) -> PruneReport:
    """A :class:`PruneReport` carrying the permutations saved by :meth:`PruneReport.save_permutations`
    (a file, or a checkpoint directory written by ``ria-prune --save``), for ``to_sparse_inference``."""
    path = Path(path)
    if path.is_dir():
        path = path / PERMUTATIONS_FILE
    if not path.is_file():
        raise RiaInputError(f"no saved permutations at {path} (written by ria-prune --permute --save DIR)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("permutations"), dict):
        raise RiaInputError(f"{path} is not a ria-kernels permutations file")
    return PruneReport(method=str(data.get("method", "")), sparsity=str(data.get("sparsity", "")), a=0.5,
                       per_output=False, family=str(data.get("family", "")), permute=bool(data["permutations"]),
                       permutations=dict(data["permutations"]))


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None  # JSON has no inf/nan; docs/report_schema.md: null
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _json_safe(obj.item())
    return str(obj)


def _check_int(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RiaInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def max_permutation_blocks(adapter: ModelAdapter, spec: SparsitySpec) -> int:
    """Largest useful ``blocks`` (LSA communities) for channel permutation on this model:
    every community must hold at least two M-channel blocks of the narrowest permuted input,
    or the LSA step has nothing to exchange (the result would equal ``lsa=False``)."""
    widths = [lin.in_features for name, lin in adapter.linears(adapter.layers()[0]).items()]
    return max(1, min(widths) // spec.m // 2) if spec.is_nm and widths else 1


def check_blocks(adapter: ModelAdapter, spec: SparsitySpec, blocks: int, name: str = "blocks") -> None:
    """RiaInputError when ``blocks`` LSA communities exceed :func:`max_permutation_blocks`."""
    if spec.is_nm and blocks > 1:
        limit = max_permutation_blocks(adapter, spec)
        if blocks > limit:
            raise RiaInputError(f"{name}={blocks} is too many LSA communities for this model: its narrowest "
                                f"permuted input is split into {2 * limit} blocks of M={spec.m}, so at most "
                                f"{limit} communities of >= 2 blocks (more would equal no LSA at all)")


def normalize_reconstruction(reconstruction) -> str | None:
    """``False``/``None`` -> None, ``True``/``"obs"`` -> ``"obs"`` (the SparseGPT/OBS update, as
    before), ``"ls"`` -> ``"ls"`` (least-squares refit); anything else is a RiaInputError."""
    if reconstruction is None or reconstruction is False:
        return None
    if reconstruction is True:
        return "obs"
    if isinstance(reconstruction, str) and reconstruction.lower() in RECONSTRUCTIONS:
        return reconstruction.lower()
    raise RiaInputError(f"reconstruction must be False, True (= 'obs'), 'obs' or 'ls', got {reconstruction!r}")


def _validate(model: nn.Module, calibration, method: str, spec: SparsitySpec, a, layer_sparsities,
              permute: bool, lsa: bool, blocks, blocksize, percdamp, batch_size, backend, reconstruction: str | None,
              per_output: bool) -> ModelAdapter:
    if not isinstance(method, str) or method not in METHODS:
        raise RiaInputError(f"method must be one of {METHODS}, got {method!r}")
    adapter = get_adapter(model)
    check_calibration(calibration, getattr(model.config, "vocab_size", None))
    check_seqlen(int(calibration.shape[1]), model_max_positions(model), "calibration seqlen")
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
        raise RiaInputError(f"a (RIA activation exponent) must be a finite number, got {a!r}")
    _check_int(blocks, "blocks")
    _check_int(blocksize, "blocksize")
    _check_int(batch_size, "batch_size")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not (0 < percdamp < 1):
        raise RiaInputError(f"percdamp must be in (0, 1), got {percdamp!r}")
    if backend is not None and str(backend).lower() not in BACKENDS:
        raise RiaInputError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    n_layers = adapter.num_layers
    if layer_sparsities is not None:
        if spec.is_nm:
            raise RiaInputError("layer_sparsities (ATP/OWL allocation) needs unstructured sparsity, "
                                f"not the N:M pattern {spec}")
        if isinstance(layer_sparsities, (str, bytes)) or not hasattr(layer_sparsities, "__len__"):
            raise RiaInputError(f"layer_sparsities must be a sequence of ratios, got {type(layer_sparsities).__name__}")
        if len(layer_sparsities) != n_layers:
            raise RiaInputError(f"layer_sparsities has {len(layer_sparsities)} entries, the model has {n_layers} layers")
        for i, s in enumerate(layer_sparsities):
            check_ratio(s, f"layer_sparsities[{i}]")
    if permute and not spec.is_nm:
        raise RiaInputError("permute=True (channel permutation) needs an N:M sparsity such as '2:4'")
    if reconstruction and method == "sparsegpt":
        raise RiaInputError("reconstruction=True is what method='sparsegpt' already does; "
                            "use it with magnitude, wanda, ri or ria")
    if reconstruction and method == "alps":
        raise RiaInputError("method='alps' ends with the least-squares refit already (reconstruction='ls'); "
                            "use reconstruction with magnitude, wanda, ri or ria")
    if per_output and spec.is_nm:
        raise RiaInputError(f"per_output=True is for unstructured sparsity; the N:M pattern {spec} is per row already")
    if blocks != 1 and not (permute and lsa):
        raise RiaInputError(f"blocks={blocks} splits the LSA step of channel permutation; it needs permute=True "
                            "and lsa=True")
    check_blocks(adapter, spec, blocks)
    if spec.is_nm:
        for i, layer in enumerate(adapter.layers()):
            for name, lin in adapter.linears(layer).items():
                if lin.in_features % spec.m != 0:
                    raise RiaInputError(f"{adapter.full_name(i, name)}.in_features={lin.in_features} "
                                        f"is not divisible by M={spec.m}")
    return adapter


def _masks_for_group(scores: dict[str, torch.Tensor], spec: SparsitySpec, ratio: float, per_output: bool,
                     permute: bool, lsa: bool, blocks: int, backend):
    """Keep-masks (original channel order) for one group of linears sharing an input,
    plus the permutation result (or None)."""
    if not spec.is_nm:
        return {n: unstructured_mask(s, ratio, per_output, backend=backend) for n, s in scores.items()}, None
    if not permute:
        return {n: nm_mask(s, spec.n, spec.m, backend=backend) for n, s in scores.items()}, None
    from .permutation import channel_permutation
    result = channel_permutation(torch.cat(list(scores.values()), dim=0), spec.n, spec.m, lsa=lsa, blocks=blocks)
    masks = {}
    for n, s in scores.items():
        perm = result.perm.to(s.device)
        mask_p = nm_mask(s[:, perm].contiguous(), spec.n, spec.m, backend=backend)
        mask = torch.empty_like(mask_p)
        mask[:, perm] = mask_p
        masks[n] = mask
    return masks, result


@torch.no_grad()
def prune_model(model: nn.Module, calibration: torch.Tensor, *, method: str = "ria",
                sparsity: float | str = 0.5, a: float = 0.5, per_output: bool = False,
                layer_sparsities: Sequence[float] | None = None, reconstruction: bool | str | None = False,
                permute: bool = False, lsa: bool = True, blocks: int = 1, blocksize: int = 128,
                percdamp: float = 0.01, batch_size: int = 1, offload: bool = False,
                progress: bool = True, backend: str | None = None) -> PruneReport:
    """Prune ``model`` in place, layer by layer, and return a :class:`PruneReport`.

    ``calibration``: LongTensor [nsamples, seqlen] of token ids. ``sparsity``: a ratio
    in [0, 1) (unstructured) or a pattern ``"N:M"`` (N of every M consecutive input
    weights pruned). ``method``: magnitude | wanda | ri | ria | sparsegpt | alps (ADMM,
    ``ria_kernels.alps``). ``a``: RIA's activation exponent (also the score of the channel
    permutation search for sparsegpt / alps with ``permute=True``). ``per_output``: unstructured threshold per output row (Wanda)
    instead of per linear module (RIA). ``layer_sparsities``: one ratio per decoder
    layer (ATP/OWL; unstructured only). ``reconstruction``: update of the kept weights
    after masking: ``"obs"`` (or ``True``) the SparseGPT/OBS update (RIA App. E), ``"ls"`` the
    exact least-squares refit by masked PCG (``ria_kernels.refit``). ``permute``: input-channel permutation for
    N:M (RIA Sec. 4.2; ``lsa``/``blocks`` tune it). ``batch_size``: calibration samples
    per forward. ``offload``: keep layer inputs on the CPU. ``backend``: force the
    score/mask backend (``"triton"`` | ``"torch"``). All inputs are validated before the
    model is touched.
    """
    spec = parse_sparsity(sparsity)
    reconstruction = normalize_reconstruction(reconstruction)
    adapter = _validate(model, calibration, method, spec, a, layer_sparsities, permute, lsa, blocks, blocksize,
                        percdamp, batch_size, backend, reconstruction, per_output)
    backends = _backends(adapter, spec, method, backend)
    need_hessian = method in ("sparsegpt", "alps") or reconstruction is not None
    report = PruneReport(method=method, sparsity=str(spec), a=float(a), per_output=bool(per_output),
                         family=adapter.family, nsamples=int(calibration.shape[0]),
                         seqlen=int(calibration.shape[1]), reconstruction=reconstruction is not None,
                         reconstruction_kind=reconstruction, permute=bool(permute), backend=backends,
                         permutation_blocks=int(blocks) if permute else None,
                         layer_sparsities=None if layer_sparsities is None else [float(s) for s in layer_sparsities])
    was_training = model.training
    model.eval()
    try:
        _run(model, adapter, calibration, report, spec, method, a, per_output, layer_sparsities, reconstruction,
             permute, lsa, blocks, blocksize, percdamp, batch_size, offload, progress, backend, need_hessian)
    finally:
        model.train(was_training)
    logger.info("pruned %s with %s at %s: actual sparsity %.4f in %.2fs (score/mask backend %s)", adapter.family,
                method, spec, report.actual_sparsity, report.total_time_s, report.backend)
    return report


def _run(model, adapter, calibration, report, spec, method, a, per_output, layer_sparsities, reconstruction,
         permute, lsa, blocks, blocksize, percdamp, batch_size, offload, progress, backend, need_hessian):
    t_start = time.perf_counter()
    inputs = adapter.capture_layer_inputs(calibration, batch_size=batch_size, offload=offload)
    report.capture_time_s = time.perf_counter() - t_start
    report.stage_times_s = dict.fromkeys(STAGES, 0.0)
    report.stage_times_s["capture"] = report.capture_time_s
    layers = adapter.layers()
    shared = [g.linears for g in adapter.groups]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(layers), desc=f"pruning {adapter.family} ({method}, {spec})", unit="layer")
    try:
        for i, layer in enumerate(layers):
            t_layer = time.perf_counter()
            ratio = float(layer_sparsities[i]) if layer_sparsities is not None else spec.ratio
            lrep = LayerReport(index=i, target_sparsity=ratio)
            linears = adapter.linears(layer)
            with collect_stats(linears, need_hessian, shared=shared) as stats:
                for hidden, kw in zip(inputs.hidden, inputs.kwargs):
                    adapter.run_layer(layer, hidden, kw)
            lrep.stats_time_s = time.perf_counter() - t_layer
            report.stage_times_s["stats"] += lrep.stats_time_s
            with materialized(layer):
                for group in adapter.groups:
                    _prune_group(adapter, i, group, linears, stats, spec, ratio, method, a, per_output,
                                 reconstruction, permute, lsa, blocks, blocksize, percdamp, backend, lrep, report)
            del stats
            t_rec = time.perf_counter()
            for j, (hidden, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
                inputs.hidden[j] = adapter.run_layer(layer, hidden, kw).to(hidden.device)
            report.stage_times_s["recompute"] += time.perf_counter() - t_rec
            lrep.time_s = time.perf_counter() - t_layer
            report.layers.append(lrep)
            if lrep.permutation_time_s is not None:
                _log_layer_permutation(report, adapter, i, lrep)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(lrep))
    finally:
        if bar is not None:
            bar.close()
    report.total_time_s = time.perf_counter() - t_start


def _postfix(lrep: LayerReport) -> dict[str, str]:
    """Progress-bar fields of one finished layer: sparsity, its channel-permutation search seconds
    (with permute), and where measured the worst linear's output error, the most ALPS iterations
    and the largest last support change."""
    out = {"sparsity": f"{lrep.actual_sparsity:.3f}"}
    if lrep.permutation_time_s is not None:
        out["perm"] = f"{lrep.permutation_time_s:.2f} s"
    lins = lrep.linears.values()
    errs = [r.output_error for r in lins if r.output_error is not None]
    if errs:
        out["max_err"] = f"{max(errs):.4f}"
    its = [r.iterations for r in lins if r.iterations is not None]
    if its:
        out["admm_it"] = str(max(its))
        out["supp_chg"] = f"{max(r.support_change for r in lins if r.support_change is not None):.1e}"
    cg = [r.cg_iterations for r in lins if r.cg_iterations is not None]
    if cg:
        out["cg_it"] = str(max(cg))
    return out


def _log_layer_permutation(report: PruneReport, adapter: ModelAdapter, index: int, lrep: LayerReport) -> None:
    """One INFO line per layer: how long its channel-permutation search took, per problem, and with
    which blocks, gain backend and LSA solver."""
    prefix = f"{adapter.full_name(index, '')}."
    stats = {k[len(prefix):]: s for k, s in report.permutation_stats.items() if k.startswith(prefix)}

    def used(field: str, none: str) -> str:
        return ",".join(sorted({str(s[field]) for s in stats.values() if s.get(field) is not None})) or none

    logger.info("layer %d: channel permutation %.2f s (%s; blocks=%s, gain %s, LSA %s)", index,
                lrep.permutation_time_s, ", ".join(f"{g} {s['time_s']:.2f} s" for g, s in stats.items()),
                used("blocks", "-"), used("gain_backend", "none"), used("lsa_solver", "none (allocation only)"))


def _backends(adapter: ModelAdapter, spec: SparsitySpec, method: str, backend) -> dict[str, str]:
    """Which backend the score and mask ops will run with (their own dispatch rule,
    on the execution device of layer 0); raises BackendUnavailableError up front."""
    dev = module_device(adapter.layers()[0])
    probe = torch.empty(0, device=dev) if dev.type != "meta" else torch.empty(0)
    if method in ("sparsegpt", "alps"):
        return {method: "torch", "device": dev.type}
    return {"score": resolve_backend("pruning_score", probe, backend),
            "mask": resolve_backend("nm_mask" if spec.is_nm else "unstructured_mask", probe, backend),
            "device": dev.type}


def _prune_group(adapter, layer_index, group, linears, stats: dict[str, LinearStats], spec, ratio, method, a,
                 per_output, reconstruction, permute, lsa, blocks, blocksize, percdamp, backend, lrep, report):
    names = group.linears
    layer_spec = spec if spec.is_nm else SparsitySpec(ratio=float(ratio))
    times = dict.fromkeys(names, 0.0)
    stage = report.stage_times_s
    extra: dict[str, dict] = {n: {} for n in names}
    originals = {n: linears[n].weight.data.clone() for n in names} if (
        method in ("sparsegpt", "alps") or reconstruction) else {}

    def tick(name_list, key, t0):
        dt = time.perf_counter() - t0
        stage[key] = stage.get(key, 0.0) + dt
        for n in name_list:
            times[n] += dt / len(name_list)

    perm_result = None
    if method in ("sparsegpt", "alps"):
        perm = None
        if permute:  # the permutation comes from the RIA channel-permutation search, stored as for RIA + CP
            t0 = time.perf_counter()
            scores = {n: pruning_score(linears[n].weight.data, stats[n].act_norm.to(linears[n].weight.device),
                                       "ria", a, backend=backend) for n in names}
            tick(names, "score", t0)
            t0 = time.perf_counter()
            from .permutation import channel_permutation
            perm_result = channel_permutation(torch.cat(list(scores.values()), dim=0), spec.n, spec.m, lsa=lsa,
                                              blocks=blocks)
            perm = perm_result.perm
            del scores
            tick(names, "permutation", t0)
        masks = {}
        if method == "sparsegpt":
            from .sparsegpt import sparsegpt_prune
            for n in names:
                t0 = time.perf_counter()
                w = linears[n].weight
                new_w, masks[n] = sparsegpt_prune(w.data, stats[n].hessian, layer_spec, blocksize=blocksize,
                                                  percdamp=percdamp, perm=None if perm is None else perm.to(w.device))
                w.data.copy_(new_w.to(w.device))
                tick([n], "sparsegpt", t0)
        else:
            from .alps import alps_prune, prepare_hessian
            hess_cache: dict[int, object] = {}  # q/k/v (gate/up) share one LinearStats: one eigh per input
            for n in names:
                w = linears[n].weight
                key = id(stats[n])
                if key not in hess_cache:
                    t0 = time.perf_counter()
                    hess_cache[key] = prepare_hessian(stats[n].hessian, percdamp=percdamp, device=w.device,
                                                      perm=None if perm is None else perm.to(w.device))
                    sharing = [m for m in names if id(stats[m]) == key]
                    tick(sharing, "alps_eig", t0)
                t0 = time.perf_counter()
                res = alps_prune(w.data, hess_cache[key], layer_spec, per_output=per_output and not spec.is_nm)
                w.data.copy_(res.weight.to(w.device))
                masks[n] = res.mask
                stage["alps_admm"] += res.admm_time_s
                stage["refit"] += res.refit_time_s
                times[n] += time.perf_counter() - t0
                extra[n].update(iterations=res.iterations, cg_iterations=res.cg_iterations,
                                support_change=res.support_change, rho=res.rho)
            del hess_cache
        for n in names:
            linears[n].weight.data.masked_fill_(~masks[n].to(linears[n].weight.device), 0)
    else:
        scores = {}
        t0 = time.perf_counter()
        for n in names:
            t1 = time.perf_counter()
            w = linears[n].weight
            scores[n] = pruning_score(w.data, stats[n].act_norm.to(w.device), method, a, backend=backend)
            times[n] += time.perf_counter() - t1
        stage["score"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if permute:
            masks, perm_result = _masks_for_group(scores, spec, ratio, per_output, permute, lsa, blocks, backend)
            tick(names, "permutation", t0)
        else:
            masks = {}
            for n in names:
                t1 = time.perf_counter()
                masks[n] = _masks_for_group({n: scores[n]}, spec, ratio, per_output, False, lsa, blocks, backend)[0][n]
                times[n] += time.perf_counter() - t1
            stage["mask"] += time.perf_counter() - t0
        del scores
        for n in names:
            t0 = time.perf_counter()
            w = linears[n].weight
            if reconstruction == "obs":
                from .sparsegpt import sparsegpt_prune
                new_w, _ = sparsegpt_prune(w.data, stats[n].hessian, layer_spec, blocksize=blocksize,
                                           percdamp=percdamp, mask=masks[n])
                w.data.copy_(new_w.to(w.device))
            elif reconstruction == "ls":
                from .refit import ls_refit
                new_w, info = ls_refit(w.data, stats[n].hessian.to(w.device), masks[n].to(w.device),
                                       percdamp=percdamp)
                w.data.copy_(new_w.to(w.device))
                extra[n]["cg_iterations"] = info.iterations
            w.data.masked_fill_(~masks[n].to(w.device), 0)  # +0.0: mul_ left -0.0 for negative weights
            if reconstruction:
                tick([n], "refit", t0)
            else:
                times[n] += time.perf_counter() - t0
    if perm_result is not None:
        key = f"{adapter.full_name(layer_index, '')}.{group.name}"
        perm_cpu = perm_result.perm.detach().to("cpu", torch.long)
        # blocks: the communities the search ran with (channel_permutation caps them at the groups of M)
        report.permutation_stats[key] = {"linears": list(names), "retained": dict(perm_result.retained),
                                         "time_s": float(perm_result.time_s), "lsa_solver": perm_result.solver,
                                         "gain_backend": perm_result.gain_backend,
                                         "blocks": min(blocks, perm_cpu.numel() // spec.m) if lsa else None,
                                         "rounds_accepted": int(perm_result.rounds_accepted)}
        lrep.permutation_time_s = (lrep.permutation_time_s or 0.0) + float(perm_result.time_s)
        for n in names:
            report.permutations[adapter.full_name(layer_index, n)] = perm_cpu
    if originals:
        from .refit import output_error
        for n in names:
            extra[n]["output_error"] = output_error(linears[n].weight.data, originals[n], stats[n].hessian)
    for n in names:
        kept = int(masks[n].sum())
        total = masks[n].numel()
        lrep.linears[n] = LinearReport(sparsity=1.0 - kept / total, kept=kept, total=total, time_s=times[n],
                                       **extra[n])
