"""Canonical layouts of the sparse weight formats (unstructured CSR, block-sparse BSR, N:M semi-structured).

These are what checkpoints store and what every sparse op (ops/sparse.py, ops/sparse_conv.py) takes; a
backend may repack them for its kernel when a module is created or moved (the CUDA 2:4 metadata, say),
never in a checkpoint. Pure torch: this file is the spec.

A weight is W [N, K] (N output rows, K reduction columns; a conv weight [Cout, Cin/groups, kh, kw] is
W [Cout, Cin/groups * kh * kw], columns in (cin, r, s) order, the order of weight.reshape(Cout, -1)).

Values. Every format stores the kept values in one of
  float32 / float16 / bfloat16    w = value
  int8 with scales float32 [N]    w = value * scales[n]   (symmetric per output row, sparse + quantized)
`scales` is None for float values. An index dtype is int16 when the indexed extent fits (<= 32768),
else int32 (index_dtype).

CSR (spmm_csr), unstructured, over output rows:
  row_ptr  int32 [N + 1]   row_ptr[0] = 0, non-decreasing, row_ptr[N] = nnz
  col_idx  int16/int32 [nnz]   columns of row n in row_ptr[n]:row_ptr[n+1], strictly increasing, in [0, K)
  values   [nnz]
  bytes per nonzero: value bytes + index bytes (fp32: 6, fp16/bf16: 4, int8: 3 with int16 indices), plus
  4 (N + 1) bytes of row pointers (and 4 N of int8 scales).

BSR (spmm_bsr), blocks of bn x bk (bn divides N, bk divides K), over block rows:
  row_ptr  int32 [N / bn + 1]        as CSR, counting blocks
  col_idx  int16/int32 [nnzb]        block columns (k0 = col_idx * bk), strictly increasing per block row
  values   [nnzb, bn, bk]            each block row-major (torch's BSR convention)
  A block is stored when any of its values is nonzero; zeros inside a stored block are stored.
  bytes per stored value: value bytes + index bytes / (bn * bk).

N:M semi-structured (spmm_24), groups of m consecutive columns (m in {4, 8}, m divides K), n = m / 2 kept
per group (2:4, 4:8):
  values   [N, K / 2]           the kept values of each group in increasing column order
  indices  uint8 [N, ceil(K/2 * b / 8)], b = log2(m): each kept value's position in its group
           (0 .. m-1), as b-bit codes packed exactly as the low-bit codes (quant.lowbit.pack_codes), with
           the positions of one group strictly increasing. A group with fewer than n nonzeros stores
           zeros at unused positions.
  bytes per kept value: value bytes + b / 8 (fp16 2:4: 2.25).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import lowbit

VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)
INDEX_DTYPES = (torch.int16, torch.int32)
NM_GROUPS = (4, 8)  # m of the N:M patterns; n = m // 2
INT8_MAX = 127


def index_dtype(extent: int) -> torch.dtype:
    """int16 for indices in [0, extent) when extent <= 32768, else int32."""
    return torch.int16 if extent <= 32768 else torch.int32


def nm_bits(m: int) -> int:
    """Bits of an in-group position for groups of m (2 for 2:4, 3 for 4:8)."""
    if m not in NM_GROUPS:
        raise ValueError(f"N:M groups must have m in {NM_GROUPS} columns (2:4 or 4:8), got m={m!r}")
    return {4: 2, 8: 3}[m]  # not m.bit_length() - 1: torch 2.4's compiler cannot trace int.bit_length


class SparseValues(NamedTuple):
    values: torch.Tensor
    scales: Optional[torch.Tensor]  # float32 [N] for int8 values, else None


def _check_values_dtype(fn: str, dtype) -> torch.dtype:
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"{fn}: values dtype must be one of {VALUE_DTYPES}, got {dtype!r}")
    return dtype


def _check_dense(fn: str, w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.dtype.is_floating_point:
        desc = f"{w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{fn}: expected a 2-D float weight [N, K], got {desc}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{fn}: the weight holds NaN or Inf")


def row_scales_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 scales of w [N, K] (float32 [N]); an all-zero row gets scale 1."""
    amax = w.detach().abs().amax(dim=1).to(torch.float32) if w.shape[1] else torch.zeros(w.shape[0], device=w.device)
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def encode_values(kept: torch.Tensor, rows: torch.Tensor, scales: Optional[torch.Tensor], dtype) -> torch.Tensor:
    """Kept float values (any shape, leading dim of rows' shape) to `dtype`; int8 rounds value / scales[row]."""
    if dtype == torch.int8:
        q = torch.round(kept.to(torch.float32) / scales[rows].reshape(rows.shape + (1,) * (kept.dim() - rows.dim())))
        return q.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return kept.to(dtype)


