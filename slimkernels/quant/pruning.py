"""One-shot pruning math, pure torch: importance scores, masks for every sparsity pattern, per-layer
sparsity allocations (global threshold, OWL) and SparseGPT.

A weight is W [N, K] (a conv weight [Cout, Cin/g, kh, kw] of one group is W [Cout/g, Cin/g * kh * kw],
see conv_weight_groups). Masks are bool [N, K], True where the weight is KEPT.

Patterns (PATTERNS):
  "unstructured"  any entries; pruned by the lowest score within a comparison group: each row ("row":
                  every output row loses the same fraction, Wanda's choice) or the whole layer ("layer")
  "2:4", "4:8"    N:M semi-structured: in every group of m consecutive columns, the m/2 of largest
                  score are kept (quant.sparse.nm_mask); the sparsity is 0.5
  "block"         bn x bk tiles kept or pruned whole, by the tile's summed score (per layer)

Scores: magnitude |W_ij|; Wanda (Sun et al. 2023) |W_ij| * ||X_j||_2, the weight times the L2 norm of
its input feature over the calibration rows.

SparseGPT (Frantar & Alistarh 2023) prunes the columns of W one at a time with the OBS column loop that
GPTQ uses (quant.hessian.obs_columns): when a column block [i1, i2) comes up (for N:M, each group of m
columns), its mask is chosen from W^2 / diag(U)^2 (U: the upper Cholesky factor of the damped H^-1;
the weights already updated by every earlier column's error), the column's pruned weights (and, for
int8 values, its rounding error) are pushed onto the columns not yet fixed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .hessian import check_obs_args, column_blocks, inverse_hessian_factor, obs_columns, prepare_obs
from .sparse import INT8_MAX, check_block, nm_mask, row_scales_int8

PATTERNS = ("unstructured", "2:4", "4:8", "block")
NM_PATTERNS = {"2:4": 4, "4:8": 8}  # pattern -> m (n = m / 2)
PER = ("row", "layer")
VALUES = (None, "int8")

__all__ = [
    "PATTERNS", "magnitude_score", "wanda_score", "unstructured_mask", "block_mask", "pattern_mask",
    "global_sparsities", "outlier_ratio", "owl_sparsities", "sparsegpt_prune", "conv_weight_groups",
    "conv_weight_from_groups", "unfold_conv_input", "round_int8_rows",
]


def _check_pattern(fn: str, pattern) -> Optional[int]:
    if pattern not in PATTERNS:
        raise ValueError(f"{fn}: pattern must be one of {PATTERNS}, got {pattern!r}")
    return NM_PATTERNS.get(pattern)


def _check_sparsity(fn: str, sparsity) -> float:
    """A sparsity in [0, 1] (a whole layer may be pruned here; configs take [0, 1))."""
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 <= sparsity <= 1:
        raise ValueError(f"{fn}: sparsity must be a number in [0, 1], got {sparsity!r}")
    return float(sparsity)


def _check_score(fn: str, score) -> None:
    if not isinstance(score, torch.Tensor) or score.dim() != 2 or not score.dtype.is_floating_point:
        desc = f"{score.dtype} tensor of shape {tuple(score.shape)}" if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"{fn}: score must be a 2-D float tensor [N, K], got {desc}")


# ---- scores ------------------------------------------------------------------------------------------
def magnitude_score(w: torch.Tensor) -> torch.Tensor:
    """|W| in float32."""
    return w.detach().abs().to(torch.float32)


def wanda_score(w: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 (float32 [N, K]); input_norm [K] from calibration.InputNormCollector."""
    k = w.shape[-1]
    if not isinstance(input_norm, torch.Tensor) or tuple(input_norm.shape) != (k,):
        desc = tuple(input_norm.shape) if isinstance(input_norm, torch.Tensor) else type(input_norm).__name__
        raise ValueError(f"wanda_score: input_norm must be a [{k}] tensor for a weight with K={k}, got {desc}")
    return magnitude_score(w) * input_norm.to(device=w.device, dtype=torch.float32)[None, :]


