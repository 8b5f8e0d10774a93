"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): quantize the columns of W [N, K] one at a time and push each column's rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output
error, H = 2/n X^T X over calibration inputs X [n, K]. gptq_quantize_int4 outputs the canonical int4
format of `slimkernels.quant.int4` (unpacked codes, scales, zeros) and gptq_quantize_codebook the
codes of a given codebook, so GPTQ weights run on the same kernels as round-to-nearest ones. Both
share one column loop (_gptq_columns); only the per-column quantizer differs.

Implementation notes (algorithm 1 of the paper):
- The inverse Hessian enters through the upper Cholesky factor U of H^-1 (computed in float64),
  whose row i holds the update weights of column i once columns < i are fixed.
- Columns are processed in blocks: inside a block errors are applied column by column, to the rest
  of the matrix once per block with one matmul ("lazy batch updates").
- Block boundaries are aligned with group boundaries, so that when a group's first column comes up
  the whole group has received every update so far and its RTN parameters are taken from the
  current, error-updated weights (the paper's reference code reads partly stale columns there).
- act_order=True quantizes columns in order of decreasing diag(H) with "static groups": every group's
  parameters come from the original W up front, so groups stay contiguous in the original column
  order (the canonical format) whatever the processing order.
- Dead inputs (diag(H) == 0, a feature that is 0 on every calibration row) get H[i, i] = 1, which
  decouples the column: it is rounded to nearest with its group's parameters, nothing else is pushed
  onto it and its error is pushed nowhere. We keep such weights by default instead of zeroing them as
  the paper's code does: zeroing does not change the calibration output at all, and keeps the group's
  range a little tighter only if the dead weight was its extreme, but it deletes a feature the model
  may well use on inputs outside a (small) calibration set. zero_dead=True zeroes them instead.
- Codebooks stay fixed during GPTQ (fitted to the float W beforehand): a column is "quantized" to the
  nearest entries of its rows' codebooks, which is all the column loop needs.
"""
from __future__ import annotations

import torch

from .int4 import INT4_MAX_CODE, check_weight, resolve_group_size, rtn_group_params
from .lowbit import INT4_ZERO_SYMMETRIC

_DAMP_RETRIES = 4  # after the requested dampening fails, retry with 10x, 100x, ... more


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


def _inverse_hessian_factor(h: torch.Tensor, damp: float, fn: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1 in float32, raising the dampening 10x
    at a time when H is not numerically positive definite."""
    h64 = h.to(torch.float64)
    diag = torch.diagonal(h64)
    live = diag > 0
    mean_diag = float(diag[live].mean()) if bool(live.any()) else 1.0  # dead inputs' 1s must not skew it
    tried = []
    for _ in range(_DAMP_RETRIES + 1):
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


def _check_gptq_args(fn, w, H, block_size, damp):
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


def _blocks(k: int, g: int, block_size: int) -> list[tuple[int, int]]:
    """[start, end) column blocks in which every group either lies whole or starts at the block start."""
    if g <= block_size:
        step = block_size // g * g
        return [(i, min(i + step, k)) for i in range(0, k, step)]
    return [(b, min(b + block_size, s + g)) for s in range(0, k, g) for b in range(s, s + g, block_size)]


def _prepare(w: torch.Tensor, H: torch.Tensor, zero_dead: bool):
    """float32 copies of w and H with dead inputs (diag H == 0) decoupled; returns (W, h, dead)."""
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


def _act_order(h: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Columns by decreasing diag(H), dead ones last."""
    return torch.argsort(torch.where(dead, -1.0, torch.diagonal(h)), descending=True, stable=True)


def _gptq_columns(W: torch.Tensor, U: torch.Tensor, blocks, quantize_column) -> torch.Tensor:
    """The column loop shared by every GPTQ format. W [N, K] float32 (updated in place), U the upper
    Cholesky factor of H^-1 in the same column order, blocks from _blocks. quantize_column(col, i, W1)
    -> (codes [N], dequantized values [N]) for column `col`, which is column i of the block's working
    copy W1 (its columns >= i hold every update so far; W's columns past the block do too).
    Returns the codes, float32 [N, K]."""
    n, k = W.shape
    Q = torch.empty(n, k, device=W.device, dtype=torch.float32)
    for i1, i2 in blocks:
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err = torch.empty_like(W1)
        for i in range(i2 - i1):
            codes, values = quantize_column(i1 + i, i, W1)
            Q[:, i1 + i] = codes
            e = (W1[:, i] - values) / U1[i, i]
            W1[:, i:] -= e[:, None] * U1[i, i:][None, :]
            err[:, i] = e
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q


def gptq_quantize_int4(w: torch.Tensor, H: torch.Tensor, group_size: int, symmetric: bool, block_size: int = 128,
                       damp: float = 0.01, act_order: bool = False, zero_dead: bool = False):
    """GPTQ int4 of w [N, K] given the input Hessian H [K, K] (see HessianAccumulator).

    Returns (codes uint8 [N, K], scales float32 [N, G], zeros uint8 [N, G] or None (symmetric)), the
    same format as quantize_int4_rtn. group_size -1 or K means per channel. damp is relative to the
    mean of diag(H) (raised 10x at a time if H is still not positive definite). Runs in float32 on
    w's device (H is moved there); the Cholesky factorizations run in float64.
    """
    fn = "gptq_quantize_int4"
    _check_gptq_args(fn, w, H, block_size, damp)
    n, k = w.shape
    g = resolve_group_size(fn, k, group_size)
    W, h, dead = _prepare(w, H, zero_dead)

    group_of = torch.arange(k, device=W.device) // g
    if act_order:
        # Static groups: parameters of the original (contiguous) groups, then a column permutation.
        s_grp, z_grp = rtn_group_params(W.reshape(n, k // g, g), symmetric)
        perm = _act_order(h, dead)
        W, h = W[:, perm], h[perm][:, perm]
        col_scale = s_grp[:, group_of[perm]]
        col_zero = None if z_grp is None else z_grp[:, group_of[perm]]
    else:
        perm = None
        s_grp = torch.empty(n, k // g, device=W.device)
        z_grp = None if symmetric else torch.empty(n, k // g, device=W.device)
    U = _inverse_hessian_factor(h, float(damp), fn)

    def quantize_column(col, i, W1):
        if act_order:
            s, z = col_scale[:, col], (INT4_ZERO_SYMMETRIC if col_zero is None else col_zero[:, col])
        else:
            gi = col // g
            if col % g == 0:
                # W1 holds every update so far for a group inside the block; a group longer than the
                # block starts at the block start, where W is current.
                cur = W1[:, i:i + g] if i + g <= W1.shape[1] else W[:, col:col + g]
                s_new, z_new = rtn_group_params(cur, symmetric)
                s_grp[:, gi] = s_new
                if z_grp is not None:
                    z_grp[:, gi] = z_new
            s = s_grp[:, gi]
            z = INT4_ZERO_SYMMETRIC if z_grp is None else z_grp[:, gi]
        q = (torch.round(W1[:, i] / s) + z).clamp_(0, INT4_MAX_CODE)
        return q, (q - z) * s

    Q = _gptq_columns(W, U, _blocks(k, g, block_size), quantize_column)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.uint8), s_grp, None if z_grp is None else z_grp.to(torch.uint8)


def gptq_quantize_codebook(w: torch.Tensor, H: torch.Tensor, codebook: torch.Tensor, block_size: int = 128,
                           damp: float = 0.01, act_order: bool = False, zero_dead: bool = False) -> torch.Tensor:
    """GPTQ for a fixed codebook [1 or N, E] (fit it first, e.g. with codebook.fit_codebook on w): each
    column goes to its nearest entries, and its error is pushed onto the columns not yet assigned.
    Returns codes uint8 [N, K] for that codebook. Other arguments as in gptq_quantize_int4."""
    from .codebook import NearestEntry

    fn = "gptq_quantize_codebook"
    _check_gptq_args(fn, w, H, block_size, damp)
    n, k = w.shape
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 2 or codebook.shape[0] not in (1, n) \
            or not 1 <= codebook.shape[1] <= 256 or not codebook.dtype.is_floating_point:
        desc = f"{codebook.dtype} [{', '.join(map(str, codebook.shape))}]" if isinstance(codebook, torch.Tensor) \
            else type(codebook).__name__
        raise ValueError(f"{fn}: codebook must be a float [1, E] or [{n}, E] tensor with 1 <= E <= 256, got {desc}")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError(f"{fn}: the codebook holds NaN or Inf values")
    W, h, dead = _prepare(w, H, zero_dead)
    perm = _act_order(h, dead) if act_order else None
    if perm is not None:
        W, h = W[:, perm], h[perm][:, perm]
    U = _inverse_hessian_factor(h, float(damp), fn)
    nearest = NearestEntry(codebook.to(W.device))

    def quantize_column(col, i, W1):
        codes, values = nearest(W1[:, i:i + 1])
        return codes[:, 0].to(torch.float32), values[:, 0]

    Q = _gptq_columns(W, U, _blocks(k, k, block_size), quantize_column)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.uint8)
