"""Non-uniform layer-wise sparsity.

ATP (ICML 2025): rates form an increasing arithmetic progression with mean s,
``s_i = s - beta (L - 1) / 2 + i beta`` (i = 0 .. L-1); beta is searched over a
short grid. OWL: layers with more activation outliers keep more weights; rates lie
in [s - lambda, s + lambda] with mean s.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch

from ._errors import RiaInputError
from ._validation import check_ratio


def max_atp_beta(num_layers: int, sparsity: float) -> float:
    """Largest beta keeping every ATP rate in [0, 1)."""
    sparsity = check_ratio(sparsity)
    if num_layers < 2:
        return 0.0
    half = (num_layers - 1) / 2
    # s - beta*half >= 0 and s + beta*half < 1
    return min(sparsity / half, (1 - sparsity) / half * (1 - 1e-9))


def atp_sparsities(num_layers: int, sparsity: float, beta: float) -> list[float]:
    """Per-layer rates of ATP: mean ``sparsity``, increasing with depth by ``beta``."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise RiaInputError(f"num_layers must be a positive integer, got {num_layers!r}")
    sparsity = check_ratio(sparsity)
    bound = max_atp_beta(num_layers, sparsity)
    if beta < 0 or beta > bound:
        raise RiaInputError(f"beta must be in [0, {bound:.6g}] so that every layer's sparsity stays in [0, 1) "
                            f"(L={num_layers}, s={sparsity}), got {beta}")
    half = (num_layers - 1) / 2
    return [min(max(sparsity - beta * half + i * beta, 0.0), 1 - 1e-9) for i in range(num_layers)]


def owl_sparsities(outlier_ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL: map outlier ratios linearly to [s - lam, s + lam] (more outliers, lower sparsity), mean s."""
    sparsity = check_ratio(sparsity)
    if not (0 <= lam <= min(sparsity, 1 - sparsity)) and lam != 0:
        raise RiaInputError(f"owl lambda must be in [0, min(s, 1 - s)] = [0, {min(sparsity, 1 - sparsity):.4g}], "
                            f"got {lam}")
    r = torch.tensor(list(outlier_ratios), dtype=torch.float64)
    if r.numel() == 0:
        raise RiaInputError("outlier_ratios is empty")
    # OWL maps min-max normalised ratios onto a 2*lam wide range and re-centres it on s;
    # re-centring can push an end past s +/- lam, so scale the centred ratios instead:
    # rates = s - c * (r - mean r), with c the largest value keeping |rate - s| <= lam.
    dev = r - r.mean()
    c = lam / dev.abs().max() if float(dev.abs().max()) > 0 else 0.0
    rates = sparsity - c * dev  # more outliers -> lower sparsity
    return [float(min(max(x, 0.0), 1 - 1e-9)) for x in rates]


@torch.no_grad()
def owl_outlier_ratios(model, calibration: torch.Tensor, *, m: float = 5.0, batch_size: int = 1) -> list[float]:
    """Per decoder layer, the fraction of Wanda scores ``|W| * ||X||`` above ``m`` times
    the layer mean, over all the layer's linears (a sequential dense pass)."""
    from .calibration import check_calibration, collect_stats
    from .models import get_adapter
    from .ops.ria_score import pruning_score
    check_calibration(calibration)
    adapter = get_adapter(model)
    inputs = adapter.capture_layer_inputs(calibration, batch_size=batch_size)
    ratios = []
    for layer in adapter.layers():
        linears = adapter.linears(layer)
        with collect_stats(linears) as stats:
            hidden = [adapter.run_layer(layer, h, kw) for h, kw in zip(inputs.hidden, inputs.kwargs)]
        scores = torch.cat([pruning_score(lin.weight, stats[n].act_norm.to(lin.weight.device), "wanda").flatten()
                            for n, lin in linears.items()])
        ratios.append(float((scores > m * scores.mean()).float().mean()))
        inputs.hidden = [h.to(old.device) for h, old in zip(hidden, inputs.hidden)]
    return ratios


def search_atp_beta(model, calibration: torch.Tensor, *, method: str, sparsity: float,
                    betas: Sequence[float] | None = None, score_fraction: float = 0.25, progress: bool = False,
                    **prune_kwargs) -> tuple[float, list[dict]]:
    """Try a short grid of beta, each on a deep copy of ``model``, and keep the one with the
    lowest perplexity on held-out CALIBRATION windows. Returns ``(beta, table)``, one row
    ``{"beta", "calib_ppl", "time_s"}`` per value tried. ``progress``: one bar over the grid.

    The evaluation set is never used: the ATP repository's own search script scores
    beta on the WikiText test split, which leaks the evaluation data into tuning.
    """
    from .evaluation import perplexity
    from .models import get_adapter
    from .pruning import prune_model
    n = calibration.shape[0]
    n_score = max(1, int(round(n * score_fraction)))
    if n - n_score < 1:
        raise RiaInputError(f"ATP search needs at least 2 calibration windows (one to prune, one to score), got {n}")
    prune_part, score_part = calibration[: n - n_score], calibration[n - n_score:]
    num_layers = len(get_adapter(model).layers())
    bound = max_atp_beta(num_layers, sparsity)
    if betas is None:
        betas = [bound * f for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    table = []
    bar = None
    if progress:  # each beta is a whole prune + score pass: the user should see it move
        from tqdm.auto import tqdm
        bar = tqdm(total=len(betas), desc=f"ATP beta search ({len(betas)} values)", unit="beta")
    try:
        for beta in betas:
            t0 = time.perf_counter()
            trial = copy.deepcopy(model)
            prune_model(trial, prune_part, method=method, sparsity=sparsity,
                        layer_sparsities=atp_sparsities(num_layers, sparsity, beta), progress=False, **prune_kwargs)
            ppl = perplexity(trial, score_part.reshape(-1), score_part.shape[1])
            table.append({"beta": float(beta), "calib_ppl": ppl, "time_s": time.perf_counter() - t0})
            del trial
            if bar is not None:
                bar.update(1)
                bar.set_postfix(beta=f"{beta:.4g}", calib_ppl=f"{ppl:.3f}")
    finally:
        if bar is not None:
            bar.close()
    best = min(table, key=lambda row: row["calib_ppl"])
    return best["beta"], table
