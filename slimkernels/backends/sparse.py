"""Implementations of the sparse family (spmm_csr, spmm_bsr, spmm_24): reference (the spec: unpack to
dense float32, then one matmul), "torch" (torch.sparse's CSR matmul, the anchor), native CPU (AVX-512 /
AVX2 / scalar) and CUDA (2:4 on sparse tensor cores), and Triton (BSR, 2:4). Inputs arrive validated
and non-empty (see backends/__init__.py); layouts in quant/sparse.py."""
import warnings

import torch

from .. import _native
from ..quant import sparse as layout
from . import register, row_stride
from ._common import KIND, cpu_isa, cuda_stream, f32, linear_f32, ptr, threads
from .quantize import ALL_DEVICES


# ---- reference: the spec ---------------------------------------------------------------------------
@register("spmm_csr", "reference", ALL_DEVICES)
def spmm_csr_reference(x, row_ptr, col_idx, values, scales, bias):
    """x @ unpack_csr(...).T + bias in float32, returned in x.dtype."""
    return linear_f32(x, layout.unpack_csr(row_ptr, col_idx, values, scales, x.shape[1]), bias)


@register("spmm_bsr", "reference", ALL_DEVICES)
def spmm_bsr_reference(x, row_ptr, col_idx, values, scales, bias):
    return linear_f32(x, layout.unpack_bsr(row_ptr, col_idx, values, scales, x.shape[1]), bias)


@register("spmm_24", "reference", ALL_DEVICES)
def spmm_24_reference(x, values, indices, scales, group, bias):
    return linear_f32(x, layout.unpack_nm(values, indices, scales, group, x.shape[1]), bias)


# ---- torch: torch.sparse's CSR matmul (MKL on CPU, cuSPARSE on CUDA) -----------------------------------
@register("spmm_csr", "torch", ("cpu", "cuda"))
def spmm_csr_torch(x, row_ptr, col_idx, values, scales, bias):
    """W (a torch sparse CSR tensor in x's float dtype, int8 values dequantized) @ x.T: the anchor."""
    n, k = row_ptr.numel() - 1, x.shape[1]
    rows = layout.csr_rows(row_ptr)
    # torch's CPU CSR matmul has no float16/bfloat16 kernel: those run in float32 there.
    dt = torch.float32 if x.device.type == "cpu" else x.dtype
    v = layout.decode_values(values, rows, scales).to(dt)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(row_ptr.long(), col_idx.long(), v, (n, k), check_invariants=False)
        y = torch.sparse.mm(w, x.to(dt).T).T
    if bias is not None:
        y = y + bias.to(dt)
    return y.to(x.dtype).contiguous()


# ---- native CPU ------------------------------------------------------------------------------------
# csrc/cpu/sparse*.cpp through _C: one row of x at a time as a gather dot product (M = 1), else x
# transposed into 16-row tiles; every block shape runs (SIMD over K inside a block row).
_VALUE_KIND = {**KIND, torch.int8: "int8"}
_INDEX_KIND = {torch.int16: "int16", torch.int32: "int32"}


def _sparse_cpu(fn, x, n, weight: tuple, values, extra: tuple, scales, bias):
    """y [M, n] in x.dtype from the binding fn(x, ldx, x kind, *weight, values, value kind, *extra,
    scales, bias, y, ldy, M, N, K, threads, isa)."""
    m, k = x.shape
    bias = f32(bias)
    y = torch.empty((m, n), dtype=x.dtype)
    fn(x.data_ptr(), row_stride(x), KIND[x.dtype], *weight, values.data_ptr(), _VALUE_KIND[values.dtype], *extra,
       ptr(scales), ptr(bias), y.data_ptr(), n, m, n, k, threads(), cpu_isa())
    return y


def _compressed_rows(row_ptr, col_idx) -> tuple:
    return row_ptr.data_ptr(), col_idx.data_ptr(), _INDEX_KIND[col_idx.dtype], col_idx.numel()


@register("spmm_csr", "native", ("cpu",), strided_rows=True)
def spmm_csr_cpu(x, row_ptr, col_idx, values, scales, bias):
    return _sparse_cpu(_native.require_cpu().spmm_csr, x, row_ptr.numel() - 1, _compressed_rows(row_ptr, col_idx),
                       values, (), scales, bias)


@register("spmm_bsr", "native", ("cpu",), strided_rows=True)
def spmm_bsr_cpu(x, row_ptr, col_idx, values, scales, bias):
    bn, bk = values.shape[1], values.shape[2]
    return _sparse_cpu(_native.require_cpu().spmm_bsr, x, (row_ptr.numel() - 1) * bn,
                       _compressed_rows(row_ptr, col_idx), values, (bn, bk), scales, bias)


@register("spmm_24", "native", ("cpu",), strided_rows=True)
def spmm_24_cpu(x, values, indices, scales, group, bias):
    return _sparse_cpu(_native.require_cpu().spmm_nm, x, values.shape[0], (), values, (indices.data_ptr(), group),
                       scales, bias)


# ---- native CUDA -----------------------------------------------------------------------------------
# csrc/cuda/sparse.cu through _C_cuda: 2:4 on the sparse tensor cores (mma.sp), reading the canonical layout.
_CUDA_VALUE_KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int8: "int8"}


@register("spmm_24", "native", ("cuda",), strided_rows=True)
def spmm_24_cuda(x, values, indices, scales, group, bias):
    """2:4 (group=4) with float16/bfloat16 x on the sparse tensor cores: values (any value dtype) converted to
    x's type in registers, float32 accumulation, scales and bias in float32, one rounding to x.dtype.
    The tensor cores have no 4:8 pattern and no float32 2:4 path, so group=8 and float32 x run the
    reference implementation instead (Triton, the default on CUDA, covers both)."""
    if group != 4 or x.dtype == torch.float32:
        return spmm_24_reference(x, values, indices, scales, group, bias)
    C = _native.require_cuda()
    m, k = x.shape
    n = values.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bias32 = f32(bias)
    with torch.cuda.device(x.device):
        C.spmm_24(x.data_ptr(), row_stride(x), m, k, KIND[x.dtype], values.data_ptr(), _CUDA_VALUE_KIND[values.dtype],
                  indices.data_ptr(), ptr(scales), n, ptr(bias32), out.data_ptr(), n, cuda_stream(x.device))
    return out

# ---- Triton ------------------------------------------------------------------------------------------
# triton/sparse.py: CSR (a row-per-program gather for small M), BSR (tl.dot for blocks >= 16 on both sides,
# FMAs for narrower ones) and N:M (2:4 and 4:8, kept values expanded in registers).
@register("spmm_csr", "triton", ("cuda", "cpu"), strided_rows=True)
def spmm_csr_triton(x, row_ptr, col_idx, values, scales, bias):
    from ..triton.sparse import spmm_csr

    return spmm_csr(x, row_ptr, col_idx, values, scales, bias)


@register("spmm_bsr", "triton", ("cuda", "cpu"), strided_rows=True)
def spmm_bsr_triton(x, row_ptr, col_idx, values, scales, bias):
    from ..triton.sparse import spmm_bsr

    return spmm_bsr(x, row_ptr, col_idx, values, scales, bias)


@register("spmm_24", "triton", ("cuda", "cpu"), strided_rows=True)
def spmm_24_triton(x, values, indices, scales, group, bias):
    from ..triton.sparse import spmm_nm

    return spmm_nm(x, values, indices, scales, group, bias)
