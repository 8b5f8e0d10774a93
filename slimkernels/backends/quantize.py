"""Implementations of the quantize family (per-row symmetric int8): reference, native CPU and CUDA,
Triton. Inputs arrive validated and non-empty (see backends/__init__.py)."""
import torch

from .. import _native
from . import register
from ._common import KIND, cpu_isa, cuda_stream, threads

ALL_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta")


def act_qmax(bits: int) -> int:
    """The largest |q| of `bits`-bit symmetric activations: 127 for 8, 63 for 7."""
    return (1 << (bits - 1)) - 1


@register("quantize_per_token_int8", "reference", ALL_DEVICES)
def quantize_rows_int8(x: torch.Tensor, qmax: int = 127):
    """x [M, K] -> (q int8 [M, K], scale float32 [M]). The spec:

    scale = absmax / qmax in float32; all-zero rows get scale 1 and q = 0; a row holding NaN or Inf
    gets scale NaN and q = 0, so the NaN reaches that row of any output built from it.
    q = clamp(round_half_even(x / scale), -qmax, qmax) with a true division: kernels match it bitwise.
    qmax is 127 (the op), or 63 for the 7-bit activations of int8_dynamic_linear(act_bits=7).
    """
    m, k = x.shape
    xf = x.float()
    if k == 0:
        return torch.empty((m, 0), dtype=torch.int8, device=x.device), torch.ones(m, device=x.device)
    amax = xf.abs().amax(dim=1)
    finite = torch.isfinite(amax)
    scale = torch.where(amax > 0, amax / float(qmax), torch.ones_like(amax))
    scale = torch.where(finite, scale, torch.full_like(amax, float("nan")))
    q = torch.round(xf / scale[:, None]).clamp_(-qmax, qmax)
    q = torch.where(finite[:, None], q, torch.zeros_like(q))
    return q.to(torch.int8), scale


@register("quantize_per_token_int8", "native", ("cpu",))
def quantize_rows_int8_cpu(x, qmax: int = 127):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m,), dtype=torch.float32)
    _native.require_cpu().quantize_per_token_int8(x.data_ptr(), k, m, k, KIND[x.dtype], q.data_ptr(), k,
                                                  scale.data_ptr(), threads(), cpu_isa(), qmax)
    return q, scale


@register("quantize_per_token_int8", "native", ("cuda",))
def quantize_rows_int8_cuda(x):
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        _native.require_cuda().quantize_per_token_int8(x.data_ptr(), k, m, k, KIND[x.dtype], q.data_ptr(), k,
                                                       scale.data_ptr(), cuda_stream(x.device))
    return q, scale


@register("quantize_per_token_int8", "triton", ("cuda", "cpu"), strided_rows=True)
def quantize_rows_int8_triton(x):
    from ..triton.quantize import quantize_per_token_int8

    return quantize_per_token_int8(x)
