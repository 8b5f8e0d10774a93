"""Codebook (non-uniform, "weight sharing") quantization of a weight [N, K] into the canonical codebook
format of `slimkernels.quant.lowbit`: codes [N, K] in 0..2^b-1 and a float32 codebook [R, 2^b], one
per layer (R = 1, per="layer") or per output row (R = N, per="row"); w ~ codebook[row, code].

Three ways to pick the codebook, all followed by nearest-entry assignment (`assign_codes`):
- kmeans: 1-D k-means (Lloyd), weight sharing as in Deep Compression (Han et al. 2016).
- nf4: the 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023) times the absmax.
- pow2: 0 and +-absmax * 2^-i, logarithmic levels that suit bell-shaped weights.

Codes come back UNPACKED (uint8 [N, K]); `lowbit.pack_codes(codes, bits)` makes the indices the ops
take. Pure torch, on w's device, no loop over rows.
"""
from __future__ import annotations

import torch

from .int4 import check_weight
from .lowbit import CODE_BITS

KINDS = ("kmeans", "nf4", "pow2")
PER = ("row", "layer")
KMEANS_CHUNK = 1 << 22  # weights per k-means batch: bounds memory to ~40 bytes per weight of one batch
KMEANS_MAX_SAMPLES = 1 << 24  # per="layer" fits the codebook on a seeded sample of a bigger layer
KMEANS_RESTARTS = 3  # k-means++ seedings tried besides the two fixed inits


def _check_common(fn: str, w: torch.Tensor, bits: int, per: str) -> None:
    check_weight(fn, w)
    if bits not in CODE_BITS:
        raise ValueError(f"{fn}: bits must be one of {CODE_BITS}, got {bits!r}")
    if per not in PER:
        raise ValueError(f"{fn}: per must be 'row' (one codebook per output row) or 'layer', got {per!r}")


def _rows(w: torch.Tensor, per: str) -> torch.Tensor:
    """The data each codebook is fitted to, as float32 [R, M]."""
    w = w.to(torch.float32)
    return w if per == "row" else w.reshape(1, -1)


