"""``to_sparse_inference(model, report)``: run a pruned model with its 2:4 linears as
:class:`~ria_kernels.SparseLinear`, with the channel permutations of
``prune_model(..., permute=True)`` applied for real, and outputs unchanged.

Per decoder layer (the adapter names the groups; see ``docs/architecture.md``):

- ``attn_in`` / ``mlp_in`` (q/k/v, gate/up; fed by a norm): weights become
  ``W[:, perm]`` and the norm is replaced by :class:`PermutedRMSNorm`
  (:class:`PermutedLayerNorm` for OPT), which writes its output in ``perm`` order.
  The decoder layer keeps the norm's *input* as the residual, so the residual
  stream stays in original order.
- ``mlp_out`` (down / fc2): its input is ``act(gate) * up``, elementwise, so its
  permutation folds into the output rows of gate and up (and their biases):
  free at run time.
- ``attn_out`` (o_proj): its input is the attention output, head by head. Folding
  its permutation into v_proj's rows is legal only if the permutation maps every
  head onto itself and, under GQA, is the same for all query heads sharing a kv
  head (they all read that kv head's v). The permutation search is free to move
  channels across heads, so in general it is not foldable: then a runtime gather
  (``x.index_select(-1, perm)``, one pass over the [tokens, hidden] attention
  output, cheap next to the four projections of the layer) runs before o_proj
  (:class:`InputPermutedLinear`). When the permutation happens to be foldable
  (``o_proj="auto"``) it is folded instead and the gather disappears.
  ``benchmarks/bench_e2e.py`` measures the gather's cost.

Linears that are not 2:4 (unstructured sparsity, other N:M) stay dense ``nn.Linear``
and their groups' permutations are not applied (they would buy nothing); this is
logged once. OPT is supported like LLaMA (permuted LayerNorm in plain torch: one
extra gather pass, there is no fused kernel for it), except OPT models with
``do_layer_norm_before=False`` (opt-350m), whose norm output is the residual
stream: there a report with permutations is rejected (unpermuted 2:4 works).

The conversion is **in place**: the model's modules are replaced and the same
model is returned (a 7B model should not be copied; ``copy.deepcopy`` first to
keep the dense one). Everything is validated before the model is touched; the
replacement modules of a layer are built before any of them is swapped in, and
every converted layer is exact on its own, so an error part-way (e.g. a forced
SparseLinear backend that rejects a shape) leaves a model with unchanged outputs.
Models dispatched with accelerate offloading (meta weights) are rejected.

Memory (``memory=``, passed to every ``SparseLinear``): ``"compact"`` (default) keeps only the
compressed 2:4 format (<= 0.57x the dense linear bytes), its metadata in the order of the GPU's CUTLASS
kernel where that kernel takes the weight, so the compact kernel and the sparse tensor cores read one
copy; ``"cusparselt"`` (formerly ``"fast"``) adds cuSPARSELt's copy (<= 1.15x); ``"dense"`` keeps the
masked dense weight too (reference / debugging). See ``ria_kernels.sparse_linear``.

One installation path: :func:`to_sparse_inference` (from a pruned dense model) and
``ria_kernels.sparse_checkpoint.load_sparse`` (from a compressed checkpoint, described by
:func:`conversion_layout`) both build the replacement modules with :func:`build_converted_module` /
``SparseLinear``'s constructors and swap them in with :func:`install_modules`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import RiaInputError
from ._logging import log_once, logger
from .models import ModelAdapter, get_adapter
from .models.base import LinearGroup
from .ops.rms_norm import check_permutation, permuted_rms_norm
from .sparse_linear import SparseLinear, is_2to4, requested_backend, resolve_memory

O_PROJ_MODES = ("auto", "gather")


class PermutedRMSNorm(nn.Module):
    """RMSNorm whose output is in channel order ``perm``: ``y = rmsnorm(x)[..., perm]``.
    Holds ``weight[perm]`` (the kernel reads the weight in output order) and ``perm``,
    validated once here so the hot path skips the check (a device sync)."""

    def __init__(self, weight: torch.Tensor, perm: torch.Tensor, eps: float, *, weight_permuted: bool = False):
        super().__init__()
        if weight.dim() != 1:
            raise RiaInputError(f"weight must be 1-D, got shape {tuple(weight.shape)}")
        perm = perm.to(weight.device, torch.long)
        check_permutation(perm, weight.shape[0])
        self.hidden_size = weight.shape[0]
        self.eps = float(eps)
        # weight_permuted: ``weight`` is already ``weight[perm]`` (read back from a compressed checkpoint)
        w = weight.detach() if weight_permuted else weight.detach().index_select(0, perm)
        self.weight = nn.Parameter(w.contiguous(), requires_grad=False)
        self.register_buffer("perm", perm.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return permuted_rms_norm(x.contiguous(), self.weight, self.perm, self.eps, validate=False,
                                 weight_permuted=True)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, permuted"


class PermutedLayerNorm(nn.Module):
    """LayerNorm whose output is in channel order ``perm`` (OPT). Plain torch: the
    LayerNorm then one gather; no fused kernel (OPT is not the speed target)."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, perm: torch.Tensor, eps: float,
                 hidden_size: int):
        super().__init__()
        dev = weight.device if weight is not None else perm.device
        perm = perm.to(dev, torch.long)
        check_permutation(perm, hidden_size)
        self.hidden_size = hidden_size
        self.eps = float(eps)
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("perm", perm.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        return y.index_select(-1, self.perm)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, permuted"


class InputPermutedLinear(nn.Module):
    """``linear(x[..., perm])``: the runtime gather in front of o_proj when its input
    permutation cannot be folded into v_proj (see the module docstring)."""

    def __init__(self, linear: nn.Module, perm: torch.Tensor):
        super().__init__()
        held = next(iter([*linear.parameters(), *linear.buffers()]), None)  # SparseLinear: no dense weight
        perm = perm.to(perm.device if held is None else held.device, torch.long)
        check_permutation(perm, linear.in_features)
        self.linear = linear
        self.register_buffer("perm", perm.contiguous())

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    @property
    def weight(self) -> torch.Tensor | None:  # in permuted input order; None for a compact SparseLinear
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(-1, self.perm))