def decode_values(values: torch.Tensor, rows: torch.Tensor, scales: Optional[torch.Tensor]) -> torch.Tensor:
    """Stored values -> float32 (int8 times scales[row])."""
    v = values.to(torch.float32)
    if scales is None:
        return v
    return v * scales.to(torch.float32)[rows.long()].reshape(rows.shape + (1,) * (values.dim() - rows.dim()))


# ---- CSR --------------------------------------------------------------------------------------------
class Csr(NamedTuple):
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor
    scales: Optional[torch.Tensor]


def pack_csr(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> Csr:
    """Dense W [N, K] -> CSR of its nonzeros with values in `dtype` (int8: per-row scales)."""
    fn = "pack_csr"
    _check_dense(fn, w)
    _check_values_dtype(fn, dtype)
    n, k = w.shape
    w = w.detach()
    mask = w != 0
    counts = mask.sum(dim=1)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=w.device)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order: rows grouped, columns increasing
    scales = row_scales_int8(w) if dtype == torch.int8 else None
    values = encode_values(w[rows, cols], rows, scales, dtype)
    return Csr(row_ptr, cols.to(index_dtype(k)), values, scales)


def csr_rows(row_ptr: torch.Tensor) -> torch.Tensor:
    """The row of every stored entry (int64 [nnz])."""
    n = row_ptr.numel() - 1
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(n, device=row_ptr.device), counts)


def unpack_csr(row_ptr, col_idx, values, scales, k: int) -> torch.Tensor:
    """CSR -> float32 dense [N, K] (the spec of spmm_csr's weight)."""
    n = row_ptr.numel() - 1
    w = torch.zeros(n, k, dtype=torch.float32, device=values.device)
    rows = csr_rows(row_ptr)
    w[rows, col_idx.long()] = decode_values(values, rows, scales)
    return w


def _check_index_tensor(fn: str, name: str, t, allowed, ndim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in allowed or t.dim() != ndim:
        desc = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{fn}: {name} must be a {ndim}-D {' or '.join(map(str, allowed))} tensor, got {desc}")


def _check_values_and_scales(fn: str, values, scales, n: int, count_shape: tuple) -> None:
    if not isinstance(values, torch.Tensor) or values.dtype not in VALUE_DTYPES:
        desc = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{fn}: values must be a {'/'.join(str(d) for d in VALUE_DTYPES)} tensor, got {desc}")
    if tuple(values.shape) != tuple(count_shape):
        raise ValueError(f"{fn}: values has shape {tuple(values.shape)}, expected {tuple(count_shape)}")
    if values.dtype == torch.int8:
        if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or tuple(scales.shape) != (n,):
            desc = f"{scales.dtype} {tuple(scales.shape)}" if isinstance(scales, torch.Tensor) else repr(scales)
            raise ValueError(f"{fn}: int8 values need scales float32 [{n}], got {desc}")
        if not bool(torch.isfinite(scales).all()):
            raise ValueError(f"{fn}: scales hold NaN or Inf")
    else:
        if scales is not None:
            raise ValueError(f"{fn}: scales go with int8 values only; values are {values.dtype}")
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise ValueError(f"{fn}: values hold NaN or Inf")


def _check_pointers(fn: str, row_ptr: torch.Tensor, rows: int, count: int) -> None:
    _check_index_tensor(fn, "row_ptr", row_ptr, (torch.int32,), 1)
    if row_ptr.numel() != rows + 1:
        raise ValueError(f"{fn}: row_ptr has {row_ptr.numel()} entries, expected {rows + 1}")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != count:
        raise ValueError(f"{fn}: row_ptr must start at 0 and end at the number of stored entries {count}, "
                         f"got {int(row_ptr[0])} .. {int(row_ptr[-1])}")
    if rows and bool((row_ptr[1:] < row_ptr[:-1]).any()):
        raise ValueError(f"{fn}: row_ptr must be non-decreasing")


def _check_columns(fn: str, row_ptr, col_idx, extent: int, what: str) -> None:
    """col_idx within [0, extent) and strictly increasing inside each row."""
    if not col_idx.numel():
        return
    c = col_idx.long()
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= extent:
        raise ValueError(f"{fn}: col_idx must lie in [0, {extent}) ({what}), got [{lo}, {hi}]")
    rows = csr_rows(row_ptr)
    same_row = rows[1:] == rows[:-1]
    if bool((same_row & (c[1:] <= c[:-1])).any()):
        raise ValueError(f"{fn}: col_idx must be strictly increasing inside each row")


def validate_csr(row_ptr, col_idx, values, scales, n: int, k: int, fn: str = "CSR weight") -> None:
    """ValueError (naming the tensor) unless the tensors are a well-formed CSR weight [n, k]."""
    _check_index_tensor(fn, "col_idx", col_idx, INDEX_DTYPES, 1)
    _check_pointers(fn, row_ptr, n, col_idx.numel())
    _check_values_and_scales(fn, values, scales, n, (col_idx.numel(),))
    _check_columns(fn, row_ptr, col_idx, k, f"K={k}")


# ---- BSR --------------------------------------------------------------------------------------------
class Bsr(NamedTuple):
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor
    scales: Optional[torch.Tensor]


def check_block(fn: str, block, n: int, k: int) -> tuple[int, int]:
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"{fn}: block must be (rows, cols) of positive ints, got {block!r}")
    bn, bk = block
    if n % bn or k % bk:
        raise ValueError(f"{fn}: block {bn}x{bk} must divide the weight [N={n}, K={k}]")
    return bn, bk


