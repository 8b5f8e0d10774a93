"""The math of low-rank factorization: W [N, K] ~ U [N, r] @ V [r, K], in pure torch.

Three ways to choose the factors, each an SVD of W seen through some input scaling T [K, K]
(W T = P diag(s) Q^T, keep the r largest singular values, then undo T on the right factor):

  "svd"      T = I: the best rank-r W in the Frobenius norm; the discarded s_i^2 are ||W - UV||_F^2.
  "asvd"     T = diag(mean |x_j| ^ alpha) from calibration inputs (Yuan et al. 2023, ASVD): input
             features that carry large activations weigh more in the truncation.
  "svd-llm"  T = S, the lower Cholesky factor of the input Gram matrix X^T X (+ a small damping), so
             S S^T = X^T X (Wang et al. 2024, SVD-LLM). Truncation-aware: ||X (W - UV)^T||_F^2 equals
             the discarded s_i^2 of W S exactly (without damping), so the spectrum of W S is the curve
             of the layer's output error on the calibration data against the rank.

Every method returns the singular values of W T too (`Factorization.singular_values`): the per-rank
error curve that energy= and the rank allocation read (`discarded_energy`). The factors are balanced,
U = P sqrt(s), V = sqrt(s) Q^T T^-1, so that both have similar ranges (they may be quantized).

allocate_ranks chooses every layer's rank from a global parameter budget on those curves (greedy on the
largest error drop per parameter; the curves are convex, so greedy is optimal up to the step size); a
layer whose rank would cost as many parameters as the dense weight (r (N + K) >= N K) stays dense.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch

METHODS = ("svd", "asvd", "svd-llm")
ASVD_ALPHA = 0.5  # the exponent of ASVD's activation scale (the paper's default)
SVD_LLM_DAMP = 1e-4  # damping of the Gram matrix, as a fraction of its mean diagonal (keeps Cholesky alive)


class Factorization(NamedTuple):
    up: torch.Tensor  # U, float32 [N, r]
    down: torch.Tensor  # V, float32 [r, K]
    singular_values: torch.Tensor  # float32 [min(N, K)]: the whole spectrum of W T, descending


def _check_weight(fn: str, w) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.dtype.is_floating_point or 0 in w.shape:
        desc = f"{w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{fn}: weight must be a non-empty 2-D float tensor [N, K], got {desc}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{fn}: weight holds NaN or Inf")


def check_rank(fn: str, rank, n: int, k: int) -> int:
    """`rank` as an int in [1, min(N, K)] (ValueError otherwise, naming the bounds)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(n, k):
        raise ValueError(f"{fn}: rank must be an int in [1, min(N, K)] = [1, {min(n, k)}] for a weight [{n}, {k}], "
                         f"got {rank!r}")
    return rank


def saves_parameters(rank: int, n: int, k: int) -> bool:
    """Whether U [N, r] and V [r, K] hold fewer values than W [N, K] (and so take fewer FLOPs)."""
    return rank * (n + k) < n * k


def break_even_rank(n: int, k: int) -> int:
    """The largest rank that still saves parameters (0 if none does)."""
    return (n * k - 1) // (n + k)


