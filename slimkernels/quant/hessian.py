"""The input Hessian of a linear layer and the Optimal Brain Surgeon (OBS) machinery built on it, shared
by every method that fixes the columns of a weight W [N, K] one at a time and pushes each column's error
onto the columns not yet fixed (GPTQ in quant/gptq.py; SparseGPT prunes with the same loop).

The objective is the layer's squared output error over calibration inputs X [n, K]:
  ||X W^T - X Wq^T||^2 * 2/n = trace((W - Wq) H (W - Wq)^T),   H = 2/n X^T X.

What lives here:
- HessianAccumulator: H from batches of inputs (a forward hook adds them).
- DistinctRows: how many rows, and how many distinct rows, the inputs held (the calibration's
  sample size; exact duplicates, e.g. a sentence repeated, count once).
- hessian_rank / thin_calibration_damp: the rank guard. Calibration inputs that span fewer directions
  than the layer has inputs (rank(H) < K: too few or too repetitive rows) leave GPTQ free to push
  error into the directions they never visit, so it can end worse than round-to-nearest on other
  inputs. The guard raises the dampening of such a layer to 1 - rank/K, which moves GPTQ toward
  round-to-nearest as the data thins (measured on all-MiniLM-L6-v2, see thin_calibration_damp).
- layer_output_error: the objective above for a candidate Wq.
- check_obs_args: the argument checks every OBS method shares (finite float W, a [K, K] H with no
  negative diagonal, block_size, damp).
- prepare_obs: float32 working copies with dead inputs (diag(H) == 0) decoupled.
- act_order_permutation: columns by decreasing diag(H), dead ones last.
- inverse_hessian_factor: the upper Cholesky factor U of (H + damp * mean(diag H) I)^-1, computed in
  float64 and retried with 10x more dampening (up to DAMP_RETRIES times) when H is not numerically
  positive definite. Row i of U holds the update weights of column i once columns < i are fixed.
- column_blocks: column blocks in which every group lies whole or starts at the block start.
- obs_columns: the blocked column loop (algorithm 1 of the GPTQ paper, with "lazy batch updates":
  inside a block errors are applied column by column, to the rest of the matrix once per block with
  one matmul). What a column becomes is the caller's `fix_column` callback: nearest int4 code (GPTQ),
  nearest codebook entry (codebook GPTQ), 0 or the weight itself (SparseGPT's mask).

Dead inputs (a feature that is 0 on every calibration row) get H[i, i] = 1, which decouples the
column: nothing is pushed onto it and its error is pushed nowhere.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .int4 import check_weight

DAMP_RETRIES = 4  # after the requested dampening fails, retry with 10x, 100x, ... more
RANK_CHECK_ROWS = 4  # hessian_rank decomposes H only when the distinct rows number fewer than this x K
CALIBRATION_TOKENS_PER_INPUT = 10  # the advice: at least this x K calibration tokens (rows), varied


class HessianAccumulator:
    """Running H = 2/n sum_rows x^T x of a linear layer's inputs, over every row seen so far.

    Use it from a forward pre-hook: `acc.add(inputs[0])`. Sums accumulate in `dtype` (float32 by
    default, as GPTQ implementations do; float64 for very long calibration runs). The device is the
    one given, or that of the first batch added.
    """

    def __init__(self, in_features: int, device=None, dtype: torch.dtype = torch.float32):
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features <= 0:
            raise ValueError(f"HessianAccumulator: in_features must be a positive int, got {in_features!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HessianAccumulator: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.in_features = in_features
        self.count = 0
        self._dtype = dtype
        self._sum = None if device is None else torch.zeros(in_features, in_features, device=device, dtype=dtype)

    def add(self, x: torch.Tensor) -> None:
        """Add the rows of x [..., K] (any float dtype, any leading dims)."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            desc = f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"HessianAccumulator.add: expected a floating-point tensor, got {desc}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"HessianAccumulator.add: expected inputs [..., {self.in_features}], got shape {tuple(x.shape)}")
        if self._sum is None:
            self._sum = torch.zeros(self.in_features, self.in_features, device=x.device, dtype=self._dtype)
        rows = x.detach().reshape(-1, self.in_features).to(device=self._sum.device, dtype=self._dtype)
        self._sum.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """float32 [K, K] H = 2/n X^T X. ValueError before any row was added or if the sums overflowed."""
        if self.count == 0:
            raise ValueError("HessianAccumulator.hessian: no calibration rows were added (did the layer run?)")
        h = (self._sum * (2.0 / self.count)).to(torch.float32)
        if not bool(torch.isfinite(h).all()):
            raise ValueError("HessianAccumulator.hessian: the Hessian is not finite (inputs with NaN/Inf or "
                             "overflowing float32 sums; accumulate in dtype=torch.float64)")
        return h


