"""Codebook (non-uniform, "weight sharing") quantization of a weight [N, K] into the canonical codebook
format of `slimkernels.quant.lowbit`: codes [N, K] in 0..2^b-1 and a float32 codebook [R, 2^b], one
per layer (R = 1, per="layer") or per output row (R = N, per="row"); w ~ codebook[row, code].

Three ways to pick the codebook, all followed by nearest-entry assignment (`assign_codes`):
- kmeans: 1-D k-means (Lloyd), weight sharing as in Deep Compression (Han et al. 2016).
- nf4: the 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023) times the absmax.
- pow2: 0 and +-absmax * 2^-i, logarithmic levels that suit bell-shaped weights.

Codes come back UNPACKED (uint8 [N, K]); `lowbit.pack_codes(codes, bits)` makes the indices the ops
take. Pure torch, on w's device, no loop over rows; k-means of a CPU weight runs natively
(slimkernels._C.kmeans_codebook, csrc/cpu/kmeans.cpp: the same steps one row per thread, equal results up
to the rounding of float64 sums) unless KMEANS_NATIVE is False.
"""
from __future__ import annotations

from typing import Optional

import torch

from .int4 import check_weight
from .lowbit import CODE_BITS

KINDS = ("kmeans", "nf4", "pow2")
PER = ("row", "layer")
KMEANS_CHUNK = 1 << 22  # weights per k-means batch: bounds memory to ~40 bytes per weight of one batch
KMEANS_MAX_SAMPLES = 1 << 24  # per="layer" fits the codebook on a seeded sample of a bigger layer
KMEANS_RESTARTS = 3  # k-means++ seedings tried besides the two fixed inits
KMEANS_NATIVE = True  # k-means of CPU weights in slimkernels._C when built; False: the torch code below


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


class _SortedRows:
    """Rows of sorted data xs [R, M] with optional 0/1 weights `counted` [R, M] (keep_zero pads its rows
    with uncounted copies of their largest value), and the float64 prefix sums that give the count, sum
    and sum of squares of any run [lo, hi) of a row with one gather. The sums run outward from 0
    (negatives summed from the right, positives from the left), so a run's sums never cancel against much
    larger weights elsewhere in the row."""

    def __init__(self, xs: torch.Tensor, counted: Optional[torch.Tensor] = None):
        r, m = xs.shape
        self.xs = xs
        x64 = xs.to(torch.float64)
        if counted is not None:
            x64 = x64 * counted
        # prefix[:, j, b]: b = 0 count before j; 1 / 3 sum / sum of squares of the positives before j;
        # 2 / 4 the same of the negatives from j on (suffix sums: run outward from 0 too). The five sums of
        # an index share a cache line: the gathers of the binary searches are random accesses.
        prefix = x64.new_zeros(r, m + 1, 5)
        if counted is None:
            prefix[:, :, 0] = torch.arange(m + 1, dtype=torch.float64, device=xs.device)
        else:
            prefix[:, 1:, 0] = counted.to(torch.float64).cumsum(1)
        positive = x64.clamp(min=0)
        prefix[:, 1:, 1] = positive.cumsum(1)
        prefix[:, 1:, 3] = (positive * positive).cumsum(1)
        negative = x64.clamp(max=0).flip(1)
        prefix[:, :-1, 2] = negative.cumsum(1).flip(1)
        prefix[:, :-1, 4] = (negative * negative).cumsum(1).flip(1)
        self.prefix = prefix.view(r, -1)
        self.total = prefix[:, -1:, 0]  # counted weights per row, [R, 1]

    def at(self, j: torch.Tensor) -> torch.Tensor:
        """The five prefix sums at the indices j [R, X] -> [R, X, 5]."""
        r, x = j.shape
        return self.prefix.gather(1, (j[:, :, None] * 5 + torch.arange(5, device=j.device)).view(r, -1)).view(r, x, 5)

    @staticmethod
    def between(start: torch.Tensor, end: torch.Tensor):
        """Count, sum and sum of squares, float64 [R, X], of the runs between prefix sums start and end
        (at(lo), at(hi))."""
        d = end - start
        return d[..., 0], d[..., 1] - d[..., 2], d[..., 3] - d[..., 4]

    def runs(self, lo: torch.Tensor, hi: torch.Tensor):
        """Count, sum and sum of squares, float64 [R, X], of the runs [lo, hi) [R, X] of each row."""
        x = lo.shape[1]
        ends = self.at(torch.cat([lo, hi], 1))
        return self.between(ends[:, :x], ends[:, x:])

    def bounds(self, cent: torch.Tensor):
        """Runs of the nearest-centroid clusters of sorted centroids cent [R, C, E] (C fits per row):
        (lo, hi) [R, C*E], the first and one-past-last sorted index of each cluster (a weight exactly
        halfway goes to the lower entry, as in assign_codes)."""
        r, c, e = cent.shape
        mids = (cent[..., :-1] / 2 + cent[..., 1:] / 2).reshape(r, -1).contiguous()
        inner = torch.searchsorted(self.xs, mids, right=True).view(r, c, e - 1)
        edges = torch.cat([inner.new_zeros(r, c, 1), inner, inner.new_full((r, c, 1), self.xs.shape[1])], 2)
        return edges[..., :-1].reshape(r, -1), edges[..., 1:].reshape(r, -1)

    def sse(self, cent: torch.Tensor) -> torch.Tensor:
        """Squared error of each row under each of its fits cent [R, C, E] (sorted) -> [R, C], float64."""
        count, total, squares = self.runs(*self.bounds(cent))
        c = cent.reshape(count.shape).to(torch.float64)
        return (squares - 2 * c * total + c * c * count).clamp(min=0).view(cent.shape).sum(2)