def _split(p: torch.Tensor, s: torch.Tensor, qt: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return p[:, :rank] * root, root[:, None] * qt[:rank]


def truncated_svd(w: torch.Tensor, rank: int) -> Factorization:
    """The best rank-`rank` factors of w [N, K] in the Frobenius norm: ||w - U V||_F^2 is the sum of the
    discarded singular values squared."""
    fn = "truncated_svd"
    _check_weight(fn, w)
    check_rank(fn, rank, *w.shape)
    p, s, qt = torch.linalg.svd(w.detach().double(), full_matrices=False)
    up, down = _split(p, s, qt, rank)
    return Factorization(up.float(), down.float(), s.float())


def asvd_scale(mean_abs: torch.Tensor, alpha: float = ASVD_ALPHA) -> torch.Tensor:
    """ASVD's per-input-feature scale mean|x_j| ^ alpha, float64 [K]; features never active (or far below
    the others) get a floor of 1e-6 x the largest scale so that the scaling stays invertible."""
    if not isinstance(mean_abs, torch.Tensor) or mean_abs.dim() != 1 or not bool(torch.isfinite(mean_abs).all()) \
            or bool((mean_abs < 0).any()):
        raise ValueError("asvd_scale: mean_abs must be a finite non-negative 1-D tensor [K] (InputNormCollector.mean_abs())")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 2:
        raise ValueError(f"asvd_scale: alpha must be in (0, 2], got {alpha!r}")
    scale = mean_abs.double().pow(alpha)
    top = float(scale.max()) if scale.numel() else 0.0
    return scale.clamp(min=1e-6 * top if top > 0 else 1.0)


def asvd(w: torch.Tensor, mean_abs: torch.Tensor, rank: int, alpha: float = ASVD_ALPHA) -> Factorization:
    """ASVD: SVD of W diag(t) with t = mean|x| ^ alpha (asvd_scale), truncated, V unscaled by 1/t."""
    fn = "asvd"
    _check_weight(fn, w)
    check_rank(fn, rank, *w.shape)
    if mean_abs.shape != (w.shape[1],):
        raise ValueError(f"{fn}: mean_abs must have shape ({w.shape[1]},) (one per input feature), got {tuple(mean_abs.shape)}")
    t = asvd_scale(mean_abs.to(w.device), alpha)
    p, s, qt = torch.linalg.svd(w.detach().double() * t, full_matrices=False)
    up, down = _split(p, s, qt, rank)
    return Factorization(up.float(), (down / t).float(), s.float())


def whitening(gram: torch.Tensor, damp: float = SVD_LLM_DAMP) -> torch.Tensor:
    """The lower Cholesky factor S (float64 [K, K]) of gram + damp * mean(diag) I, S S^T = that matrix;
    the damping is raised 10x (up to 6 times) while the matrix is not numerically positive definite."""
    if not isinstance(gram, torch.Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1] \
            or not bool(torch.isfinite(gram).all()):
        raise ValueError("whitening: gram must be a finite square matrix [K, K] (the input Gram matrix X^T X)")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not 0 <= damp < 1:
        raise ValueError(f"whitening: damp must be in [0, 1), got {damp!r}")
    g = gram.double()
    g = (g + g.T) / 2
    mean_diag = float(torch.diagonal(g).clamp(min=0).mean())
    mean_diag = mean_diag if mean_diag > 0 else 1.0
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for attempt in range(7):
        factor, info = torch.linalg.cholesky_ex(g + eye * (damp * 10 ** attempt * mean_diag if damp or attempt else 0))
        if int(info) == 0:
            return factor
        damp = damp or 1e-8
    raise ValueError("whitening: the Gram matrix is not positive definite even with damping; calibration inputs broken?")


def svd_llm(w: torch.Tensor, gram: torch.Tensor, rank: int, damp: float = SVD_LLM_DAMP) -> Factorization:
    """SVD-LLM: SVD of W S (S: whitening(gram)), truncated; V = (r rows of Q^T) S^-1. The discarded
    singular values squared equal ||X (W - U V)^T||_F^2 when gram = X^T X and damp = 0."""
    fn = "svd_llm"
    _check_weight(fn, w)
    check_rank(fn, rank, *w.shape)
    if gram.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"{fn}: gram must have shape ({w.shape[1]}, {w.shape[1]}), got {tuple(gram.shape)}")
    s_factor = whitening(gram.to(w.device), damp)
    p, s, qt = torch.linalg.svd(w.detach().double() @ s_factor, full_matrices=False)
    up, down = _split(p, s, qt, rank)
    # V = down S^-1, i.e. V S = down: a triangular solve from the right
    v = torch.linalg.solve_triangular(s_factor, down, upper=False, left=False)
    return Factorization(up.float(), v.float(), s.float())


def factorize(w: torch.Tensor, rank: int, method: str = "svd", mean_abs: Optional[torch.Tensor] = None,
              gram: Optional[torch.Tensor] = None, alpha: float = ASVD_ALPHA, damp: float = SVD_LLM_DAMP) -> Factorization:
    """The factors of `method` ("svd", "asvd" with mean_abs, "svd-llm" with gram)."""
    if method == "svd":
        return truncated_svd(w, rank)
    if method == "asvd":
        if mean_abs is None:
            raise ValueError("factorize: method='asvd' needs mean_abs (per input feature mean |x|, InputNormCollector)")
        return asvd(w, mean_abs, rank, alpha)
    if method == "svd-llm":
        if gram is None:
            raise ValueError("factorize: method='svd-llm' needs gram (the input Gram matrix, HessianCollector)")
        return svd_llm(w, gram, rank, damp)
    raise ValueError(f"factorize: method must be one of {METHODS}, got {method!r}")