# -- planning (validation only, nothing is modified) --------------------------------
@dataclass
class _LayerPlan:
    col: dict[str, torch.Tensor] = field(default_factory=dict)      # linear -> input perm applied to W[:, perm]
    row: dict[str, torch.Tensor] = field(default_factory=dict)      # linear -> output perm applied to W[perm]
    sparse: dict[str, bool] = field(default_factory=dict)           # linear -> becomes SparseLinear
    norms: dict[str, torch.Tensor] = field(default_factory=dict)    # norm path -> perm
    gather: dict[str, torch.Tensor] = field(default_factory=dict)   # linear -> runtime input gather perm


def _report_perms(model: nn.Module, adapter: ModelAdapter, report) -> tuple[dict[str, torch.Tensor], str | None]:
    if report is None:
        return {}, None
    perms = getattr(report, "permutations", None)
    if not isinstance(perms, dict):
        raise RiaInputError(f"report must be a PruneReport (from prune_model) or None, got {type(report).__name__}")
    family = getattr(report, "family", "") or ""
    if family and family != adapter.family:
        raise RiaInputError(f"report was made for a {family!r} model, this model is {adapter.family!r}")
    sparsity = getattr(report, "sparsity", None)
    return perms, (str(sparsity) if sparsity is not None else None)


def _check_perm_tensor(name: str, perm, size: int) -> torch.Tensor:
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int32, torch.int64):
        raise RiaInputError(f"report.permutations[{name!r}] must be an int32/int64 tensor, got "
                            f"{type(perm).__name__ if not isinstance(perm, torch.Tensor) else perm.dtype}")
    if perm.dim() != 1 or perm.numel() != size:
        raise RiaInputError(f"report.permutations[{name!r}] has shape {tuple(perm.shape)}, the linear's "
                            f"in_features is {size}")
    perm = perm.detach().to("cpu", torch.long)
    try:
        check_permutation(perm, size)
    except RiaInputError as e:
        raise RiaInputError(f"report.permutations[{name!r}]: {e}") from None
    return perm