def pack_bsr(w: torch.Tensor, block: tuple[int, int], dtype: torch.dtype = torch.float32) -> Bsr:
    """Dense W [N, K] -> BSR with bn x bk blocks (every block holding a nonzero is stored)."""
    fn = "pack_bsr"
    _check_dense(fn, w)
    _check_values_dtype(fn, dtype)
    n, k = w.shape
    bn, bk = check_block(fn, block, n, k)
    w = w.detach()
    blocks = w.reshape(n // bn, bn, k // bk, bk).transpose(1, 2)  # [NB, KB, bn, bk]
    keep = (blocks != 0).flatten(2).any(-1)
    row_ptr = torch.zeros(n // bn + 1, dtype=torch.int32, device=w.device)
    row_ptr[1:] = torch.cumsum(keep.sum(1), 0).to(torch.int32)
    brows, bcols = keep.nonzero(as_tuple=True)
    scales = row_scales_int8(w) if dtype == torch.int8 else None
    kept = blocks[brows, bcols]  # [nnzb, bn, bk]
    if dtype == torch.int8:
        rows = brows[:, None] * bn + torch.arange(bn, device=w.device)  # [nnzb, bn]
        values = encode_values(kept, rows, scales, dtype)
    else:
        values = kept.to(dtype)
    return Bsr(row_ptr, bcols.to(index_dtype(k // bk)), values.contiguous(), scales)


def unpack_bsr(row_ptr, col_idx, values, scales, k: int) -> torch.Tensor:
    """BSR -> float32 dense [N, K]."""
    nb = row_ptr.numel() - 1
    bn, bk = values.shape[1], values.shape[2]
    brows = csr_rows(row_ptr)
    if scales is not None:
        rows = brows[:, None] * bn + torch.arange(bn, device=values.device)
        v = decode_values(values, rows, scales)
    else:
        v = values.to(torch.float32)
    blocks = torch.zeros(nb, k // bk, bn, bk, dtype=torch.float32, device=values.device)
    blocks[brows, col_idx.long()] = v
    return blocks.transpose(1, 2).reshape(nb * bn, k)


def validate_bsr(row_ptr, col_idx, values, scales, n: int, k: int, fn: str = "BSR weight") -> None:
    _check_index_tensor(fn, "col_idx", col_idx, INDEX_DTYPES, 1)
    if not isinstance(values, torch.Tensor) or values.dim() != 3:
        raise ValueError(f"{fn}: values must be [nnz_blocks, bn, bk]")
    bn, bk = check_block(fn, (values.shape[1], values.shape[2]), n, k)
    _check_pointers(fn, row_ptr, n // bn, col_idx.numel())
    _check_values_and_scales(fn, values, scales, n, (col_idx.numel(), bn, bk))
    _check_columns(fn, row_ptr, col_idx, k // bk, f"K/bk={k // bk} block columns")


# ---- N:M --------------------------------------------------------------------------------------------
class SemiStructured(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor
    scales: Optional[torch.Tensor]


def nm_mask(w: torch.Tensor, m: int, score: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool [N, K]: in every group of m columns the m/2 entries of largest score (|w| by default)."""
    n, k = w.shape
    nm_bits(m)
    if k % m:
        raise ValueError(f"N:M {m // 2}:{m} needs K divisible by {m}, got K={k}")
    s = (w.abs() if score is None else score).reshape(n, k // m, m)
    top = s.topk(m // 2, dim=-1).indices
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(n, k)


def is_nm(w: torch.Tensor, m: int) -> bool:
    """Whether every group of m columns of w holds at most m/2 nonzeros."""
    n, k = w.shape
    return k % m == 0 and bool(((w != 0).reshape(n, k // m, m).sum(-1) <= m // 2).all())


def pack_nm(w: torch.Tensor, m: int = 4, dtype: torch.dtype = torch.float32) -> SemiStructured:
    """Dense W [N, K] with at most m/2 nonzeros per group of m columns -> (values, indices, scales).
    ValueError when W is not m/2:m sparse (prune it first: nm_mask)."""
    fn = "pack_nm"
    _check_dense(fn, w)
    _check_values_dtype(fn, dtype)
    bits = nm_bits(m)
    n, k = w.shape
    if k % m:
        raise ValueError(f"{fn}: {m // 2}:{m} sparsity needs K divisible by {m}, got K={k}")
    w = w.detach()
    if not is_nm(w, m):
        raise ValueError(f"{fn}: the weight is not {m // 2}:{m} sparse (some group of {m} columns holds more than "
                         f"{m // 2} nonzeros); prune it to {m // 2}:{m} first")
    groups = w.reshape(n, k // m, m)
    # Keep the nonzeros, then fill with the first zero positions, positions in increasing order.
    order = torch.argsort((groups == 0).to(torch.int8), dim=-1, stable=True)[..., : m // 2]
    pos = order.sort(dim=-1).values
    kept = torch.gather(groups, -1, pos).reshape(n, k // 2)
    scales = row_scales_int8(w) if dtype == torch.int8 else None
    values = encode_values(kept, torch.arange(n, device=w.device), scales, dtype)
    return SemiStructured(values, lowbit.pack_codes(pos.reshape(n, k // 2), bits), scales)


def nm_positions(indices: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """uint8 indices -> int64 [N, K/2] in-group positions."""
    return lowbit.unpack_codes(indices, nm_bits(m), k // 2).long()


def unpack_nm(values, indices, scales, m: int, k: int) -> torch.Tensor:
    """N:M -> float32 dense [N, K]."""
    n = values.shape[0]
    pos = nm_positions(indices, m, k).reshape(n, k // m, m // 2)
    v = decode_values(values, torch.arange(n, device=values.device), scales).reshape(n, k // m, m // 2)
    w = torch.zeros(n, k // m, m, dtype=torch.float32, device=values.device)
    w.scatter_(-1, pos, v)
    return w.reshape(n, k)


def nm_packed_bytes(k: int, m: int) -> int:
    """Bytes per row of the packed indices for K columns in groups of m."""
    return lowbit.packed_row_bytes(k // 2, nm_bits(m))


def validate_nm(values, indices, scales, m: int, n: int, k: int, fn: str = "N:M weight") -> None:
    bits = nm_bits(m)
    if k % m:
        raise ValueError(f"{fn}: K={k} is not a multiple of the group size m={m}")
    _check_values_and_scales(fn, values, scales, n, (n, k // 2))
    _check_index_tensor(fn, "indices", indices, (torch.uint8,), 2)
    if tuple(indices.shape) != (n, nm_packed_bytes(k, m)):
        raise ValueError(f"{fn}: indices has shape {tuple(indices.shape)}, expected {(n, nm_packed_bytes(k, m))}")
    pos = lowbit.unpack_codes(indices, bits, k // 2).reshape(n, k // m, m // 2).long()
    if bool((pos >= m).any()):
        raise ValueError(f"{fn}: indices hold in-group positions >= m={m}")
    if m // 2 > 1 and bool((pos[..., 1:] <= pos[..., :-1]).any()):
        raise ValueError(f"{fn}: the positions of a group's kept values must be strictly increasing")


def value_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