def assign_codes(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook entry of every weight: w [N, K], codebook [1 or N, E] -> uint8 codes [N, K].

    Sorts each codebook and binary-searches the midpoints between neighbouring entries (memory
    O(N K), not O(N K E)). A weight exactly halfway between two entries gets the smaller entry; among
    equal entries, the first one in sorted (stable) order."""
    check_weight("assign_codes", w)
    n = w.shape[0]
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 2 or codebook.shape[0] not in (1, n) \
            or not 1 <= codebook.shape[1] <= 256:
        desc = tuple(codebook.shape) if isinstance(codebook, torch.Tensor) else type(codebook).__name__
        raise ValueError(f"assign_codes: codebook must be [1, E] or [{n}, E] with 1 <= E <= 256, got {desc}")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError("assign_codes: the codebook holds NaN or Inf values")
    return NearestEntry(codebook.to(device=w.device))(w)[0]


class NearestEntry:
    """The nearest-entry search of assign_codes with the codebook [1 or N, E] sorted once, for callers
    that assign many slices of a weight (GPTQ assigns one column at a time)."""

    def __init__(self, codebook: torch.Tensor):
        cb = codebook.to(torch.float32)
        self.values, self.order = torch.sort(cb, dim=1, stable=True)
        # halves first: a + b overflows near float32 max
        self.mids = (self.values[:, :-1] / 2 + self.values[:, 1:] / 2).contiguous()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, J] -> (uint8 codes [N, J], their float32 codebook values [N, J])."""
        x = x.to(torch.float32).contiguous()
        if self.values.shape[0] == 1:
            pos = torch.searchsorted(self.mids[0], x)
            return self.order[0][pos].to(torch.uint8), self.values[0][pos]
        pos = torch.searchsorted(self.mids, x)
        return torch.gather(self.order, 1, pos).to(torch.uint8), torch.gather(self.values, 1, pos)


def _lloyd_sorted(xs: torch.Tensor, cent: torch.Tensor, iters: int) -> torch.Tensor:
    """1-D k-means on rows of already sorted data xs [R, M] from sorted centroids cent [R, E] ->
    centroids [R, E], sorted ascending.

    In 1-D every cluster is a run of sorted data, so an assignment is E - 1 binary searches per row
    and a cluster's sum a difference of prefix sums: each Lloyd step costs O(R E log M). The prefix
    sums are float64 and run outward from 0 (negatives summed from the right, positives from the
    left), so a cluster's sum never cancels against much larger weights elsewhere in the row.
    Deterministic: no atomics, no randomness."""
    r, m = xs.shape
    zero = xs.new_zeros(r, 1, dtype=torch.float64)
    x64 = xs.to(torch.float64)
    pos_prefix = torch.cat([zero, x64.clamp(min=0).cumsum(1)], 1)  # [R, M+1]: sum of positives before j
    neg_suffix = torch.cat([x64.clamp(max=0).flip(1).cumsum(1).flip(1), zero], 1)  # negatives from j on
    for _ in range(iters):
        mids = cent[:, :-1] / 2 + cent[:, 1:] / 2
        # bounds[:, j] = first sorted index of cluster j (x > mid goes up: ties go to the lower entry)
        inner = torch.searchsorted(xs, mids.contiguous(), right=True)
        bounds = torch.cat([inner.new_zeros(r, 1), inner, inner.new_full((r, 1), m)], 1)
        lo, hi = bounds[:, :-1], bounds[:, 1:]
        count = hi - lo
        total = (pos_prefix.gather(1, hi) - pos_prefix.gather(1, lo)) + (neg_suffix.gather(1, lo) - neg_suffix.gather(1, hi))
        new = torch.where(count > 0, total / count.clamp(min=1), cent.to(torch.float64)).to(torch.float32)
        empty = count == 0
        if bool(empty.any()):
            new = _reseed_empty(xs, new, lo, hi, empty)
        new = torch.sort(new, dim=1).values
        if torch.equal(new, cent):
            break
        cent = new
    return cent


def _reseed_empty(xs, cent, lo, hi, empty):
    """Move empty clusters onto the worst-fitted weights: in 1-D the weight farthest from its centroid
    is an end of its cluster's run, so the candidates are the 2E run ends of each row."""
    m = xs.shape[1]
    first = xs.gather(1, lo.clamp(max=m - 1))
    last = xs.gather(1, (hi - 1).clamp(min=0))
    cand = torch.cat([first, last], 1)
    err = torch.cat([cent - first, last - cent], 1).abs().masked_fill(torch.cat([empty, empty], 1), -1.0)
    ranked = cand.gather(1, err.argsort(dim=1, descending=True, stable=True))
    nth_empty = (empty.cumsum(1) - 1).clamp(min=0)  # the j-th empty cluster of a row takes the j-th worst
    return torch.where(empty, ranked.gather(1, nth_empty), cent)


def _kmeanspp_init(xs: torch.Tensor, entries: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of every row of xs [R, M] at once: each next
    centroid is a weight drawn with probability proportional to its squared distance to the nearest
    centroid so far. Draws use `gen` (CPU) and inverse-CDF sampling, so any M and any device work."""
    r, m = xs.shape

    x64 = xs.to(torch.float64)  # squared distances of huge float32 weights overflow float32

    def draw(weight):  # weight [R, M] >= 0 -> one drawn value per row, [R, 1]
        cdf = weight.cumsum(1)
        total = cdf[:, -1:]
        cdf = torch.where(total > 0, cdf, torch.arange(1, m + 1, device=xs.device, dtype=torch.float64).expand(r, m))
        u = torch.rand(r, 1, generator=gen, dtype=torch.float64).to(xs.device) * cdf[:, -1:]
        return xs.gather(1, torch.searchsorted(cdf, u, right=True).clamp_(max=m - 1))

    cent = [draw(torch.ones_like(x64))]
    dist = (x64 - cent[0]) ** 2
    for _ in range(entries - 1):
        cent.append(draw(dist))
        dist = torch.minimum(dist, (x64 - cent[-1]) ** 2)
    return torch.sort(torch.cat(cent, 1), dim=1).values


def _row_sse(xs: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    """Squared error of every row of xs [R, M] under its nearest centroid of sorted cent [R, E] -> [R]."""
    mids = (cent[:, :-1] / 2 + cent[:, 1:] / 2).contiguous()
    return ((xs - cent.gather(1, torch.searchsorted(mids, xs))).to(torch.float64) ** 2).sum(1)


def _kmeans_rows(xs: torch.Tensor, entries: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Best (per row) of Lloyd runs from several inits: 1-D k-means has many poor local optima.
    Inits: the (j + 1/2) / E quantiles, the Lloyd-Max levels of a normal fit (mean + sqrt(3) std
    ndtri((j + 1/2) / E): optimal levels are spread like density^(1/3)), and KMEANS_RESTARTS
    k-means++ seedings."""
    r, m = xs.shape
    probs = (torch.arange(entries, device=xs.device, dtype=torch.float64) + 0.5) / entries
    inits = [xs[:, (probs * m).long().clamp_(max=m - 1)]]
    x64 = xs.to(torch.float64)  # float32 moments of huge weights overflow
    std = x64.std(1, keepdim=True) if m > 1 else x64.new_zeros(r, 1)
    normal = (x64.mean(1, keepdim=True) + std * (3 ** 0.5) * torch.special.ndtri(probs)).to(xs.dtype)
    inits.append(torch.minimum(torch.maximum(normal, xs[:, :1]), xs[:, -1:]))
    inits += [_kmeanspp_init(xs, entries, gen) for _ in range(KMEANS_RESTARTS)]
    best, best_sse = None, None
    for init in inits:
        cent = _lloyd_sorted(xs, init, iters)
        sse = _row_sse(xs, cent)
        if best is None:
            best, best_sse = cent, sse
        else:
            better = sse < best_sse  # strict: ties keep the earlier init, deterministic
            best = torch.where(better[:, None], cent, best)
            best_sse = torch.where(better, sse, best_sse)
    return best


def kmeans_codebook(w: torch.Tensor, bits: int, per: str = "row", iters: int = 25, seed: int = 0,
                    keep_zero: bool = False):
    """k-means codebook: w [N, K] -> (codes uint8 [N, K], codebook float32 [R, 2^bits], ascending).

    Lloyd iterations (at most `iters`, stopped early when the centroids stop moving) from several
    inits, keeping each row's best (see _kmeans_rows); empty clusters are re-seeded at the
    worst-fitted weights. Rows are batched (in chunks of KMEANS_CHUNK weights). A per="layer" fit on
    more than KMEANS_MAX_SAMPLES weights uses that many weights drawn with `seed`. `seed` drives the
    k-means++ draws: same input, seed and device, same output. A row with fewer distinct values than
    entries gets repeated entries (all finite).

    keep_zero: one entry is exactly 0 and the other 2^bits - 1 are fitted to the nonzero weights only, so
    pruned weights stay exactly 0 (Deep Compression's sharing after pruning). One fit per row (per="row")
    or one for the layer."""
    _check_common("kmeans_codebook", w, bits, per)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"kmeans_codebook: iters must be an int >= 0, got {iters!r}")
    entries = 1 << bits
    n, k = w.shape
    if w.numel() == 0:
        return (torch.zeros(n, k, dtype=torch.uint8, device=w.device),
                torch.zeros(n if per == "row" else 1, entries, device=w.device))
    gen = torch.Generator().manual_seed(seed)
    if keep_zero:
        codebook = _kmeans_with_zero(_rows(w, per), entries, iters, gen)
        return assign_codes(w, codebook), codebook
    data = _rows(w, per)
    if data.shape[1] > KMEANS_MAX_SAMPLES:
        pick = torch.randint(data.shape[1], (KMEANS_MAX_SAMPLES,), generator=gen).to(data.device)
        data = data[:, pick]
    chunk_rows = max(1, KMEANS_CHUNK // data.shape[1])
    codebook = torch.cat([_kmeans_rows(torch.sort(part, dim=1).values, entries, iters, gen)
                          for part in data.split(chunk_rows)])
    return assign_codes(w, codebook), codebook


def _kmeans_with_zero(data: torch.Tensor, entries: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Codebooks [R, entries] of the rows of data [R, M]: 0 and entries - 1 k-means centroids of the row's
    nonzero values (all 0 for a row without any), ascending."""
    books = []
    for row in data:
        nonzero = torch.sort(row[row != 0]).values
        if data.shape[1] > KMEANS_MAX_SAMPLES and len(nonzero) > KMEANS_MAX_SAMPLES:
            pick = torch.randint(len(nonzero), (KMEANS_MAX_SAMPLES,), generator=gen).to(row.device)
            nonzero = torch.sort(nonzero[pick]).values
        cent = _kmeans_rows(nonzero[None], entries - 1, iters, gen)[0] if len(nonzero) else row.new_zeros(entries - 1)
        books.append(torch.sort(torch.cat([row.new_zeros(1), cent])).values)
    return torch.stack(books)


def _nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels (QLoRA, Dettmers et al. 2023, appendix E; bitsandbytes' create_normal_map):
    quantiles of N(0, 1) at 8 evenly spaced probabilities from 0.5 to d = 0.9677083 for the positive
    side and 7 for the negative side (0.5 itself giving the exact 0 shared by both), divided by the
    largest so they span [-1, 1]. Asymmetric on purpose: 0 exactly, 7 negative and 8 positive levels."""
    d = 0.9677083
    positive = torch.special.ndtri(torch.linspace(d, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(d, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).to(torch.float32)


NF4_LEVELS = _nf4_levels()


def _absmax_scale(data: torch.Tensor) -> torch.Tensor:
    """Absmax of each row of data [R, M] as [R, 1]; 1.0 for all-zero rows, so entries stay distinct."""
    amax = data.abs().amax(dim=1, keepdim=True)
    return torch.where(amax > 0, amax, torch.ones_like(amax))


def nf4_codebook(w: torch.Tensor, per: str = "row"):
    """NF4: codebook = NF4_LEVELS * absmax of the row (per="row", [N, 16]) or layer ([1, 16])."""
    _check_common("nf4_codebook", w, 4, per)
    codebook = _absmax_scale(_rows(w, per)) * NF4_LEVELS.to(w.device)
    return assign_codes(w, codebook), codebook


def pow2_levels(bits: int) -> torch.Tensor:
    """The 2^bits power-of-two levels on [-1, 1], ascending: 0, +-2^-i for i = 0 .. 2^(bits-1) - 2, and
    one extra positive level 2^-(2^(bits-1) - 1) (the next power down) to fill the 2^bits entries.
    bits=2: {-1, 0, 0.5, 1}; bits=3: {-1, -0.5, -0.25, 0, 0.125, 0.25, 0.5, 1};
    bits=4: {0, +-1, +-1/2, ..., +-1/64, +1/128}."""
    if bits not in CODE_BITS:
        raise ValueError(f"pow2_levels: bits must be one of {CODE_BITS}, got {bits!r}")
    half = 1 << (bits - 1)
    mags = torch.pow(2.0, -torch.arange(half - 1, dtype=torch.float32))
    extra = torch.tensor([2.0 ** -(half - 1)])
    return torch.cat([-mags, torch.zeros(1), extra, mags]).sort().values


def pow2_codebook(w: torch.Tensor, bits: int, per: str = "row"):
    """Power-of-two codebook: pow2_levels(bits) * absmax of the row or layer -> (codes, codebook)."""
    _check_common("pow2_codebook", w, bits, per)
    codebook = _absmax_scale(_rows(w, per)) * pow2_levels(bits).to(w.device)
    return assign_codes(w, codebook), codebook


def fit_codebook(w: torch.Tensor, bits: int, kind: str, per: str = "row", seed: int = 0, keep_zero: bool = False):
    """Fit a codebook of `kind` in ("kmeans", "nf4", "pow2") -> (codes uint8 [N, K], codebook f32 [R, 2^bits]).
    keep_zero: the codebook holds an exact 0 that zero weights map to (k-means: see kmeans_codebook; nf4 and
    pow2 levels hold 0 already)."""
    if kind == "kmeans":
        return kmeans_codebook(w, bits, per=per, seed=seed, keep_zero=keep_zero)
    if kind == "nf4":
        if bits != 4:
            raise ValueError(f"fit_codebook: the nf4 codebook has 16 levels and needs bits=4, got bits={bits!r}")
        return nf4_codebook(w, per=per)
    if kind == "pow2":
        return pow2_codebook(w, bits, per=per)
    raise ValueError(f"fit_codebook: kind must be one of {KINDS}, got {kind!r}")