class DistinctRows:
    """Counts the rows of x [..., K] added (`rows`) and the distinct ones among them (`distinct`;
    exact duplicates count once). Rows are hashed exactly (their float32 bits, -0.0 as 0.0, mixed by
    fixed random odd int64 multipliers, summed mod 2**64), so the count does not depend on batching;
    only `limit` distinct hashes are kept (then `saturated` is True and `distinct` == limit: at least
    that many). A new pair of rows is miscounted as one with probability ~2**-64."""

    def __init__(self, in_features: int, limit: int | None = None, chunk: int = 1024):
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features <= 0:
            raise ValueError(f"DistinctRows: in_features must be a positive int, got {in_features!r}")
        self.in_features, self.limit, self.chunk = in_features, limit, chunk
        self.rows = 0
        self.saturated = False
        self._keys: torch.Tensor | None = None
        self._mix: torch.Tensor | None = None

    @property
    def distinct(self) -> int:
        return 0 if self._keys is None else int(self._keys.numel())

    def add(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"DistinctRows.add: expected inputs [..., {self.in_features}], got shape {tuple(x.shape)}")
        rows = x.detach().reshape(-1, self.in_features)
        self.rows += rows.shape[0]
        if self.saturated or rows.shape[0] == 0:
            return
        if self._mix is None:
            gen = torch.Generator().manual_seed(0x51D1)
            self._mix = torch.randint(-2**62, 2**62, (self.in_features,), generator=gen, dtype=torch.int64) * 2 + 1
        mix = self._mix.to(rows.device)
        keys = [self._keys] if self._keys is not None else []
        for i in range(0, rows.shape[0], self.chunk):
            bits = (rows[i:i + self.chunk].to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
            keys.append(torch.unique((bits * mix).sum(1)))  # integer arithmetic: wraps, order-free
        self._keys = torch.unique(torch.cat([k.to(keys[-1].device) for k in keys]))
        if self.limit is not None and self._keys.numel() >= self.limit:
            self._keys, self.saturated = self._keys[: self.limit], True


def hessian_rank(H: torch.Tensor, distinct_rows: int | None = None) -> tuple[int, int]:
    """(rank, K_live) of an input Hessian H [K, K]: K_live counts the inputs that are not dead
    (diag(H) > 0; GPTQ decouples dead ones, so they risk nothing), rank is the numerical rank of H on
    them: eigenvalues above sqrt(K_live) * eps(float32) * the largest, never more than `distinct_rows`
    when that is given. The tolerance sits well above the rounding noise of a float32-accumulated H
    (measured <= 0.5 eps * the largest eigenvalue where H is exactly singular, K = 128..1536) and well
    below what ill-conditioned but well-sampled inputs give (matrix_rank's K * eps is not: it called
    inputs of condition number 6e5 from 2K rows rank-deficient). The eigenvalue decomposition
    (float64, the time of ~7 Cholesky factorizations) runs only when `distinct_rows` is None or below
    RANK_CHECK_ROWS * K_live; with more distinct rows H is taken as full rank (so a well-calibrated
    pass pays nothing for the guard, and near-duplicate rows beyond that count go undetected)."""
    diag = torch.diagonal(H)
    live = diag > 0
    k_live = int(live.sum())
    if k_live == 0:
        return 0, 0
    if distinct_rows is not None and distinct_rows >= RANK_CHECK_ROWS * k_live:
        return k_live, k_live
    h = H[live][:, live].to(torch.float64)
    ev = torch.linalg.eigvalsh(h)
    tol = float(ev[-1]) * k_live ** 0.5 * torch.finfo(torch.float32).eps
    rank = int((ev > tol).sum()) if float(ev[-1]) > 0 else 0
    return (rank if distinct_rows is None else min(rank, distinct_rows)), k_live


def thin_calibration_damp(damp: float, rank: int, k: int) -> float:
    """The dampening for a layer whose calibration inputs have rank `rank` over `k` live inputs:
    max(damp, 1 - rank/k), relative to mean(diag H) like `damp`. Unchanged (bit for bit) while the
    inputs span all but a fraction `damp` of the directions (a LayerNorm's constraint, a few collinear
    features); toward 1 as they span fewer, which leaves GPTQ's updates where the data is strong
    (eigenvalues of H well above mean(diag H)) and keeps it near round-to-nearest where the data says
    nothing. Measured on all-MiniLM-L6-v2, int4 g128 asym, damp 0.01, min / mean cosine to the float
    embeddings of 32 evaluation sentences:
      32 near-identical calibration sentences (418 tokens; ranks 57..294 of K=384/1536): RTN
      0.952 / 0.962, GPTQ unguarded 0.952 / 0.970, guarded 0.967 / 0.975;
      16 varied sentences (ranks ~177..294), 16 evaluation sentences: RTN 0.952 / 0.964, unguarded
      0.955 / 0.972, guarded 0.975 / 0.981.
    K / rank - 1 was tried too (min 0.962 and 0.975, ranks at matrix_rank's tolerance). On synthetic
    K=64 inputs of rank 8 (8 rows repeated), held out from the same population: unguarded 1.2-1.4x
    RTN's output error, guarded 0.84-0.92x."""
    if k <= 0 or rank >= k:
        return damp
    return max(damp, 1.0 - rank / k)


def layer_output_error(w_float: torch.Tensor, w_quant: torch.Tensor, H: torch.Tensor) -> float:
    """trace((W - Wq) H (W - Wq)^T): what GPTQ minimizes; with H = 2/n X^T X it is 2/n ||X W^T - X Wq^T||^2."""
    if w_float.shape != w_quant.shape or w_float.dim() != 2:
        raise ValueError(f"layer_output_error: weights must be two [N, K] tensors of one shape, got "
                         f"{tuple(w_float.shape)} and {tuple(w_quant.shape)}")
    k = w_float.shape[1]
    if tuple(H.shape) != (k, k):
        raise ValueError(f"layer_output_error: H must be [{k}, {k}] for K={k}, got {tuple(H.shape)}")
    d = w_float.to(torch.float32) - w_quant.to(device=w_float.device, dtype=torch.float32)
    return float(((d @ H.to(device=d.device, dtype=torch.float32)) * d).sum())


def inverse_hessian_factor(h: torch.Tensor, damp: float, fn: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1 in float32, raising the dampening 10x
    at a time when H is not numerically positive definite (ValueError naming `fn` when it never is)."""
    h64 = h.to(torch.float64)
    diag = torch.diagonal(h64)
    live = diag > 0
    mean_diag = float(diag[live].mean()) if bool(live.any()) else 1.0  # dead inputs' 1s must not skew it
    tried = []
    for _ in range(DAMP_RETRIES + 1):
        damped = h64 + torch.eye(h64.shape[0], dtype=h64.dtype, device=h64.device) * (damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper.to(torch.float32)
        tried.append(damp)
        damp = damp * 10 if damp > 0 else 0.01
    raise ValueError(
        f"{fn}: the Hessian is not positive definite even with dampening {tried} x mean(diag H); "
        "check the calibration inputs (a Hessian with NaN-free but degenerate data needs a larger damp=)"
    )


def check_obs_args(fn: str, w: torch.Tensor, H: torch.Tensor, block_size, damp) -> None:
    """The checks every OBS method makes: a finite float [N, K] weight, a finite float [K, K] H with
    no negative diagonal entry, a positive int block_size and a finite damp >= 0."""
    check_weight(fn, w)
    k = w.shape[1]
    if not isinstance(H, torch.Tensor) or not H.dtype.is_floating_point or tuple(H.shape) != (k, k):
        desc = f"{H.dtype} tensor of shape {tuple(H.shape)}" if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"{fn}: H must be a floating-point [{k}, {k}] tensor for a weight with "
                         f"K={k}, got {desc}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"{fn}: H holds NaN or Inf values")
    if bool((torch.diagonal(H) < 0).any()):
        raise ValueError(f"{fn}: H has negative diagonal entries; it must be a Hessian 2/n X^T X")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise ValueError(f"{fn}: block_size must be a positive int, got {block_size!r}")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not damp >= 0 or damp == float("inf"):
        raise ValueError(f"{fn}: damp must be a finite number >= 0, got {damp!r}")


def column_blocks(k: int, g: int, block_size: int) -> list[tuple[int, int]]:
    """[start, end) column blocks in which every group (of g columns) either lies whole or starts at the
    block start; g = k for methods without groups."""
    if g <= block_size:
        step = block_size // g * g
        return [(i, min(i + step, k)) for i in range(0, k, step)]
    return [(b, min(b + block_size, s + g)) for s in range(0, k, g) for b in range(s, s + g, block_size)]


def prepare_obs(w: torch.Tensor, H: torch.Tensor, zero_dead: bool):
    """float32 copies of w and H with dead inputs (diag H == 0) decoupled; returns (W, h, dead).
    zero_dead=True also zeroes the dead inputs' weights."""
    W = w.detach().to(torch.float32).clone()
    h = H.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = torch.diagonal(h) == 0
    # Decouple dead inputs (their rows/columns of H are 0 for a real X^T X; force it for any H).
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    if zero_dead:
        W[:, dead] = 0
    return W, h, dead


def act_order_permutation(h: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Columns by decreasing diag(H), dead ones last."""
    return torch.argsort(torch.where(dead, -1.0, torch.diagonal(h)), descending=True, stable=True)


FixColumn = Callable[[int, int, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def obs_columns(W: torch.Tensor, U: torch.Tensor, blocks: Sequence[tuple[int, int]], fix_column: FixColumn) -> torch.Tensor:
    """The column loop shared by every OBS method. W [N, K] float32 (updated in place), U the upper
    Cholesky factor of H^-1 in the same column order (inverse_hessian_factor), blocks from
    column_blocks. fix_column(col, i, W1) -> (codes [N], values [N]) for column `col`, which is column i
    of the block's working copy W1 (its columns >= i hold every update so far; W's columns past the
    block do too): `values` is what the column becomes, `codes` what the caller wants recorded for it.
    Returns the codes, float32 [N, K]."""
    n, k = W.shape
    Q = torch.empty(n, k, device=W.device, dtype=torch.float32)
    for i1, i2 in blocks:
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err = torch.empty_like(W1)
        for i in range(i2 - i1):
            codes, values = fix_column(i1 + i, i, W1)
            Q[:, i1 + i] = codes
            e = (W1[:, i] - values) / U1[i, i]
            W1[:, i:] -= e[:, None] * U1[i, i:][None, :]
            err[:, i] = e
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q