# ---- masks -------------------------------------------------------------------------------------------
def _lowest(score: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """bool mask of the `count` lowest entries of each row of score [R, C] (ties: the first ones);
    count an int or an int tensor [R]."""
    order = torch.argsort(score, dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    count = torch.as_tensor(count, device=score.device).reshape(-1, 1)
    return ranks < count


def unstructured_mask(score: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Keep mask pruning round(sparsity * K) entries of lowest score in each row (per="row") or
    round(sparsity * N * K) in the whole layer (per="layer"): exactly that many, ties broken by position."""
    fn = "unstructured_mask"
    _check_score(fn, score)
    sparsity = _check_sparsity(fn, sparsity)
    if per not in PER:
        raise ValueError(f"{fn}: per must be one of {PER}, got {per!r}")
    n, k = score.shape
    if per == "row":
        return ~_lowest(score, round(sparsity * k))
    return ~_lowest(score.reshape(1, -1), round(sparsity * n * k)).reshape(n, k)


def block_mask(score: torch.Tensor, sparsity: float, block: tuple[int, int]) -> torch.Tensor:
    """Keep mask of whole bn x bk tiles: the round(sparsity * tiles) tiles of lowest summed score are pruned."""
    fn = "block_mask"
    _check_score(fn, score)
    sparsity = _check_sparsity(fn, sparsity)
    n, k = score.shape
    bn, bk = check_block(fn, block, n, k)
    tiles = score.reshape(n // bn, bn, k // bk, bk).sum((1, 3))
    keep = unstructured_mask(tiles, sparsity, per="layer")
    return keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)


def pattern_mask(score: torch.Tensor, pattern: str, sparsity: float = 0.5, per: str = "row",
                 block: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The keep mask of `pattern` for `score` (sparsity is ignored for N:M, always 0.5)."""
    m = _check_pattern("pattern_mask", pattern)
    if m is not None:
        _check_score("pattern_mask", score)
        return nm_mask(score, m, score)
    if pattern == "block":
        return block_mask(score, sparsity, block)
    return unstructured_mask(score, sparsity, per)


# ---- per-layer allocations ---------------------------------------------------------------------------
def global_sparsities(scores: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Per-layer sparsities of one global threshold: the round(sparsity * total) entries of lowest score
    across every layer are pruned (ties at the threshold go to the earlier layers). Pruning each layer
    at its sparsity per layer (unstructured_mask(per="layer")) prunes exactly those entries. The scores
    must be comparable across layers (|W|: yes; Wanda's: only as far as the activation scales are)."""
    fn = "global_sparsities"
    sparsity = _check_sparsity(fn, sparsity)
    flat = [s.detach().reshape(-1).to(torch.float32) for s in scores]
    sizes = [f.numel() for f in flat]
    total = sum(sizes)
    pruned = round(sparsity * total)
    if not flat or total == 0:
        return [0.0] * len(flat)
    if pruned == 0:
        return [0.0] * len(flat)
    everything = torch.cat([f.cpu() for f in flat])
    threshold = float(torch.kthvalue(everything, pruned).values)
    below = [int((f < threshold).sum()) for f in flat]
    left = pruned - sum(below)  # entries equal to the threshold still to prune
    out = []
    for f, b, size in zip(flat, below, sizes):
        ties = min(left, int((f == threshold).sum()))
        left -= ties
        out.append((b + ties) / size if size else 0.0)
    return out


def outlier_ratio(score: torch.Tensor, factor: float) -> float:
    """OWL's layerwise outlier ratio: the fraction of entries whose score exceeds `factor` x the layer's mean."""
    s = score.to(torch.float32)
    return int((s > factor * s.mean()).sum()) / max(s.numel(), 1)


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], sparsity: float, strength: float) -> list[float]:
    """OWL (Yin et al. 2023, "Outlier Weighed Layerwise sparsity"): layers with more outliers get lower
    sparsity. Ratios are min-max scaled to [0, 1] and mapped linearly to [sparsity + strength,
    sparsity - strength] (most outliers: the lowest); then shifted so the size-weighted mean is
    `sparsity` again, clipped to [0, 0.99]."""
    fn = "owl_sparsities"
    sparsity = _check_sparsity(fn, sparsity)
    if len(ratios) != len(sizes):
        raise ValueError(f"{fn}: ratios and sizes must have one entry per layer")
    if not ratios:
        return []
    r = torch.tensor(ratios, dtype=torch.float64)
    size = torch.tensor(sizes, dtype=torch.float64)
    spread = float(r.max() - r.min())
    scaled = (r - r.min()) / spread if spread > 0 else torch.zeros_like(r)
    s = sparsity + strength - 2 * strength * scaled
    for _ in range(8):  # shift back to the target mean; repeat while clipping moved it
        s = (s + sparsity - float((s * size).sum() / size.sum())).clamp(0.0, 0.99)
    return [float(v) for v in s]


# ---- int8 values -------------------------------------------------------------------------------------
def round_int8_rows(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """w rounded to the per-row int8 grid value * scales[row], codes clamped to [-127, 127] (float32)."""
    s = scales.to(device=w.device, dtype=torch.float32)
    return torch.round(w.to(torch.float32) / s[:, None]).clamp_(-INT8_MAX, INT8_MAX) * s[:, None]


# ---- SparseGPT ---------------------------------------------------------------------------------------
def sparsegpt_prune(w: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, pattern: str = "unstructured",
                    block_size: int = 128, damp: float = 0.01, values: Optional[str] = None, per: str = "row",
                    block: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """SparseGPT of w [N, K] given its input Hessian H [K, K] (quant.hessian.HessianAccumulator).

    Returns the pruned weight, float32 [N, K], zeros where pruned. Unstructured: round(sparsity * K)
    per row (per="row", spread over the column blocks so each row's total is exact) or per layer;
    N:M: m/2 kept in each group of m columns (chosen group by group); block: whole bn x bk tiles
    (per layer, tile by column block). values="int8" prunes and quantizes in one pass: kept weights are
    rounded to the per-row grid amax(|w_row|) / 127 of the float weight (each row's largest weight is
    kept at code +-127, so that grid is also the one the int8 packing of quant.sparse derives from the
    result) and both errors are compensated. damp is relative to mean(diag H); dead inputs (diag H = 0)
    are decoupled (their weights pruned by magnitude)."""
    fn = "sparsegpt_prune"
    check_obs_args(fn, w, H, block_size, damp)
    sparsity = _check_sparsity(fn, sparsity)
    m = _check_pattern(fn, pattern)
    if values not in VALUES:
        raise ValueError(f"{fn}: values must be None or 'int8', got {values!r}")
    if per not in PER:
        raise ValueError(f"{fn}: per must be one of {PER}, got {per!r}")
    n, k = w.shape
    if m is not None and k % m:
        raise ValueError(f"{fn}: {pattern} needs K divisible by {m}, got K={k}")
    bn, bk = check_block(fn, block, n, k) if pattern == "block" else (1, 1)
    W, h, _dead = prepare_obs(w, H, zero_dead=False)
    U = inverse_hessian_factor(h, float(damp), fn)
    d = torch.diagonal(U)
    group = m if m is not None else bk  # mask regions never straddle a column block
    blocks = column_blocks(k, k, -(-block_size // group) * group)

    if pattern == "block" and values == "int8":
        raise ValueError(f"{fn}: int8 values with the block pattern are not supported (the tile holding a row's "
                         "largest weight would have to be kept); prune with values=None, or quantize afterwards")
    scales = forced = row_max = None
    if values == "int8":
        scales = row_scales_int8(W)
        rows, top = torch.arange(n, device=W.device), W.abs().argmax(1)
        row_max = W[rows, top].clone()  # the float row maximum: code +-127 on the grid amax / 127
        forced = torch.zeros(n, k, dtype=torch.bool, device=W.device)
        forced[rows, top] = row_max != 0
    keep = torch.ones(n, k, dtype=torch.bool, device=W.device)
    region_end = 0

    def prune_column(col, i, W1):
        nonlocal region_end
        if col >= region_end:  # choose the mask of the next region from the current (updated) weights
            end = col + m if m is not None else col + (W1.shape[1] - i)
            score = W1[:, i:i + end - col].square() / d[col:end].square()[None, :]
            if forced is not None:
                score = score.masked_fill(forced[:, col:end], float("inf"))
            keep[:, col:end] = _region_mask(score, col, end)
            region_end = end
        kept = W1[:, i] * keep[:, col]
        if scales is not None:
            kept = round_int8_rows(kept[:, None], scales)[:, 0]
            kept = torch.where(forced[:, col], row_max, kept)
        return kept, kept

    def _region_mask(score, start, end):
        if m is not None:
            return nm_mask(score, m, score)
        if pattern == "block":
            rows = n // bn
            tiles = score.reshape(rows, bn, (end - start) // bk, bk).sum((1, 3)).reshape(1, -1)
            count = round(sparsity * rows * end / bk) - round(sparsity * rows * start / bk)  # exact over the layer
            tile_keep = ~_lowest(tiles, count).reshape(rows, (end - start) // bk)
            return tile_keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
        if per == "row":
            return ~_lowest(score, round(sparsity * end) - round(sparsity * start))
        count = round(sparsity * n * end) - round(sparsity * n * start)
        return ~_lowest(score.reshape(1, -1), count).reshape(score.shape)

    return obs_columns(W, U, blocks, prune_column)


# ---- conv --------------------------------------------------------------------------------------------
def conv_weight_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv weight [Cout, Cin/g, kh, kw] as per-group matrices [g, Cout/g, Cin/g * kh * kw] (columns in
    (cin, r, s) order, the order of unfold_conv_input)."""
    cout = weight.shape[0]
    if weight.dim() != 4 or cout % groups:
        raise ValueError(f"conv_weight_groups: expected a [Cout, Cin/groups, kh, kw] weight with Cout divisible by "
                         f"groups={groups}, got shape {tuple(weight.shape)}")
    return weight.reshape(groups, cout // groups, -1)


def conv_weight_from_groups(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of conv_weight_groups."""
    return w.reshape(tuple(shape))


def unfold_conv_input(x: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """The rows a conv's weight multiplies: x [B, Cin, H, W] unfolded (F.unfold) to [groups, B * L,
    Cin/g * kh * kw], so that conv2d(x, weight)[b, :, l] = (rows[g] @ W[g].T) over groups."""
    if isinstance(padding, str):
        raise ValueError("unfold_conv_input: string padding ('same', 'valid') is not supported; give the padding in pixels")
    b, cin = x.shape[0], x.shape[1]
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # [B, Cin*kh*kw, L]
    per_group = cols.shape[1] // groups
    cols = cols.reshape(b, groups, per_group, -1).permute(1, 0, 3, 2)  # [g, B, L, Kg]
    return cols.reshape(groups, -1, per_group)
