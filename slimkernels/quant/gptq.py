"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): quantize the columns of W [N, K] one at a time and push each column's rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output
error, H = 2/n X^T X over calibration inputs X [n, K]. gptq_quantize_int4 outputs the canonical int4
format of `slimkernels.quant.int4` (unpacked codes, scales, zeros) and gptq_quantize_codebook the
codes of a given codebook, so GPTQ weights run on the same kernels as round-to-nearest ones. Both
share one column loop (quant/hessian.py: obs_columns, with the Hessian, its damped inverse factor and
the dead-input handling SparseGPT shares too); only the per-column quantizer, here, differs.

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
- `damp` is used as given. quantize_ raises it for layers whose calibration inputs span too few
  directions (the rank guard: quant.hessian.thin_calibration_damp, applied in compress/quantize.py).
- Codebooks stay fixed during GPTQ (fitted to the float W beforehand): a column is "quantized" to the
  nearest entries of its rows' codebooks, which is all the column loop needs.
"""
from __future__ import annotations

import torch

from .hessian import (
    DAMP_RETRIES, HessianAccumulator, act_order_permutation, check_obs_args, column_blocks, inverse_hessian_factor,
    layer_output_error, obs_columns, prepare_obs,
)
from .int4 import INT4_MAX_CODE, resolve_group_size, rtn_group_params
from .lowbit import INT4_ZERO_SYMMETRIC

# The shared OBS helpers moved to quant/hessian.py; these names stay importable from here for one release.
_DAMP_RETRIES = DAMP_RETRIES
_inverse_hessian_factor = inverse_hessian_factor
_check_gptq_args = check_obs_args
_blocks = column_blocks
_prepare = prepare_obs
_act_order = act_order_permutation
_gptq_columns = obs_columns

__all__ = ["gptq_quantize_int4", "gptq_quantize_codebook", "HessianAccumulator", "layer_output_error"]


def gptq_quantize_int4(w: torch.Tensor, H: torch.Tensor, group_size: int, symmetric: bool, block_size: int = 128,
                       damp: float = 0.01, act_order: bool = False, zero_dead: bool = False):
    """GPTQ int4 of w [N, K] given the input Hessian H [K, K] (see HessianAccumulator).

    Returns (codes uint8 [N, K], scales float32 [N, G], zeros uint8 [N, G] or None (symmetric)), the
    same format as quantize_int4_rtn. group_size -1 or K means per channel. damp is relative to the
    mean of diag(H) (raised 10x at a time if H is still not positive definite). Runs in float32 on
    w's device (H is moved there); the Cholesky factorizations run in float64.
    """
    fn = "gptq_quantize_int4"
    check_obs_args(fn, w, H, block_size, damp)
    n, k = w.shape
    g = resolve_group_size(fn, k, group_size)
    W, h, dead = prepare_obs(w, H, zero_dead)

    group_of = torch.arange(k, device=W.device) // g
    if act_order:
        # Static groups: parameters of the original (contiguous) groups, then a column permutation.
        s_grp, z_grp = rtn_group_params(W.reshape(n, k // g, g), symmetric)
        perm = act_order_permutation(h, dead)
        W, h = W[:, perm], h[perm][:, perm]
        col_scale = s_grp[:, group_of[perm]]
        col_zero = None if z_grp is None else z_grp[:, group_of[perm]]
    else:
        perm = None
        s_grp = torch.empty(n, k // g, device=W.device)
        z_grp = None if symmetric else torch.empty(n, k // g, device=W.device)
    U = inverse_hessian_factor(h, float(damp), fn)

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

    Q = obs_columns(W, U, column_blocks(k, g, block_size), quantize_column)
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
    check_obs_args(fn, w, H, block_size, damp)
    n, k = w.shape
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 2 or codebook.shape[0] not in (1, n) \
            or not 1 <= codebook.shape[1] <= 256 or not codebook.dtype.is_floating_point:
        desc = f"{codebook.dtype} [{', '.join(map(str, codebook.shape))}]" if isinstance(codebook, torch.Tensor) \
            else type(codebook).__name__
        raise ValueError(f"{fn}: codebook must be a float [1, E] or [{n}, E] tensor with 1 <= E <= 256, got {desc}")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError(f"{fn}: the codebook holds NaN or Inf values")
    W, h, dead = prepare_obs(w, H, zero_dead)
    perm = act_order_permutation(h, dead) if act_order else None
    if perm is not None:
        W, h = W[:, perm], h[perm][:, perm]
    U = inverse_hessian_factor(h, float(damp), fn)
    nearest = NearestEntry(codebook.to(W.device))

    def quantize_column(col, i, W1):
        codes, values = nearest(W1[:, i:i + 1])
        return codes[:, 0].to(torch.float32), values[:, 0]

    Q = obs_columns(W, U, column_blocks(k, k, block_size), quantize_column)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.uint8)
