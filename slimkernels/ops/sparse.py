"""The sparse family: y = x @ W.T + bias with W stored sparse, in the canonical layouts of
quant/sparse.py: unstructured CSR (spmm_csr), block-sparse BSR (spmm_bsr) and N:M semi-structured
(spmm_24: 2:4, and 4:8 with group=8). Values are float32/float16/bfloat16, or int8 with per-row
float32 scales. Contracts and public functions here; implementations in backends/sparse.py.

The ops check dtypes, shapes and devices on every call (cheap); the contents of the index tensors
(pointers monotone, columns in range) are checked once, where untrusted tensors come in: at pack time,
and at load (quant.sparse.validate_*; SparseLinear.validate_state). The native kernels re-check the
row pointers, which costs O(N).
"""
from typing import Optional

import torch
from torch import Tensor

from ..quant import sparse as layout
from . import _checks as check
from ._contract import SPARSE_WEIGHT_HINT, linear_fake, linear_rows, op, weight_only_autograd


def _check_values(op_name, values, scales, n, leading):
    check.dtype(op_name, "values", values, layout.VALUE_DTYPES)
    if values.shape[:len(leading)] != torch.Size(leading):
        raise ValueError(f"slimkernels.{op_name}: values has shape {tuple(values.shape)}; its leading dims must be "
                         f"{tuple(leading)}")
    if values.dtype == torch.int8:
        if scales is None:
            raise ValueError(f"slimkernels.{op_name}: int8 values need scales (float32 [N={n}]), got None")
        check.dtype(op_name, "scales", scales, (torch.float32,))
        check.shape(op_name, "scales", scales, (n,))
    elif scales is not None:
        raise ValueError(f"slimkernels.{op_name}: scales go with int8 values only; values are {values.dtype}")


def _check_compressed_rows(op_name, x, row_ptr, col_idx, values):
    check.float_input(op_name, "x", x)
    check.dtype(op_name, "row_ptr", row_ptr, (torch.int32,))
    check.ndim(op_name, "row_ptr", row_ptr, 1)
    if row_ptr.numel() < 1:
        raise ValueError(f"slimkernels.{op_name}: row_ptr must have N + 1 >= 1 entries, got none")
    check.dtype(op_name, "col_idx", col_idx, layout.INDEX_DTYPES)
    check.ndim(op_name, "col_idx", col_idx, 1)


# ---- spmm_csr ------------------------------------------------------------------------------------
def _check_csr(x, row_ptr, col_idx, values, scales, bias=None):
    op_name = "spmm_csr"
    _check_compressed_rows(op_name, x, row_ptr, col_idx, values)
    n = row_ptr.numel() - 1
    _check_values(op_name, values, scales, n, (col_idx.numel(),))
    check.ndim(op_name, "values", values, 1)
    check.optional_bias(op_name, bias, n)
    check.same_device(op_name, x=x, row_ptr=row_ptr, col_idx=col_idx, values=values, scales=scales, bias=bias)


@op("spmm_csr", _check_csr, linear_fake(lambda x, row_ptr, *_: row_ptr.shape[0] - 1))
def spmm_csr(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor, scales: Optional[Tensor],
             bias: Optional[Tensor] = None) -> Tensor:
    """Unstructured sparse: x [..., K] @ W.T + bias -> [..., N] in x.dtype, W [N, K] in CSR over output
    rows (row_ptr int32 [N + 1], col_idx int16/int32 [nnz], values [nnz]; int8 values are times
    scales[n]). float32 accumulation. Layout: slimkernels.quant.sparse."""
    return linear_rows("spmm_csr", x, row_ptr.shape[0] - 1, row_ptr, col_idx, values, scales, bias)


# ---- spmm_bsr ------------------------------------------------------------------------------------
def _check_bsr(x, row_ptr, col_idx, values, scales, bias=None):
    op_name = "spmm_bsr"
    _check_compressed_rows(op_name, x, row_ptr, col_idx, values)
    check.ndim(op_name, "values", values, 3)
    bn, bk = values.shape[1], values.shape[2]
    if bn < 1 or bk < 1:
        raise ValueError(f"slimkernels.{op_name}: values must be [nnz_blocks, bn, bk] with bn, bk >= 1, got "
                         f"{tuple(values.shape)}")
    n = (row_ptr.numel() - 1) * bn
    k = x.shape[-1]
    if k % bk:
        raise ValueError(f"slimkernels.{op_name}: x has K={k} features, not a multiple of the block width bk={bk}")
    _check_values(op_name, values, scales, n, (col_idx.numel(),))
    check.optional_bias(op_name, bias, n)
    check.same_device(op_name, x=x, row_ptr=row_ptr, col_idx=col_idx, values=values, scales=scales, bias=bias)


@op("spmm_bsr", _check_bsr, linear_fake(lambda x, row_ptr, col_idx, values, *_: (row_ptr.shape[0] - 1) * values.shape[1]))
def spmm_bsr(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor, scales: Optional[Tensor],
             bias: Optional[Tensor] = None) -> Tensor:
    """Block-sparse: x [..., K] @ W.T + bias -> [..., N], W in BSR with bn x bk blocks (row_ptr int32
    [N/bn + 1] over block rows, col_idx [nnz_blocks] block columns, values [nnz_blocks, bn, bk])."""
    n = (row_ptr.shape[0] - 1) * values.shape[1]
    return linear_rows("spmm_bsr", x, n, row_ptr, col_idx, values, scales, bias)


# ---- spmm_24 -------------------------------------------------------------------------------------
def _check_24(x, values, indices, scales, group=4, bias=None):
    op_name = "spmm_24"
    check.float_input(op_name, "x", x)
    if group not in layout.NM_GROUPS:
        raise ValueError(f"slimkernels.{op_name}: group must be 4 (2:4) or 8 (4:8), got {group!r}")
    k = x.shape[-1]
    if k % group:
        raise ValueError(f"slimkernels.{op_name}: x has K={k} features, not a multiple of the group size {group}")
    check.ndim(op_name, "values", values, 2)
    n = values.shape[0]
    _check_values(op_name, values, scales, n, (n, k // 2))
    check.dtype(op_name, "indices", indices, (torch.uint8,))
    check.shape(op_name, "indices", indices, (n, layout.nm_packed_bytes(k, group)))
    check.optional_bias(op_name, bias, n)
    check.same_device(op_name, x=x, values=values, indices=indices, scales=scales, bias=bias)


@op("spmm_24", _check_24, linear_fake(lambda x, values, *_: values.shape[0]))
def spmm_24(x: Tensor, values: Tensor, indices: Tensor, scales: Optional[Tensor], group: int = 4,
            bias: Optional[Tensor] = None) -> Tensor:
    """Semi-structured N:M sparse (half of every group of `group` columns kept: 2:4, or 4:8 with
    group=8): x [..., K] @ W.T + bias -> [..., N]; values [N, K/2], indices uint8 (the kept values'
    in-group positions, packed as in quant.sparse)."""
    return linear_rows("spmm_24", x, values.shape[0], values, indices, scales, group, bias)


weight_only_autograd(spmm_csr.opdef, layout.unpack_csr, 4, SPARSE_WEIGHT_HINT)
weight_only_autograd(spmm_bsr.opdef, layout.unpack_bsr, 4, SPARSE_WEIGHT_HINT)
weight_only_autograd(spmm_24.opdef, layout.unpack_nm, 4, SPARSE_WEIGHT_HINT)

__all__ = ["spmm_csr", "spmm_bsr", "spmm_24"]