def spectrum(w: torch.Tensor, method: str = "svd", mean_abs=None, gram=None, alpha: float = ASVD_ALPHA,
             damp: float = SVD_LLM_DAMP) -> torch.Tensor:
    """The singular values (float32, descending) of W T for `method`: the error curve, without the factors."""
    _check_weight("spectrum", w)
    scaled = w.detach().double()
    if method == "asvd":
        scaled = scaled * asvd_scale(mean_abs.to(w.device), alpha)
    elif method == "svd-llm":
        scaled = scaled @ whitening(gram.to(w.device), damp)
    elif method != "svd":
        raise ValueError(f"spectrum: method must be one of {METHODS}, got {method!r}")
    return torch.linalg.svdvals(scaled).float()


def discarded_energy(singular_values: torch.Tensor) -> torch.Tensor:
    """float64 [min(N, K) + 1]: entry r is the fraction of sum s_i^2 lost by keeping the first r (1.0 at
    r = 0, 0.0 at full rank); the relative output error of a truncation at rank r."""
    sq = singular_values.double().square()
    total = float(sq.sum())
    tail = torch.cat([sq.flip(0).cumsum(0).flip(0), sq.new_zeros(1)])
    return tail / total if total > 0 else torch.zeros_like(tail)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping at least `energy` (in (0, 1]) of sum s_i^2."""
    lost = discarded_energy(singular_values)
    ok = (lost <= 1 - energy + 1e-12).nonzero()
    return max(1, int(ok[0]))


def rank_for_params(n: int, k: int, params: float) -> int:
    """The largest rank whose factors hold at most `params` x N K values (at least 1)."""
    return max(1, min(min(n, k), int(params * n * k // (n + k))))


def allocate_ranks(curves: Sequence[torch.Tensor], shapes: Sequence[tuple[int, int]], params: float,
                   step: Optional[int] = None) -> list[Optional[int]]:
    """Per layer, the rank (None: stays dense) that minimizes the sum of the layers' relative errors
    (curves[i] = discarded_energy of layer i) while the layers hold at most `params` x their dense
    parameter count. Greedy from rank `step` everywhere: repeatedly give `step` more rank to the layer
    with the largest error drop per added parameter; a layer whose rank reaches the break-even point
    costs its dense N K and loses nothing. step: rank granularity (default ~ min(N, K) / 256, >= 1).
    ValueError when even rank `step` everywhere exceeds the budget (naming the smallest reachable)."""
    import heapq

    if not isinstance(params, (int, float)) or isinstance(params, bool) or not 0 < params <= 1:
        raise ValueError(f"allocate_ranks: params must be in (0, 1], got {params!r}")
    if len(curves) != len(shapes):
        raise ValueError(f"allocate_ranks: {len(curves)} curves for {len(shapes)} shapes")
    dense_total = sum(n * k for n, k in shapes)
    budget = params * dense_total
    steps = [step or max(1, min(n, k) // 256) for n, k in shapes]

    def cost(i: int, r: int) -> int:
        n, k = shapes[i]
        return n * k if r > break_even_rank(n, k) else r * (n + k)

    def error(i: int, r: int) -> float:
        return 0.0 if r > break_even_rank(*shapes[i]) else float(curves[i][min(r, len(curves[i]) - 1)])

    ranks = list(steps)
    spent = sum(cost(i, r) for i, r in enumerate(ranks))
    if spent > budget:
        raise ValueError(f"allocate_ranks: params={params:g} cannot be met: the smallest rank everywhere already keeps "
                         f"{spent / dense_total:.4f} of the parameters (the closest reachable budget)")

    def candidate(i: int):
        r = ranks[i]
        if r > break_even_rank(*shapes[i]):
            return None  # dense already
        nxt = r + steps[i]
        extra = cost(i, nxt) - cost(i, r)
        gain = error(i, r) - error(i, nxt)
        return (-gain / max(extra, 1), i, nxt, extra)

    heap = [c for c in (candidate(i) for i in range(len(shapes))) if c is not None]
    heapq.heapify(heap)
    while heap:
        _, i, nxt, extra = heapq.heappop(heap)
        if spent + extra > budget:
            continue  # this layer's next step does not fit; smaller steps elsewhere may
        ranks[i], spent = nxt, spent + extra
        c = candidate(i)
        if c is not None:
            heapq.heappush(heap, c)
    return [None if r > break_even_rank(*shapes[i]) else r for i, r in enumerate(ranks)]


def kept_fraction(rank: Optional[int], n: int, k: int) -> float:
    """Parameters of the factors over those of the dense weight (1.0 for a dense layer, rank None)."""
    return 1.0 if rank is None else rank * (n + k) / (n * k)


def ideal_speedup(rank: int, n: int, k: int) -> float:
    """N K / (r (N + K)): FLOPs (and weight bytes) of the dense layer over the factors'."""
    return n * k / (rank * (n + k)) if rank else math.inf
