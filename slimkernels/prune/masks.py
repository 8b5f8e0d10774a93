"""Keep masks that grow while a model fine-tunes: the per-update step of a pruning schedule.

A layer's weight is seen as the matrix W [N, K] = weight.reshape(N, -1) (a conv's [Cout, Cin/g * kh * kw]:
its rows are the output channels whatever the groups, so row, tile and N:M groups are the same as
sparsify_'s). Masks are bool, True where the weight is KEPT.

Growing a mask keeps every weight pruned before pruned (monotone): the weights a previous mask pruned
score -1, below every |w|, so the lowest-score selection of quant/pruning.py always takes them first.

N:M patterns prune half the weights of a group of m at once, so their sparsity ramps by the fraction of
groups held to the pattern: at sparsity s, s / 0.5 of the layer's groups (those whose pruned half holds
the least magnitude) are N:M, the others are still whole; at 0.5 every group is N:M. The pattern
inside each group is recomputed at every update from the current weights.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..quant import pruning
from ..quant.sparse import nm_mask

PRUNED_SCORE = -1.0  # below every magnitude: weights pruned before stay pruned
NM_SPARSITY = 0.5


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight as W [N, K] (a view for a contiguous weight)."""
    return weight.detach().reshape(weight.shape[0], -1)


def masked_score(weight: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
    """|W| in float32 [N, K], PRUNED_SCORE where `previous` (a keep mask of the weight's shape) pruned."""
    score = pruning.magnitude_score(weight_matrix(weight))
    if previous is not None:
        score = score.masked_fill(~weight_matrix(previous), PRUNED_SCORE)
    return score


def nm_ramp_mask(score: torch.Tensor, m: int, fraction: float) -> torch.Tensor:
    """Keep mask [N, K] in which round(fraction * groups) groups of m columns are m/2:m pruned (the groups
    whose pruned half has the least score: groups pruned before first) and the others are kept whole."""
    n, k = score.shape
    pattern = nm_mask(score, m, score)
    lost = (score * ~pattern).reshape(n, k // m, m).sum(-1)  # the score each group would lose
    held = ~pruning.unstructured_mask(lost, fraction, per="layer")
    return (pattern.reshape(n, k // m, m) | ~held[..., None]).reshape(n, k)


def comparable_score(score: torch.Tensor, pattern: str, block: tuple[int, int]) -> torch.Tensor:
    """What one global threshold compares: entries, or whole tiles' summed scores for pattern="block"."""
    if pattern != "block":
        return score
    bn, bk = block
    n, k = score.shape
    return score.reshape(n // bn, bn, k // bk, bk).sum((1, 3))


def grow_masks(weights: Sequence[torch.Tensor], previous: Sequence[Optional[torch.Tensor]], sparsity: float,
               pattern: str = "unstructured", per: str = "row", scope: str = "layer",
               block: tuple[int, int] = (4, 16)) -> list[torch.Tensor]:
    """The keep masks (bool, each of its weight's shape) of the layers `weights` at `sparsity`, each
    containing the pruned entries of `previous` (None: nothing pruned yet).

    pattern: "unstructured" (per "row" or "layer"), "block" (whole tiles of the layer), "2:4" / "4:8"
    (sparsity in [0, 0.5], see the module docstring). scope "global": one magnitude threshold over all
    the layers (entries, or tiles for "block"), each layer then pruned at the sparsity it gives."""
    scores = [masked_score(w, p) for w, p in zip(weights, previous)]
    m = pruning.NM_PATTERNS.get(pattern)
    if m is not None:
        fraction = min(sparsity / NM_SPARSITY, 1.0)
        keeps = [nm_ramp_mask(s, m, fraction) for s in scores]
    else:
        if scope == "global":
            sparsities = pruning.global_sparsities([comparable_score(s, pattern, block) for s in scores], sparsity)
            per = "layer"
        else:
            sparsities = [sparsity] * len(scores)
        keeps = [pruning.pattern_mask(s, pattern, layer_s, per, block) for s, layer_s in zip(scores, sparsities)]
    return [keep.reshape(w.shape) for keep, w in zip(keeps, weights)]