def _lloyd_sorted(data: _SortedRows, cent: torch.Tensor, iters: int) -> torch.Tensor:
    """1-D k-means of every row of `data` from C sorted inits per row, cent [R, C, E] -> the centroids
    [R, C, E], sorted ascending.

    In 1-D every cluster is a run of sorted data, so an assignment is E - 1 binary searches per fit
    and a cluster's mean a difference of prefix sums: each Lloyd step costs O(R C E log M), however long
    the rows. All fits of all rows advance together. Deterministic: no atomics, no randomness."""
    for _ in range(iters):
        lo, hi = data.bounds(cent)
        count, total, _ = data.runs(lo, hi)
        flat = cent.reshape(count.shape)
        new = torch.where(count > 0, total / count.clamp(min=1), flat.to(torch.float64)).to(torch.float32)
        empty = count == 0
        if bool(empty.any()):
            new = _reseed_empty(data.xs, new.view(cent.shape), lo.view(cent.shape), hi.view(cent.shape),
                                empty.view(cent.shape))
        new = torch.sort(new.view(cent.shape), dim=2).values
        if torch.equal(new, cent):
            break
        cent = new
    return cent


def _reseed_empty(xs, cent, lo, hi, empty):
    """Move empty clusters onto the worst-fitted weights: in 1-D the weight farthest from its centroid
    is an end of its cluster's run, so the candidates are the 2E run ends of each fit. All of cent, lo,
    hi, empty are [R, C, E]."""
    r, c, e = cent.shape
    m = xs.shape[1]
    first = xs.gather(1, lo.reshape(r, -1).clamp(max=m - 1)).view(r, c, e)
    last = xs.gather(1, (hi.reshape(r, -1) - 1).clamp(min=0)).view(r, c, e)
    cand = torch.cat([first, last], 2)
    err = torch.cat([cent - first, last - cent], 2).abs().masked_fill(torch.cat([empty, empty], 2), -1.0)
    ranked = cand.gather(2, err.argsort(dim=2, descending=True, stable=True))
    nth_empty = (empty.cumsum(2) - 1).clamp(min=0)  # the j-th empty cluster of a fit takes the j-th worst
    return torch.where(empty, ranked.gather(2, nth_empty), cent)


def _quantile_points(data: _SortedRows, probs: torch.Tensor) -> torch.Tensor:
    """The weights at the (counted) quantiles probs [P] of every row -> [R, P]."""
    r, m = data.xs.shape
    target = (probs.to(data.xs.device, torch.float64) * data.total).contiguous()
    counts = data.prefix.view(r, m + 1, 5)[:, 1:, 0].contiguous()  # counted weights up to and including j
    index = torch.searchsorted(counts, target, right=True).clamp_(max=m - 1)
    return data.xs.gather(1, index)


