"""Implementations of the sparse family (spmm_csr, spmm_bsr, spmm_24): reference (the spec: unpack to
dense float32, then one matmul), "torch" (torch.sparse's CSR matmul, the anchor), native CPU (AVX-512 /
AVX2 / scalar) and CUDA (2:4 on sparse tensor cores), and Triton (BSR, 2:4). Inputs arrive validated
and non-empty (see backends/__init__.py); layouts in quant/sparse.py."""
import warnings

import torch

from .. import _native
from ..quant import sparse as layout
from . import register, row_stride
from ._common import KIND, cpu_isa, f32, ptr, threads
from .quantize import ALL_DEVICES


# ---- reference: the spec ---------------------------------------------------------------------------
def _linear_f32(x, w, bias):
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@register("spmm_csr", "reference", ALL_DEVICES)
def spmm_csr_reference(x, row_ptr, col_idx, values, scales, bias):
    """x @ unpack_csr(...).T + bias in float32, returned in x.dtype."""
    return _linear_f32(x, layout.unpack_csr(row_ptr, col_idx, values, scales, x.shape[1]), bias)


@register("spmm_bsr", "reference", ALL_DEVICES)
def spmm_bsr_reference(x, row_ptr, col_idx, values, scales, bias):
    return _linear_f32(x, layout.unpack_bsr(row_ptr, col_idx, values, scales, x.shape[1]), bias)


@register("spmm_24", "reference", ALL_DEVICES)
def spmm_24_reference(x, values, indices, scales, group, bias):
    return _linear_f32(x, layout.unpack_nm(values, indices, scales, group, x.shape[1]), bias)


# ---- torch: torch.sparse's CSR matmul (MKL on CPU, cuSPARSE on CUDA) -----------------------------------
@register("spmm_csr", "torch", ("cpu", "cuda"))
def spmm_csr_torch(x, row_ptr, col_idx, values, scales, bias):
    """W (a torch sparse CSR tensor in x's float dtype, int8 values dequantized) @ x.T: the anchor."""
    n, k = row_ptr.numel() - 1, x.shape[1]
    rows = layout.csr_rows(row_ptr)
    v = layout.decode_values(values, rows, scales).to(x.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(row_ptr.long(), col_idx.long(), v, (n, k), check_invariants=False)
        y = torch.sparse.mm(w, x.T).T
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.contiguous()


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
# (csrc/cuda/sparse.cu through _C_cuda)

# ---- Triton ------------------------------------------------------------------------------------------
# (triton/sparse.py)