def head_local_permutation(perm: torch.Tensor, num_heads: int, num_kv_heads: int,
                           head_dim: int) -> torch.Tensor | None:
    """``[num_kv_heads, head_dim]`` within-head permutations if ``perm`` (over the
    ``num_heads * head_dim`` attention-output channels) can be folded into v_proj's
    rows, else None. Foldable: every head maps onto itself and the query heads that
    share a kv head (consecutive, as in HF ``repeat_kv``) use the same local order."""
    if perm.numel() != num_heads * head_dim or num_heads % num_kv_heads:
        return None
    local = perm.view(num_heads, head_dim) - (torch.arange(num_heads) * head_dim)[:, None]
    if bool(((local < 0) | (local >= head_dim)).any()):
        return None  # crosses heads (rows of a permutation staying in range are themselves permutations)
    local = local.view(num_kv_heads, num_heads // num_kv_heads, head_dim)
    if not bool((local == local[:, :1]).all()):
        return None
    return local[:, 0].contiguous()


def _plan(model: nn.Module, adapter: ModelAdapter, report, o_proj: str) -> list[_LayerPlan]:
    if o_proj not in O_PROJ_MODES:
        raise RiaInputError(f"o_proj must be one of {O_PROJ_MODES}, got {o_proj!r}")
    perms, sparsity = _report_perms(model, adapter, report)
    layers = adapter.layers()
    where: dict[str, tuple[int, str]] = {}
    for i, layer in enumerate(layers):
        for n in adapter.linear_names():
            where[adapter.full_name(i, n)] = (i, n)
    unknown = sorted(set(perms) - set(where))
    if unknown:
        raise RiaInputError(f"report.permutations names {len(unknown)} linears this {adapter.family} model does not "
                            f"have, e.g. {unknown[:3]} (was the report made for this model?)")
    for p in model.parameters():
        if p.device.type == "meta":
            raise RiaInputError("to_sparse_inference needs the weights materialised (got meta tensors: a model "
                                "offloaded by accelerate is not supported)")

    plans = []
    for i, layer in enumerate(layers):
        plan = _LayerPlan()
        linears = {}
        for n in adapter.linear_names():
            m = layer.get_submodule(n)
            if isinstance(m, (SparseLinear, InputPermutedLinear)):
                raise RiaInputError(f"{adapter.full_name(i, n)} is already a {type(m).__name__}: "
                                    "the model was converted already")
            if not isinstance(m, nn.Linear):
                raise RiaInputError(f"{adapter.full_name(i, n)} must be an nn.Linear, got {type(m).__name__}")
            linears[n] = m
        group_perm: dict[str, torch.Tensor | None] = {}
        for g in adapter.groups:
            got = {n: perms.get(adapter.full_name(i, n)) for n in g.linears}
            if all(v is None for v in got.values()):
                perm = None
            else:
                missing = [n for n, v in got.items() if v is None]
                if missing:
                    raise RiaInputError(f"report.permutations has no entry for {adapter.full_name(i, missing[0])} "
                                        f"but has one for other linears of its group {g.name!r} (they share "
                                        "an input and must share one permutation)")
                checked = {n: _check_perm_tensor(adapter.full_name(i, n), v, linears[n].in_features)
                           for n, v in got.items()}
                perm = next(iter(checked.values()))
                for n, v in checked.items():
                    if not torch.equal(v, perm):
                        raise RiaInputError(f"report.permutations: {adapter.full_name(i, n)} and "
                                            f"{adapter.full_name(i, g.linears[0])} share an input but have "
                                            "different permutations")
            sparse = {n: is_2to4(linears[n].weight if perm is None
                                  else linears[n].weight.index_select(1, perm.to(linears[n].weight.device)))
                      for n in g.linears}
            if sparsity == "2:4":
                bad = [n for n, ok in sparse.items() if not ok]
                if bad:
                    where_ = " in its permuted channel order" if perm is not None else ""
                    raise RiaInputError(f"report says 2:4 but {adapter.full_name(i, bad[0])}.weight is not 2:4"
                                        f"{where_} (was the report made for this model?)")
            if perm is not None and not all(sparse.values()):
                log_once(("to_sparse_inference", "perm_skipped", adapter.family),
                         "to_sparse_inference: permutations of groups that are not 2:4 (report sparsity %s) are "
                         "not applied: their linears stay dense nn.Linear", sparsity)
                perm = None
                sparse = {n: is_2to4(linears[n].weight) for n in g.linears}
            group_perm[g.name] = perm
            plan.sparse.update(sparse)
        for g in adapter.groups:
            perm = group_perm[g.name]
            if perm is None:
                continue
            _place_group_perm(adapter, i, g, perm, plan, o_proj, linears)
        plans.append(plan)
    return plans


def _place_group_perm(adapter: ModelAdapter, i: int, g: LinearGroup, perm: torch.Tensor, plan: _LayerPlan,
                      o_proj: str, linears: dict[str, nn.Linear]) -> None:
    """Decide where the group's input permutation is realised (norm / producers' rows / gather)."""
    for n in g.linears:
        plan.col[n] = perm
    if g.norm is not None:
        reason = adapter.permuted_norm_error()
        if reason is not None:
            raise RiaInputError(f"report has permutations but {reason}; convert without permutations "
                                "(prune with permute=False)")
        plan.norms[g.norm] = perm
        return
    rule = adapter.fold_rule(g)
    if rule == "elementwise":
        for p in g.producers:
            plan.row[p] = perm
        return
    if rule == "per_head" and o_proj == "auto":
        local = head_local_permutation(perm, adapter.num_heads, adapter.num_kv_heads, adapter.head_dim)
        if local is not None:
            rows = (torch.arange(adapter.num_kv_heads)[:, None] * adapter.head_dim + local).reshape(-1)
            for p in g.producers:
                if linears[p].out_features != rows.numel():
                    raise RiaInputError(f"{adapter.full_name(i, p)}.out_features={linears[p].out_features}, "
                                        f"expected num_kv_heads * head_dim = {rows.numel()}")
                plan.row[p] = rows
            return
    for n in g.linears:
        plan.gather[n] = perm


# -- applying -----------------------------------------------------------------------
def _new_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        rows = rows.to(w.device)
        w = w.index_select(0, rows)
        b = None if b is None else b.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(lin.in_features, lin.out_features, bias=b is not None, device="meta")
    new.weight = nn.Parameter(w.contiguous(), requires_grad=lin.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.contiguous(), requires_grad=lin.bias.requires_grad)
    return new


def _build_layer(adapter: ModelAdapter, layer: nn.Module, plan: _LayerPlan, backend,
                 memory) -> dict[str, nn.Module]:
    new: dict[str, nn.Module] = {}
    for n in adapter.linear_names():
        lin = layer.get_submodule(n)
        rows, cols = plan.row.get(n), plan.col.get(n)
        if rows is None and cols is None and not plan.sparse[n]:
            continue  # dense and unpermuted: keep the module as it is
        mod: nn.Module = _new_linear(lin, rows, cols) if (rows is not None or cols is not None) else lin
        if plan.sparse[n]:
            mod = SparseLinear.from_linear(mod, backend=backend, memory=memory)
        new[n] = mod if n not in plan.gather else \
            build_converted_module({"kind": "gather"}, {"perm": plan.gather[n]}, inner=mod)
    for norm_path, perm in plan.norms.items():
        norm = layer.get_submodule(norm_path)
        weight, bias, eps = adapter.norm_params(norm)
        if adapter.norm_kind == "rms":
            if weight is None or bias is not None:
                raise RiaInputError(f"{adapter.family}: {norm_path} is not a weight-only RMSNorm")
            new[norm_path] = PermutedRMSNorm(weight, perm, eps)
        else:
            size = weight.shape[0] if weight is not None else adapter.hidden_size
            new[norm_path] = PermutedLayerNorm(weight, bias, perm, eps, size)
    return new


# -- detection (dense checkpoints that are already 2:4) -----------------------------
def why_not_2to4(weight: torch.Tensor) -> str | None:
    """None if ``weight [out, in]`` is exactly 2:4 (at most 2 non-zeros in every group of 4 consecutive
    input weights), else why not, in words."""
    if weight.dim() != 2:
        return f"its weight is {weight.dim()}-D, not [out_features, in_features]"
    k = weight.shape[1]
    if k % 4:
        return f"in_features={k} is not divisible by 4"
    nnz = (weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1)
    bad = int((nnz > 2).sum())
    if bad == 0:
        return None
    zeros = 1.0 - float(nnz.sum()) / weight.numel()
    return f"{bad} of {nnz.numel()} groups of 4 have more than 2 non-zeros ({zeros:.1%} of its weights are zero)"


def detect_2to4(model: nn.Module) -> dict[str, str | None]:
    """``{decoder-layer linear: None if exactly 2:4, else why it stays dense}`` for a dense model that may
    already be 2:4 (a published dense 2:4 checkpoint, or one pruned by another tool); what
    :func:`to_sparse_inference` without a report converts, in unpermuted channel order."""
    adapter = get_adapter(model)
    out: dict[str, str | None] = {}
    for i, layer in enumerate(adapter.layers()):
        for n in adapter.linear_names():
            m = layer.get_submodule(n)
            name = adapter.full_name(i, n)
            if not isinstance(m, nn.Linear):
                out[name] = f"it is a {type(m).__name__}, not an nn.Linear"
            elif m.weight.device.type == "meta":
                out[name] = "its weight is on the meta device (offloaded)"
            else:
                out[name] = why_not_2to4(m.weight)
    return out


def _log_detection(found: dict[str, str | None], family: str) -> None:
    sparse = [n for n, why in found.items() if why is None]
    dense = {n: why for n, why in found.items() if why is not None}
    logger.info("to_sparse_inference without a prune report: %d of %d decoder linears are exactly 2:4 and become "
                "SparseLinear%s", len(sparse), len(found), (": " + ", ".join(sparse[:6]) + (", ..." if len(sparse) > 6
                                                                                           else "")) if sparse else "")
    for n, why in list(dense.items())[:8]:
        logger.info("to_sparse_inference: %s stays dense nn.Linear: %s", n, why)
    if len(dense) > 8:
        logger.info("to_sparse_inference: %d more linears stay dense", len(dense) - 8)
    if not sparse:
        log_once(("to_sparse_inference", "none_24", family),
                 "to_sparse_inference: no linear of this %s model is 2:4 (nothing converted); prune with sparsity "
                 "'2:4' first", family)


# -- the one installation path (to_sparse_inference and load_sparse) ---------------
CONVERTED_KINDS = ("sparse_linear", "gather", "permuted_rms_norm", "permuted_layer_norm")


def conversion_layout(model: nn.Module) -> dict[str, dict]:
    """``{module path: spec}`` of every module :func:`to_sparse_inference` installed in ``model``
    (JSON-safe; ``spec["kind"]`` in ``CONVERTED_KINDS``; a gather's spec has its ``inner`` spec).
    Together with the modules' tensors (``state_dict``) it rebuilds them: :func:`build_converted_module`."""
    layout: dict[str, dict] = {}
    inside_gather: set[str] = set()
    for name, mod in model.named_modules():
        if any(name.startswith(g + ".") for g in inside_gather):
            continue
        spec = _module_spec(mod)
        if spec is not None:
            layout[name] = spec
            if spec["kind"] == "gather":
                inside_gather.add(name)
    return layout


def _module_spec(mod: nn.Module) -> dict | None:
    if isinstance(mod, InputPermutedLinear):
        inner = _module_spec(mod.linear)
        return {"kind": "gather", "inner": inner if inner is not None else
                {"kind": "linear", "in_features": mod.linear.in_features, "out_features": mod.linear.out_features,
                 "bias": mod.linear.bias is not None}}
    if isinstance(mod, SparseLinear):
        return {"kind": "sparse_linear", "in_features": mod.in_features, "out_features": mod.out_features,
                "bias": mod.bias is not None}
    if isinstance(mod, PermutedRMSNorm):
        return {"kind": "permuted_rms_norm", "eps": mod.eps, "hidden_size": mod.hidden_size}
    if isinstance(mod, PermutedLayerNorm):
        return {"kind": "permuted_layer_norm", "eps": mod.eps, "hidden_size": mod.hidden_size,
                "weight": mod.weight is not None, "bias": mod.bias is not None}
    return None


def build_converted_module(spec: dict, tensors: dict[str, torch.Tensor], *, inner: nn.Module | None = None,
                           backend: str | None = None, memory: str | None = None) -> nn.Module:
    """The module ``spec`` describes, from its ``tensors`` (its own ``state_dict`` keys, e.g.
    ``values``/``meta``/``bias`` of a SparseLinear, already in permuted order) -- or, for a gather,
    around the already-built ``inner`` module."""
    kind = spec.get("kind")
    try:
        if kind == "gather":
            if inner is None:
                inner_t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("linear.")}
                inner = build_converted_module(spec["inner"], inner_t, backend=backend, memory=memory)
            return InputPermutedLinear(inner, tensors["perm"])
        if kind == "sparse_linear":
            return SparseLinear.from_compressed(tensors["values"], tensors["meta"], tensors.get("bias"),
                                                backend=backend, memory=memory)
        if kind == "linear":
            lin = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], device="meta")
            lin.weight = nn.Parameter(tensors["weight"], requires_grad=False)
            if spec["bias"]:
                lin.bias = nn.Parameter(tensors["bias"], requires_grad=False)
            return lin
        if kind == "permuted_rms_norm":
            return PermutedRMSNorm(tensors["weight"], tensors["perm"], spec["eps"], weight_permuted=True)
        if kind == "permuted_layer_norm":
            return PermutedLayerNorm(tensors.get("weight"), tensors.get("bias"), tensors["perm"], spec["eps"],
                                     spec["hidden_size"])
    except KeyError as exc:
        raise RiaInputError(f"a {kind} module needs the tensor {exc.args[0]!r}, which is missing") from None
    raise RiaInputError(f"unknown converted module kind {kind!r} (one of {CONVERTED_KINDS})")