def _kmeanspp_inits(data: _SortedRows, entries: int, uniforms: torch.Tensor) -> torch.Tensor:
    """`restarts` k-means++ seedings (Arthur & Vassilvitskii 2007) of every row at once -> [R, restarts,
    entries], sorted. Each next centroid is a weight drawn with probability proportional to its squared
    distance to the nearest centroid so far, without a pass over the weights: a cluster (a run of the
    sorted row) is drawn by its squared error, exact from the prefix sums, then a weight inside the run
    by inverse CDF, the run's cumulative squared error up to index j (again from the prefix sums, and
    non-decreasing in j) binary-searched. Each draw costs O(R restarts (E + log M)). The draws read
    uniforms [R, restarts, 2 entries - 1] (float64, drawn up front from the seeded generator, so any device
    and the native code see the same numbers): [..., 0] the first centroid, [..., 2 t - 1] and [..., 2 t]
    the run and the weight of centroid t."""
    r, m = data.xs.shape
    device = data.xs.device
    uniforms = uniforms.to(device)
    shape = uniforms.shape[:2]
    steps = max(1, m.bit_length())

    def flat(t):  # [R, C, ...] -> [R, C * ...] for the gathers of _SortedRows.runs
        return t.reshape(r, -1)

    def mass_before(first, j, c, uniform):  # count (uniform) or squared error around c from prefix sums first to j
        count, total, squares = data.between(first, data.at(j))
        return torch.where(uniform, count, squares - 2 * c * total + c * c * count)

    def draw(start, end, c, uniform, u):  # [R, C] each -> a weight of each run drawn by its mass, [R, C]
        first = data.at(start)
        u = u * mass_before(first, end, c, uniform)
        lo, hi = start.clone(), end.clone()  # binary search: the first j whose prefix mass up to j + 1 exceeds u
        for _ in range(steps):
            mid = (lo + hi) // 2
            below = mass_before(first, torch.minimum(mid + 1, end), c, uniform) <= u  # inactive: mid may be end
            active = lo < hi
            lo = torch.where(active & below, mid + 1, lo)
            hi = torch.where(active & ~below, mid, hi)
        return data.xs.gather(1, torch.minimum(lo, end - 1).clamp(min=0))

    start = torch.zeros(shape, dtype=torch.long, device=device)
    everywhere = torch.ones(shape, dtype=torch.bool, device=device)
    cent = draw(start, torch.full_like(start, m), start.to(torch.float64), everywhere,
                uniforms[..., 0])[..., None]  # uniform first
    for t in range(1, entries):
        cent = torch.sort(cent, dim=2).values
        lo, hi = (t.view(cent.shape) for t in data.bounds(cent))
        c64 = cent.to(torch.float64)
        count, total, squares = (t.view(cent.shape) for t in data.runs(flat(lo), flat(hi)))
        mass = (squares - 2 * c64 * total + c64 * c64 * count).clamp(min=0)
        placed = mass.sum(2) <= 0  # every weight is a centroid already (few distinct values): uniform
        cdf = torch.where(placed[..., None], count, mass).cumsum(2)
        u = uniforms[..., 2 * t - 1:2 * t] * cdf[..., -1:]
        which = torch.searchsorted(cdf.contiguous(), u, right=True).clamp_(max=cent.shape[2] - 1)
        run_lo, run_hi, run_c = (t.gather(2, which)[..., 0] for t in (lo, hi, c64))
        cent = torch.cat([cent, draw(run_lo, run_hi, run_c, placed, uniforms[..., 2 * t])[..., None]], 2)
    return torch.sort(cent, dim=2).values


