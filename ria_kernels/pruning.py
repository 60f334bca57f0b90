"""Sequential layer-wise pruning, as in the seeds (Wanda / RIA / SparseGPT):
each decoder layer is calibrated on the outputs of the already-pruned layers
before it, its linears are scored and masked, and its outputs are recomputed as
the next layer's inputs."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from ._errors import RiaInputError
from ._logging import logger
from ._validation import SparsitySpec, check_ratio, parse_sparsity
from .calibration import LinearStats, check_calibration, collect_stats
from .models import ModelAdapter, get_adapter
from .ops.nm_mask import nm_mask, unstructured_mask
from .ops.ria_score import METHODS as SCORE_METHODS
from .ops.ria_score import pruning_score

METHODS = SCORE_METHODS + ("sparsegpt",)


@dataclass
class LinearReport:
    sparsity: float
    kept: int
    total: int
    time_s: float


@dataclass
class LayerReport:
    index: int
    target_sparsity: float
    linears: dict[str, LinearReport] = field(default_factory=dict)
    time_s: float = 0.0


@dataclass
class PruneReport:
    method: str
    sparsity: str
    a: float
    per_output: bool
    layers: list[LayerReport] = field(default_factory=list)
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)
    permutation_stats: dict[str, dict] = field(default_factory=dict)
    capture_time_s: float = 0.0
    total_time_s: float = 0.0

    @property
    def kept(self) -> int:
        return sum(r.kept for layer in self.layers for r in layer.linears.values())

    @property
    def total(self) -> int:
        return sum(r.total for layer in self.layers for r in layer.linears.values())

    @property
    def actual_sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method, "sparsity": self.sparsity, "a": self.a, "per_output": self.per_output,
            "actual_sparsity": self.actual_sparsity, "pruned_weights": self.total - self.kept,
            "total_weights": self.total, "capture_time_s": self.capture_time_s,
            "total_time_s": self.total_time_s,
            "layers": [asdict(layer) for layer in self.layers],
            "permutations": sorted(self.permutations),
            "permutation_stats": self.permutation_stats,
        }


def _validate(model: nn.Module, calibration, method: str, spec: SparsitySpec, layer_sparsities,
              permute: bool, blocks: int, reconstruction: bool) -> ModelAdapter:
    if method not in METHODS:
        raise RiaInputError(f"method must be one of {METHODS}, got {method!r}")
    check_calibration(calibration)
    adapter = get_adapter(model)
    n_layers = len(adapter.layers())
    if layer_sparsities is not None:
        if spec.is_nm:
            raise RiaInputError("layer_sparsities (ATP/OWL allocation) needs unstructured sparsity, "
                                f"not the N:M pattern {spec}")
        if len(layer_sparsities) != n_layers:
            raise RiaInputError(f"layer_sparsities has {len(layer_sparsities)} entries, the model has {n_layers} layers")
        for i, s in enumerate(layer_sparsities):
            check_ratio(s, f"layer_sparsities[{i}]")
    if permute and not spec.is_nm:
        raise RiaInputError("permute=True (channel permutation) needs an N:M sparsity such as '2:4'")
    if permute and method == "sparsegpt":
        raise RiaInputError("permute=True is not supported with method='sparsegpt' (its mask depends on the update order)")
    if not isinstance(blocks, int) or blocks < 1:
        raise RiaInputError(f"blocks must be an integer >= 1, got {blocks!r}")
    if spec.is_nm:
        layer0 = adapter.layers()[0]
        for name, lin in adapter.linears(layer0).items():
            if lin.in_features % spec.m != 0:
                raise RiaInputError(f"{name}.in_features={lin.in_features} is not divisible by M={spec.m}")
    return adapter


def _masks_for_group(scores: dict[str, torch.Tensor], spec: SparsitySpec, ratio: float, per_output: bool,
                     permute: bool, lsa: bool, blocks: int, backend):
    """Keep-masks (original channel order) for one group of linears sharing an input."""
    if not spec.is_nm:
        return {n: unstructured_mask(s, ratio, per_output, backend=backend) for n, s in scores.items()}, None
    if not permute:
        return {n: nm_mask(s, spec.n, spec.m, backend=backend) for n, s in scores.items()}, None
    from .permutation import channel_permutation
    result = channel_permutation(torch.cat(list(scores.values()), dim=0), spec.n, spec.m, lsa=lsa, blocks=blocks)
    perm = result.perm.to(next(iter(scores.values())).device)
    masks = {}
    for n, s in scores.items():
        mask_p = nm_mask(s[:, perm], spec.n, spec.m, backend=backend)
        mask = torch.empty_like(mask_p)
        mask[:, perm] = mask_p
        masks[n] = mask
    return masks, result


@torch.no_grad()
def prune_model(model: nn.Module, calibration: torch.Tensor, *, method: str = "ria",
                sparsity: float | str = 0.5, a: float = 0.5, per_output: bool = False,
                layer_sparsities: Sequence[float] | None = None, reconstruction: bool = False,
                permute: bool = False, lsa: bool = True, blocks: int = 1, blocksize: int = 128,
                percdamp: float = 0.01, batch_size: int = 1, offload: bool = False,
                progress: bool = True, backend: str | None = None) -> PruneReport:
    """Prune ``model`` in place, layer by layer, and return a :class:`PruneReport`.

    ``calibration``: LongTensor [nsamples, seqlen] of token ids. ``sparsity``: a ratio
    in [0, 1) (unstructured) or a pattern ``"N:M"`` (N of every M pruned).
    ``method``: magnitude | wanda | ri | ria | sparsegpt. ``reconstruction``: OBS
    update of the kept weights after masking (RIA App. E). ``permute``: channel
    permutation for N:M (RIA Sec. 4.2). All inputs are validated before the model
    is touched.
    """
    spec = parse_sparsity(sparsity)
    adapter = _validate(model, calibration, method, spec, layer_sparsities, permute, blocks, reconstruction)
    need_hessian = method == "sparsegpt" or reconstruction
    report = PruneReport(method=method, sparsity=str(spec), a=a, per_output=per_output)
    t_start = time.perf_counter()
    inputs = adapter.capture_layer_inputs(calibration, batch_size=batch_size, offload=offload)
    report.capture_time_s = time.perf_counter() - t_start
    layers = adapter.layers()
    iterator = range(len(layers))
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"pruning ({method}, {spec})", unit="layer")
    for i in iterator:
        layer = layers[i]
        t_layer = time.perf_counter()
        ratio = layer_sparsities[i] if layer_sparsities is not None else spec.ratio
        lrep = LayerReport(index=i, target_sparsity=float(ratio))
        linears = adapter.linears(layer)
        with collect_stats(linears, need_hessian) as stats:
            for hidden, kw in zip(inputs.hidden, inputs.kwargs):
                adapter.run_layer(layer, hidden, kw)
        for group in adapter.groups:
            _prune_group(adapter, i, group, linears, stats, spec, ratio, method, a, per_output, reconstruction,
                         permute, lsa, blocks, blocksize, percdamp, backend, lrep, report)
        del stats
        for j, (hidden, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
            out = adapter.run_layer(layer, hidden, kw)
            inputs.hidden[j] = out.to(hidden.device)
        lrep.time_s = time.perf_counter() - t_layer
        report.layers.append(lrep)
    report.total_time_s = time.perf_counter() - t_start
    logger.info("pruned %s with %s at %s: actual sparsity %.4f in %.2fs", adapter.family, method, spec,
                report.actual_sparsity, report.total_time_s)
    return report


def _prune_group(adapter, layer_index, group, linears, stats: dict[str, LinearStats], spec, ratio, method, a,
                 per_output, reconstruction, permute, lsa, blocks, blocksize, percdamp, backend, lrep, report):
    names = group.linears
    t0 = time.perf_counter()
    if method == "sparsegpt":
        from .sparsegpt import sparsegpt_prune
        layer_spec = spec if spec.is_nm else SparsitySpec(ratio=float(ratio))
        masks = {}
        for n in names:
            w = linears[n].weight
            new_w, masks[n] = sparsegpt_prune(w.data, stats[n].hessian, layer_spec,
                                              blocksize=blocksize, percdamp=percdamp)
            w.data.copy_(new_w)
    else:
        scores = {n: pruning_score(linears[n].weight.data, stats[n].act_norm.to(linears[n].weight.device),
                                   method, a, backend=backend) for n in names}
        masks, perm_result = _masks_for_group(scores, spec, ratio, per_output, permute, lsa, blocks, backend)
        del scores
        for n in names:
            w = linears[n].weight
            if reconstruction:
                from .sparsegpt import sparsegpt_prune
                new_w, _ = sparsegpt_prune(w.data, stats[n].hessian, spec, blocksize=blocksize,
                                           percdamp=percdamp, mask=masks[n])
                w.data.copy_(new_w)
            w.data.mul_(masks[n].to(w.dtype))
        if perm_result is not None:
            key = f"{adapter.full_name(layer_index, '')[:-1]}.{group.name}"
            report.permutation_stats[key] = {"retained": perm_result.retained, "time_s": perm_result.time_s}
            for n in names:
                report.permutations[adapter.full_name(layer_index, n)] = perm_result.perm.detach().cpu()
    dt = (time.perf_counter() - t0) / len(names)
    for n in names:
        kept = int(masks[n].sum())
        total = masks[n].numel()
        lrep.linears[n] = LinearReport(sparsity=1.0 - kept / total, kept=kept, total=total, time_s=dt)
