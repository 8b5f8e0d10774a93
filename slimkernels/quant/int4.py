"""Round-to-nearest (RTN) int4 group-wise quantization of a weight [N, K] into the canonical format of
`slimkernels.quant.lowbit`: codes q in 0..15, one float32 scale (and, asymmetric, one uint8 zero
point) per group of `group_size` consecutive input features, w ~ (q - z) * s.

The functions return UNPACKED codes (uint8 [N, K]); `lowbit.pack_codes(codes, 4)` makes the qweight
the ops take. Pure torch, on whatever device w lives.

Choices (both keep the worst-case error of every element at scale / 2):
- Asymmetric: the range of a group is [min(w_min, 0), max(w_max, 0)], i.e. it always contains 0, so
  0 is exactly representable (q == z). Pruned or padded weights stay exactly 0, and the zero point
  round(-min / scale) then always lies in 0..15 without clamping. A group of weights of one sign
  loses a little range for that (the same convention as GPTQ's reference code).
- Symmetric (zero point fixed at 8, codes 0..15 hold -8..7): scale = max(-w_min / 8, w_max / 7), the
  smallest scale that keeps every weight of the group inside [-8 s, 7 s]. This uses code 0 (-8) when
  the negative side is the larger one, and is never coarser than the textbook absmax / 7.
- A group whose scale would be below the smallest normal float32 (all zeros, or only denormals) gets
  scale 1.0: never 0, NaN or Inf. Its weights dequantize to 0 (an error below 1.2e-38).
"""
from __future__ import annotations

import torch

from .lowbit import INT4_ZERO_SYMMETRIC

INT4_MAX_CODE = 15
_TINY = torch.finfo(torch.float32).tiny


def check_weight(fn: str, w: torch.Tensor) -> None:
    """A finite floating-point [N, K] weight (shared by every quantizer in slimkernels.quant)."""
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
        desc = f"{w.dtype} tensor" if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"{fn}: the weight must be a floating-point tensor, got {desc}")
    if w.dim() != 2:
        raise ValueError(f"{fn}: the weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{fn}: the weight holds NaN or Inf values; quantize finite weights only")


def resolve_group_size(fn: str, k: int, group_size: int) -> int:
    """The group size as a positive divisor of K: -1 or K mean one group per output channel."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or (group_size <= 0 and group_size != -1):
        raise ValueError(f"{fn}: group_size must be a positive int or -1 (per channel), got {group_size!r}")
    if k <= 0:
        raise ValueError(f"{fn}: the weight has K={k} input features; int4 groups need K >= 1")
    g = k if group_size == -1 else group_size
    if k % g != 0:
        raise ValueError(
            f"{fn}: group_size={g} does not divide K={k}; pick a group size that divides the number of input "
            "features (the int4 ops also need it to be a multiple of 32), or -1 / K for one group per channel"
        )
    return g


def rtn_group_params(groups: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[..., g] float32 groups -> (scales [...], zeros [...] as float32 integers, or None).

    The rules of the module docstring; GPTQ calls this on error-updated groups too."""
    lo = groups.amin(dim=-1).clamp(max=0)
    hi = groups.amax(dim=-1).clamp(min=0)
    if symmetric:
        scale = torch.maximum(-lo / 8, hi / 7)
    else:
        scale = hi / INT4_MAX_CODE - lo / INT4_MAX_CODE  # two divisions: hi - lo overflows near float32 max
    scale = torch.where(scale >= _TINY, scale, torch.ones_like(scale))
    if symmetric:
        return scale, None
    # -lo / scale lies in [0, 15] by construction; the clamp only absorbs rounding of the division.
    return scale, torch.round(-lo / scale).clamp(0, INT4_MAX_CODE)


def int4_params(w: torch.Tensor, group_size: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RTN parameters of w [N, K]: scales float32 [N, G] and zeros uint8 [N, G] (None if symmetric)."""
    check_weight("int4_params", w)
    n, k = w.shape
    g = resolve_group_size("int4_params", k, group_size)
    scales, zeros = rtn_group_params(w.to(torch.float32).reshape(n, k // g, g), symmetric)
    return scales, None if zeros is None else zeros.to(torch.uint8)


def _group_view(n: int, k: int, g: int, scales: torch.Tensor, zeros: torch.Tensor | None, fn: str):
    """Check scales/zeros against [N, K / g] and return them as float32 [N, G, 1] (zeros 8 if None)."""
    groups = k // g
    if scales.dim() != 2 or tuple(scales.shape) != (n, groups):
        raise ValueError(f"{fn}: scales must have shape {(n, groups)} for N={n}, K={k}, group_size={g}, "
                         f"got {tuple(scales.shape)}")
    if zeros is not None and tuple(zeros.shape) != (n, groups):
        raise ValueError(f"{fn}: zeros must have shape {(n, groups)} or be None, got {tuple(zeros.shape)}")
    s = scales.to(torch.float32)[..., None]
    z = torch.full_like(s, INT4_ZERO_SYMMETRIC) if zeros is None else zeros.to(torch.float32)[..., None]
    return s, z


def quantize_int4(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """w [N, K] -> uint8 codes [N, K]: clamp(round(w / s) + z, 0, 15) with each element's group's s, z."""
    check_weight("quantize_int4", w)
    n, k = w.shape
    g = resolve_group_size("quantize_int4", k, group_size)
    s, z = _group_view(n, k, g, scales, zeros, "quantize_int4")
    q = torch.round(w.to(torch.float32).reshape(n, k // g, g) / s) + z
    return q.clamp_(0, INT4_MAX_CODE).to(torch.uint8).reshape(n, k)


def quantize_int4_rtn(w: torch.Tensor, group_size: int, symmetric: bool):
    """RTN int4: w [N, K] -> (codes uint8 [N, K], scales float32 [N, G], zeros uint8 [N, G] or None)."""
    scales, zeros = int4_params(w, group_size, symmetric)
    return quantize_int4(w, scales, zeros, group_size), scales, zeros


def dequantize_int4_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                          group_size: int) -> torch.Tensor:
    """Unpacked codes [N, K] -> float32 [N, K], (q - z) * s evaluated in float32: the same values, bit
    for bit, as lowbit.dequantize_int4(pack_codes(codes, 4), scales, zeros, group_size, K)."""
    if codes.dim() != 2 or codes.dtype.is_floating_point:
        raise ValueError(f"dequantize_int4_codes: codes must be a 2-D integer tensor, got {codes.dtype} "
                         f"of shape {tuple(codes.shape)}")
    n, k = codes.shape
    g = resolve_group_size("dequantize_int4_codes", k, group_size)
    s, z = _group_view(n, k, g, scales, zeros, "dequantize_int4_codes")
    return ((codes.to(torch.float32).reshape(n, k // g, g) - z) * s).reshape(n, k)