def _kmeans_rows(data: _SortedRows, entries: int, iters: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Best (per row) of Lloyd runs from several inits, [R, entries]: 1-D k-means has many poor local
    optima. Inits: the (j + 1/2) / E quantiles, the Lloyd-Max levels of a normal fit (mean + sqrt(3) std
    ndtri((j + 1/2) / E): optimal levels are spread like density^(1/3)), and KMEANS_RESTARTS k-means++
    seedings (from uniforms, see _kmeanspp_inits); all run together, and each row keeps the fit of least
    squared error (the first on ties)."""
    xs = data.xs
    probs = _init_probs(entries, xs.device)
    count, total, squares = data.runs(torch.zeros_like(data.total, dtype=torch.long),
                                      torch.full_like(data.total, xs.shape[1], dtype=torch.long))
    mean = total / count.clamp(min=1)
    std = (squares / count.clamp(min=1) - mean * mean).clamp(min=0).sqrt()
    normal = (mean + std * (3 ** 0.5) * torch.special.ndtri(probs)).to(xs.dtype)
    normal = torch.minimum(torch.maximum(normal, xs[:, :1]), xs[:, -1:])  # keep_zero pads with the row's max
    inits = torch.cat([_quantile_points(data, probs)[:, None], normal[:, None],
                       _kmeanspp_inits(data, entries, uniforms)], 1)
    cent = _lloyd_sorted(data, inits, iters)
    best = data.sse(cent).argmin(1)  # argmin returns the first of equal minima
    return cent[torch.arange(len(cent), device=xs.device), best]


def kmeans_codebook(w: torch.Tensor, bits: int, per: str = "row", iters: int = 25, seed: int = 0,
                    keep_zero: bool = False):
    """k-means codebook: w [N, K] -> (codes uint8 [N, K], codebook float32 [R, 2^bits], ascending).

    Lloyd iterations (at most `iters`, stopped early when the centroids stop moving) from several
    inits, keeping each row's best (see _kmeans_rows); empty clusters are re-seeded at the
    worst-fitted weights. A CPU weight is fitted natively (one row per thread; see KMEANS_NATIVE), any
    other in torch with the rows batched (in chunks of KMEANS_CHUNK weights). A per="layer" fit on more
    than KMEANS_MAX_SAMPLES weights uses that many weights drawn with `seed`. `seed` drives the k-means++
    draws: same input, seed and device, same output, for any thread count. A row with fewer distinct
    values than entries gets repeated entries (all finite).

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
    data = _rows(w, per)
    sampled = data.shape[1] > KMEANS_MAX_SAMPLES
    if sampled:
        pick = torch.randint(data.shape[1], (KMEANS_MAX_SAMPLES,), generator=gen).to(data.device)
        data = data[:, pick]
    uniforms = _kmeanspp_uniforms(data.shape, entries - 1 if keep_zero else entries, gen)
    native = _native_kmeans() if data.device.type == "cpu" else None
    if native is not None:  # the codes of w, also when the fit saw a sample of it
        codebook, codes = _fit_native(native, data, entries, iters, uniforms, keep_zero, _rows(w, per))
    else:
        codebook, codes = _fit_torch(data, entries, iters, uniforms, keep_zero, with_codes=not sampled)
        if codes is None:  # the fit saw a sample of w
            return assign_codes(w, codebook), codebook
    return codes.view(n, k), codebook


def _kmeanspp_uniforms(shape, fitted: int, gen: torch.Generator) -> torch.Tensor:
    """Every random number of the k-means++ seedings of rows of `shape` [R, M] with `fitted` entries, drawn
    up front (the torch and the native fits read the same ones) -> float64 [R, KMEANS_RESTARTS, 2 fitted - 1].
    Drawn chunk by chunk and draw by draw (the order the batched torch fit used to draw them in), so the
    seeded codebooks stay those of earlier versions."""
    rows, m = shape
    chunk_rows = max(1, KMEANS_CHUNK // m)
    return torch.cat([torch.rand(2 * fitted - 1, min(chunk_rows, rows - start), KMEANS_RESTARTS, generator=gen,
                                 dtype=torch.float64).permute(1, 2, 0) for start in range(0, rows, chunk_rows)]).contiguous()


def _native_kmeans():
    """slimkernels._C when it is built with kmeans_codebook and KMEANS_NATIVE is on, else None."""
    if not KMEANS_NATIVE:
        return None
    from .. import _native

    return _native._C if hasattr(_native._C, "kmeans_codebook") else None


def _init_probs(entries: int, device=None) -> torch.Tensor:
    """(j + 1/2) / entries, float64: the quantiles of the quantile and normal inits."""
    return (torch.arange(entries, device=device, dtype=torch.float64) + 0.5) / entries


def _fit_native(lib, data: torch.Tensor, entries: int, iters: int, uniforms: torch.Tensor, keep_zero: bool,
                coded: torch.Tensor):
    """_fit_torch on the CPU in slimkernels._C (one row per thread; one long row: its fits in parallel), and
    the codes of coded [R, M'] (data itself or the weights it samples) under the codebooks."""
    data, coded = data.contiguous(), coded.contiguous()
    r, m = data.shape
    fitted = entries - 1 if keep_zero else entries
    uniforms = uniforms.to(torch.float64).contiguous()
    if data.dtype != torch.float32 or coded.dtype != torch.float32 or coded.shape[0] != r \
            or uniforms.shape != (r, KMEANS_RESTARTS, 2 * fitted - 1):
        raise ValueError(f"kmeans_codebook: the native fit takes float32 data [R, M] and coded [R, M'] and float64 "
                         f"uniforms [{r}, {KMEANS_RESTARTS}, {2 * fitted - 1}], got {data.dtype} {tuple(data.shape)}, "
                         f"{coded.dtype} {tuple(coded.shape)} and {tuple(uniforms.shape)}")
    normal_z = torch.special.ndtri(_init_probs(fitted))
    codebook = torch.empty(r, entries, dtype=torch.float32)
    codes = torch.empty(coded.shape, dtype=torch.uint8)
    same = coded.data_ptr() == data.data_ptr() and coded.shape == data.shape
    lib.kmeans_codebook(data.data_ptr(), r, m, entries, iters, KMEANS_RESTARTS, uniforms.data_ptr(),
                        normal_z.data_ptr(), keep_zero, codebook.data_ptr(), codes.data_ptr(),
                        max(1, torch.get_num_threads()), 0 if same else coded.data_ptr(), coded.shape[1])
    return codebook, codes


def _fit_torch(data: torch.Tensor, entries: int, iters: int, uniforms: torch.Tensor, keep_zero: bool,
               with_codes: bool):
    """(codebooks [R, entries] of the rows of data [R, M], ascending; with_codes: the codes of data under
    them, uint8 [R, M], else None), in chunks of KMEANS_CHUNK weights; uniforms [R, KMEANS_RESTARTS,
    2 F - 1] feed the k-means++ seedings (F the fitted entries)."""
    chunk_rows = max(1, KMEANS_CHUNK // data.shape[1])
    fits = [_fit_rows(part, entries, iters, u, keep_zero, with_codes)
            for part, u in zip(data.split(chunk_rows), uniforms.split(chunk_rows))]
    codebook = torch.cat([book for book, _ in fits])
    return codebook, (torch.cat([codes for _, codes in fits]) if with_codes else None)


def _fit_rows(data: torch.Tensor, entries: int, iters: int, uniforms: torch.Tensor, keep_zero: bool,
              with_codes: bool):
    """(codebooks [R, entries] of the rows of data [R, M], ascending; with_codes: the codes of data under
    them, uint8 [R, M], else None). keep_zero: 0 and entries - 1 centroids of the row's nonzero weights
    (all 0 for a row without any): the nonzero weights are sorted to the front of the row and the rest
    filled with uncounted copies of the largest, so the rows stay sorted and of one length; the codes then
    come from assign_codes."""
    if not keep_zero:
        xs, order = torch.sort(data, dim=1)
        rows = _SortedRows(xs)
        codebook = _kmeans_rows(rows, entries, iters, uniforms)
        return codebook, (_codes_from_sort(rows, codebook, order) if with_codes else None)
    nonzero = data != 0
    values = torch.sort(torch.where(nonzero, data, torch.inf), dim=1).values
    kept = nonzero.sum(1, keepdim=True)
    counted = torch.arange(data.shape[1], device=data.device) < kept
    largest = torch.where(kept > 0, values.gather(1, (kept - 1).clamp(min=0)), 0.0)
    cent = _kmeans_rows(_SortedRows(torch.where(counted, values, largest), counted), entries - 1, iters, uniforms)
    cent = torch.where(kept > 0, cent, 0.0)
    codebook = torch.sort(torch.cat([cent.new_zeros(len(cent), 1), cent], 1), dim=1).values
    return codebook, (assign_codes(data, codebook) if with_codes else None)


def _codes_from_sort(rows: _SortedRows, codebook: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The nearest entries of ascending codebooks [R, E] for the sorted rows, put back in the original
    order (xs = data.gather(1, order)) -> uint8 [R, M]: the code of sorted index j is the number of
    cluster starts at or before it (a mark per start, then a running sum). The same codes as
    assign_codes, ties included: both send a weight equal to a midpoint to the lower entry, and a
    repeated entry's later copies get empty runs."""
    r, m = order.shape
    starts = rows.bounds(codebook[:, None, :])[0][:, 1:]  # [R, E - 1]: the first index of clusters 1..E-1
    marks = torch.zeros(r, m + 1, dtype=torch.uint8, device=order.device)
    marks.scatter_add_(1, starts, torch.ones_like(starts, dtype=torch.uint8))
    codes_sorted = marks[:, :m].cumsum(1, dtype=torch.uint8)
    return torch.empty_like(codes_sorted).scatter_(1, order, codes_sorted)


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