def install_modules(root: nn.Module, new: dict[str, nn.Module]) -> None:
    """Swap the built modules into ``root`` at their paths (relative to ``root``)."""
    for path, mod in new.items():
        root.set_submodule(path, mod)


@torch.no_grad()
def to_sparse_inference(model: nn.Module, report=None, *, backend: str | None = None,
                        memory: str | None = None, o_proj: str = "auto") -> nn.Module:
    """Convert a pruned model **in place** for sparse inference and return it.

    ``report``: the :class:`~ria_kernels.pruning.PruneReport` of ``prune_model`` (its
    ``permutations`` are applied for real) or None: a dense model that is already 2:4 (published
    dense 2:4 checkpoint, another tool's pruning); the linears that are exactly 2:4 are detected
    (:func:`detect_2to4`) and converted unpermuted, and the log says which, and why the others stay dense.
    Every linear that is 2:4 (in its permuted channel order) becomes a
    :class:`~ria_kernels.SparseLinear` (``backend`` and ``memory`` -- ``"compact"`` by default,
    ``"cusparselt"``, or ``"dense"`` for reference -- are passed to ``SparseLinear.from_linear``; see
    ``ria_kernels.sparse_linear`` for the modes); the others stay dense ``nn.Linear``. ``o_proj``:
    ``"auto"`` folds the attention-output permutation into v_proj when that is legal
    and gathers at run time otherwise; ``"gather"`` always gathers. Outputs equal
    the masked dense model's up to float rounding.
    """
    adapter = get_adapter(model)
    resolve_memory(memory, requested_backend(backend))  # a contradiction fails before anything is built
    plans = _plan(model, adapter, report, o_proj)
    if report is None:  # a dense model that may already be 2:4: say which linears convert and why not the others
        _log_detection(detect_2to4(model), adapter.family)
    layers = adapter.layers()
    counts = {"sparse": 0, "dense": 0, "gather": 0, "folded": 0, "norms": 0}
    for layer, plan in zip(layers, plans):
        new = _build_layer(adapter, layer, plan, backend, memory)  # all built before any swap: a layer is atomic
        install_modules(layer, new)
        counts["sparse"] += sum(plan.sparse.values())
        counts["dense"] += sum(not v for v in plan.sparse.values())
        counts["gather"] += len(plan.gather)
        counts["folded"] += len(plan.row)
        counts["norms"] += len(plan.norms)
    if counts["dense"]:
        log_once(("to_sparse_inference", "dense", adapter.family),
                 "to_sparse_inference: %d linears of this %s model are not 2:4 and stay dense nn.Linear",
                 counts["dense"], adapter.family)
    logger.info("to_sparse_inference (%s): %d SparseLinear, %d dense, %d permuted norms, %d producer row folds, "
                "%d runtime input gathers", adapter.family, counts["sparse"], counts["dense"], counts["norms"],
                counts["folded"], counts["gather"])
    return model


__all__ = ["to_sparse_inference", "PermutedRMSNorm", "PermutedLayerNorm", "InputPermutedLinear",
           "head_local_permutation", "O_PROJ_MODES", "conversion_layout", "build_converted_module",
           "install_modules", "detect_2to4", "why_not_2to4"]
