"""The low-rank linear layer in Triton: ``low_rank_linear`` (``y = (x V^T) U^T + bias``) as two launches
of one kernel, C = A B^T (+ bias): first t = x V^T into a float32 [M, r] buffer (small: it stays in the
GPU's L2 between the launches), then y = t U^T + bias. Each program owns a (BLOCK_M rows, BLOCK_N
columns) tile and loops over the reduction in BLOCK_K steps with ``tl.dot`` in float32 (IEEE, no TF32).
Inputs are read as float32 (the launcher converts float16/bfloat16 ones), the result is cast to
x.dtype by the launcher. Not yet timed on a GPU; under ``TRITON_INTERPRET=1`` it is tested on small
shapes.
"""

from __future__ import annotations

import torch

from ._common import HAVE_TRITON, launch_device, require_triton, tl, triton

__all__ = ["low_rank_linear"]

BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 32

if HAVE_TRITON:

    @triton.jit
    def _abt_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, L, stride_am, stride_bn, stride_cm,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, L, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :],
                        mask=(rm[:, None] < M) & (rk[None, :] < L), other=0.0)
            b = tl.load(b_ptr + rn[:, None].to(tl.int64) * stride_bn + rk[None, :],
                        mask=(rn[:, None] < N) & (rk[None, :] < L), other=0.0)
            acc += tl.dot(a, tl.trans(b), input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], acc,
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _abt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a [M, L] (any row stride) @ b [N, L].T + bias, float32 in and out."""
    m, length = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=torch.float32, device=a.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    with launch_device(a):
        _abt_kernel[grid](a, b, bias if bias is not None else b, c, m, n, length,
                          a.stride(0) if m > 1 else length, length, n,
                          HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return c


def low_rank_linear(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """(x [M, K] (any row stride) @ v [r, K].T) @ u [N, r].T + bias -> [M, N] in x.dtype."""
    require_triton("low_rank.low_rank_linear")
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    xf = x if x.dtype == torch.float32 else x.float()
    y = _abt(_abt(xf, f32(v), None), f32(u), f32(bias))
    return y if x.dtype == torch.float32 else y.to(x.dtype)
