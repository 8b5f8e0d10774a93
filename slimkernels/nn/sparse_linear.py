"""SparseLinear: a drop-in nn.Linear whose weight is stored sparse (only the kept values and their indices).

Formats (layouts specified in quant/sparse.py, ops in ops/sparse.py):
  "csr"          unstructured, CSR over output rows (spmm_csr): row_ptr int32 [N + 1], col_idx int16/int32
                 [nnz], values [nnz]
  "bsr"          block-sparse with bn x bk blocks (spmm_bsr): row_ptr int32 [N/bn + 1], col_idx [nnz blocks],
                 values [nnz blocks, bn, bk]
  "2:4", "4:8"   N:M semi-structured (spmm_24): values [N, K/2], indices uint8 (packed in-group positions)
Values are float32 / float16 / bfloat16, or int8 with scales float32 [N] (w = value * scales[n]). Plus
`bias` float32 [N] or None. Those tensors are all a checkpoint holds; the rest of the life cycle (layer
config, `weight` stand-in for model code, validation at load, repack on device moves, casts that keep the
stored dtypes) comes from CompressedModule.

Never slower than the dense layer it replaced: a sparse kernel only wins while the batch is small
enough (the number of rows M = x.numel() // K), and by less the denser the weight. Each layer takes
`dense_from_m` from the crossover table below for its format, value kind, stored sparsity and device: at
M >= dense_from_m it runs F.linear on the dense weight instead. When the sparse path never wins
(dense_from_m == 1) the dense weight is kept (a non-saved buffer, memory as dense; the file stays
sparse); otherwise it is unpacked per call, which large M amortizes. `policy` says which in words.

Building one:
  SparseLinear.from_dense(weight, bias, format=..., values=..., block=...)   pack a pruned weight (its zeros
      are the pruned entries)
  SparseLinear.from_float(linear, config)   config None: the layer's zeros as CSR; a SparsityConfig: the
      pruning pass's sparsify_layer (slimkernels.compress.sparsify)
  SparseLinear(in_features, out_features, bias, format, values, nnz, block)   an empty layer (every stored
      value zero, a valid layout), for load_state_dict / slimkernels.load.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import _checks
from ..quant import lowbit
from ..quant import sparse as layout
from .base import CompressedModule

FORMATS = ("csr", "bsr", "2:4", "4:8")
NM_GROUP = {"2:4": 4, "4:8": 8}  # m of the N:M formats
VALUE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
VALUE_KINDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "int8"}

# Crossover table: (format, value kind) -> [(stored sparsity, largest M at which the sparse kernel beats
# dense F.linear on the dense layer)], sparsity increasing; on CPU. float("inf") = sparse wins at every M.
# Measured on 4096x4096 (8 layers, 2 threads, M = 1..128; bench/results/2026-11-30-sparse-cpu.md, "Crossover,
# rerun"): a point counts the M up to which every M of the grid ran at least 2x faster than dense fp32 in
# that run. The 2x margin is there because the dense anchor ran slow on that shared VM (interleaved with
# the sparse kernels, its time swung 2-3x), so a smaller win there may be no win on a quiet machine.
# Half-precision values read fewer bytes than float32 ones for the same work: they take float32's points
# for CSR (not measured apart); for N:M they were measured (bf16). BSR: the 4x16 blocks the kernels and
# SparsityConfig use by default. int8 N:M is not measured: float32's points.
_CSR_POINTS = [(0.7, 64), (0.8, 128)]
_BSR_POINTS = [(0.5, 64), (0.7, 128)]
_NM_POINTS = {"fp32": [(0.5, 1)], "fp16": [(0.5, 64)], "bf16": [(0.5, 64)], "int8": [(0.5, 1)]}
CROSSOVER: dict[tuple[str, str], list[tuple[float, float]]] = {
    **{("csr", kind): _CSR_POINTS for kind in ("fp32", "fp16", "bf16", "int8")},
    **{("bsr", kind): _BSR_POINTS for kind in ("fp32", "fp16", "bf16", "int8")},
    **{(fmt, kind): points for fmt in ("2:4", "4:8") for kind, points in _NM_POINTS.items()},
}


def _value_dtype(values, what: str = "values") -> torch.dtype:
    dtype = VALUE_NAMES.get(values) if isinstance(values, str) else values
    if dtype not in VALUE_KINDS:
        raise ValueError(f"SparseLinear: {what} must be one of {list(VALUE_NAMES)} (or the torch dtype), got {values!r}")
    return dtype


def _largest_sparse_m(points, sparsity: float) -> float:
    """Largest M where sparse wins at `sparsity`: log-linear between the table's points (M + 1 grows
    about geometrically with sparsity), 0 below the first point, the last point's M above the last."""
    if sparsity < points[0][0]:
        return 0
    for (s0, m0), (s1, m1) in zip(points, points[1:]):
        if s0 <= sparsity < s1:
            if math.isinf(m0) or math.isinf(m1):
                return m0
            t = (sparsity - s0) / (s1 - s0)
            return 2 ** ((1 - t) * math.log2(m0 + 1) + t * math.log2(m1 + 1)) - 1
    return points[-1][1]


def dense_from_m(format: str, values, sparsity: float, device) -> Optional[int]:
    """The batch size M (rows of x) from which a SparseLinear of `format` ("csr", "bsr", "2:4", "4:8"),
    stored `values` (dtype or name) and stored `sparsity` (N:M: 0.5) runs dense on `device`: an int >= 1
    (1 = always dense), or None (always sparse). From CROSSOVER on CPU; None elsewhere until measured."""
    if torch.device(device).type != "cpu":
        return None  # CUDA: no measurement yet (the GPU session measures it)
    kind = VALUE_KINDS[_value_dtype(values)]
    points = CROSSOVER.get((format, kind))
    if points is None:
        return 1  # no measurement for this format: dense is never slower than itself
    m = _largest_sparse_m(points, sparsity)
    return None if math.isinf(m) else int(m + 1e-9) + 1


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


class SparseLinear(CompressedModule, layer_type="SparseLinear"):
    required_config_keys = ("in_features", "out_features", "bias", "format", "values", "nnz", "block")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 values: Union[str, torch.dtype] = "float32", nnz: int = 0, block=None, device=None, dtype=None):
        """An empty layer: every stored value zero in a valid layout of the given size (nnz: stored entries
        for csr, stored blocks for bsr, 0 for N:M; block: [bn, bk] for bsr). dtype: the float dtype of the
        weight it replaces (`weight.dtype`)."""
        super().__init__(device=device, dtype=dtype)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SparseLinear: in_features and out_features must be positive ints, got {name}={value!r}")
        if format not in FORMATS:
            raise ValueError(f"SparseLinear: format must be one of {list(FORMATS)}, got {format!r}")
        value_dtype = _value_dtype(values)
        if not isinstance(nnz, int) or isinstance(nnz, bool) or nnz < 0:
            raise ValueError(f"SparseLinear: nnz must be a non-negative int, got {nnz!r}")
        n, k = out_features, in_features
        self.in_features, self.out_features, self.format = in_features, out_features, format
        self.block: Optional[tuple[int, int]] = None
        if format == "bsr":
            if block is None:
                raise ValueError("SparseLinear: format 'bsr' needs block=[bn, bk]")
            self.block = layout.check_block("SparseLinear", tuple(block) if isinstance(block, list) else block, n, k)
            capacity = (n // self.block[0]) * (k // self.block[1])
        elif block is not None:
            raise ValueError(f"SparseLinear: block goes with format 'bsr' only, got block={block!r} for {format!r}")
        elif format == "csr":
            capacity = n * k
        else:
            m = NM_GROUP[format]
            if k % m:
                raise ValueError(f"SparseLinear: format {format!r} needs in_features divisible by {m}, got {k}")
            if nnz:
                raise ValueError(f"SparseLinear: nnz is fixed by the {format} pattern (N * K / 2); pass nnz=0, got {nnz}")
            capacity = 0
        if nnz > capacity:
            what = "blocks" if format == "bsr" else "entries"
            raise ValueError(f"SparseLinear: nnz={nnz} {what} do not fit a {format} weight [{n}, {k}] (at most {capacity})")
        self._nnz = nnz
        for name, tensor in self._empty_layout(value_dtype, torch.device("cpu") if device is None else device).items():
            self.register_buffer(name, tensor)
        self.register_buffer("scales", torch.ones(n, dtype=torch.float32, device=device)
                             if value_dtype == torch.int8 else None)
        self.register_buffer("bias", torch.zeros(n, dtype=torch.float32, device=device) if bias else None)
        # The dense weight, kept only while the layer always runs dense (dense_from_m == 1); never saved.
        self.register_buffer("_dense_weight", None, persistent=False)
        self._dense_from_m_choice: Union[str, int, None] = "auto"
        self._dense_from_m: Optional[int] = None

    def _empty_layout(self, value_dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        """The format's index and value tensors for an all-zero weight, valid for validate_state: the
        stored entries (blocks) fill the first positions in row-major order; N:M groups keep their
        first m/2 positions."""
        n, k, nnz = self.out_features, self.in_features, self._nnz
        if self.format in NM_GROUP:
            m = NM_GROUP[self.format]
            positions = torch.arange(m // 2).repeat(k // m)[None]  # one row, built on the CPU (device may be meta)
            indices = lowbit.pack_codes(positions, layout.nm_bits(m)).to(device).repeat(n, 1)
            return {"values": torch.zeros(n, k // 2, dtype=value_dtype, device=device), "indices": indices}
        bn, bk = self.block or (1, 1)
        rows, cols = n // bn, k // bk
        row_ptr = (torch.arange(rows + 1, dtype=torch.int64, device=device) * cols).clamp_(max=nnz).to(torch.int32)
        col_idx = (torch.arange(nnz, device=device) % cols).to(layout.index_dtype(cols))
        shape = (nnz,) if self.format == "csr" else (nnz, bn, bk)
        return {"row_ptr": row_ptr, "col_idx": col_idx, "values": torch.zeros(shape, dtype=value_dtype, device=device)}

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype of the stored values (torch.int8 for int8 values with per-row scales)."""
        return self.values.dtype

    @property
    def pattern(self) -> str:
        """The pruning pattern in SparsityConfig's words: "unstructured", "block 16x1", "2:4", "4:8"."""
        if self.format == "csr":
            return "unstructured"
        if self.format == "bsr":
            return f"block {self.block[0]}x{self.block[1]}"
        return self.format

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, format: str = "auto",
                   values: Union[None, str, torch.dtype] = None, block=None, dtype=None) -> "SparseLinear":
        """Pack a pruned weight [N, K] (its zeros are the pruned entries) and bias [N] into a SparseLinear.
        format: "csr" ("auto" = "csr"), "bsr" (with block=(bn, bk)), "2:4" or "4:8" (the weight must already
        have that pattern). values: None keeps the weight's float dtype; "int8" stores int8 with per-row
        scales; or "float32" / "float16" / "bfloat16" / a torch dtype. dtype: the float dtype the layer stands
        in for (`weight.dtype`, by default the weight's)."""
        fn = "SparseLinear.from_dense"
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.dtype.is_floating_point:
            desc = (f"{weight.dtype} tensor of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor)
                    else type(weight).__name__)
            raise ValueError(f"{fn}: weight must be a 2-D float tensor [out_features, in_features], got {desc}")
        format = "csr" if format == "auto" else format
        if format not in FORMATS:
            raise ValueError(f"{fn}: format must be 'auto' or one of {list(FORMATS)}, got {format!r}")
        if values is None:
            value_dtype = weight.dtype if weight.dtype in VALUE_KINDS else torch.float32
        else:
            value_dtype = _value_dtype(values)
        n, k = weight.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"{fn}: bias must be a tensor of shape ({n},), got {got}")
        try:
            if format == "csr":
                packed = layout.pack_csr(weight, value_dtype)._asdict()
            elif format == "bsr":
                if block is None:
                    raise ValueError("format 'bsr' needs block=(bn, bk)")
                packed = layout.pack_bsr(weight, tuple(block) if isinstance(block, list) else block, value_dtype)._asdict()
            else:
                packed = layout.pack_nm(weight, NM_GROUP[format], value_dtype)._asdict()
        except ValueError as exc:
            raise ValueError(f"{fn}: {exc}") from None
        count = packed["col_idx"].numel() if "col_idx" in packed else 0
        module = cls(k, n, bias=bias is not None, format=format, values=value_dtype, nnz=count,
                     block=block if format == "bsr" else None, device=weight.device,
                     dtype=weight.dtype if dtype is None else dtype)
        with torch.no_grad():
            for name, tensor in packed.items():
                setattr(module, name, tensor)
            if bias is not None:
                module.bias.copy_(bias.detach().float())
        module.validate_state()
        module.repack()
        return module

    @classmethod
    def from_float(cls, linear: nn.Linear, config=None, **kwargs) -> "SparseLinear":
        """Convert `linear`. config None: pack its weight's zeros as CSR (values in its dtype). A pass
        config (SparsityConfig): prune and pack with slimkernels.compress.sparsify.sparsify_layer (kwargs,
        such as calibration statistics, go to it); a layer it would skip is a ValueError here."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        if config is None:
            return cls.from_dense(linear.weight, linear.bias)
        try:
            from ..compress.sparsify import sparsify_layer
        except ImportError:
            raise NotImplementedError("SparseLinear.from_float with a config needs slimkernels.compress.sparsify "
                                      "(the sparsify_ pass), which this version lacks; prune the weight and use "
                                      "from_dense, or from_float(linear) for its existing zeros") from None
        from ..compress.skip import SkipLayer

        try:
            module = sparsify_layer(linear, config, **kwargs)
        except SkipLayer as why:
            what = config.describe() if hasattr(config, "describe") else repr(config)
            raise ValueError(f"SparseLinear.from_float: cannot sparsify this layer with {what}: {why}") from None
        if isinstance(module, CompressedModule):
            module.weight_dtype = linear.weight.dtype  # what model code reading layer.weight.dtype expects
        return module

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        return type(module) is nn.Linear and (module.in_features, module.out_features, module.bias is not None) == (
            cfg["in_features"], cfg["out_features"], cfg["bias"])

    # ---- state ----------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "format": self.format, "values": str(self.value_dtype).removeprefix("torch."), "nnz": self._nnz,
                "block": list(self.block) if self.block else None}

    def validate_state(self) -> None:
        """NaN/Inf (base), then the layout: pointers monotone and consistent with nnz, indices in range
        and increasing, shapes and dtypes (ValueError naming the tensor)."""
        super().validate_state()
        n, k, fn = self.out_features, self.in_features, "SparseLinear"
        try:
            if self.format == "csr":
                layout.validate_csr(self.row_ptr, self.col_idx, self.values, self.scales, n, k, fn)
            elif self.format == "bsr":
                layout.validate_bsr(self.row_ptr, self.col_idx, self.values, self.scales, n, k, fn)
            else:
                layout.validate_nm(self.values, self.indices, self.scales, NM_GROUP[self.format], n, k, fn)
        except ValueError:
            # load_state_dict has already copied the bad tensors in: a caller that catches the error
            # must not be left with indices a kernel would follow out of bounds.
            self._reset_layout()
            raise

    def _reset_layout(self) -> None:
        """Back to the empty layer (all-zero weight, valid indices) of this shape."""
        with torch.no_grad():
            for name, tensor in self._empty_layout(self.value_dtype, self.values.device).items():
                setattr(self, name, tensor)
        self.repack()

    def repack(self) -> None:
        """Choose the dense threshold for this device and keep the dense weight if it always runs dense."""
        device = self._weight_anchor.device
        if self._dense_from_m_choice == "auto":
            self._dense_from_m = dense_from_m(self.format, self.value_dtype, self.stored_sparsity, device)
        else:
            self._dense_from_m = self._dense_from_m_choice
        keep = self._dense_from_m == 1 and device.type != "meta"
        self._dense_weight = self.dequantized_weight().to(self.weight_dtype) if keep else None

    def _apply(self, fn, recurse=True):
        dtype = self.weight_dtype
        super()._apply(fn, recurse)
        if self.weight_dtype != dtype and self._dense_weight is not None:
            # model.half(): rebuild from the stored values rather than keep a cast (and cast back) copy.
            self._dense_weight = self.dequantized_weight().to(self.weight_dtype)
        return self

    @property
    def dense_from_m(self) -> Optional[int]:
        """From this many rows M (= x.numel() // in_features) on, forward runs dense F.linear; None:
        always sparse, 1: always dense. Chosen from CROSSOVER for the layer's device ("auto"); set an int
        >= 1, None, or "auto" to override (not saved: a checkpoint loads with the choice for its machine)."""
        return self._dense_from_m

    @dense_from_m.setter
    def dense_from_m(self, value) -> None:
        if value != "auto" and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"SparseLinear.dense_from_m must be an int >= 1, None (always sparse) or 'auto', got {value!r}")
        self._dense_from_m_choice = value
        self.repack()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [N, K] this module multiplies by (zeros where pruned)."""
        k = self.in_features
        if self.format == "csr":
            return layout.unpack_csr(self.row_ptr, self.col_idx, self.values, self.scales, k)
        if self.format == "bsr":
            return layout.unpack_bsr(self.row_ptr, self.col_idx, self.values, self.scales, k)
        return layout.unpack_nm(self.values, self.indices, self.scales, NM_GROUP[self.format], k)

    # ---- running --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.float_input("SparseLinear", "x", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        if self._dense_from_m is not None and x.numel() // self.in_features >= self._dense_from_m:
            return self._dense_forward(x)
        if self.format == "csr":
            return ops.spmm_csr(x, self.row_ptr, self.col_idx, self.values, self.scales, self.bias)
        if self.format == "bsr":
            return ops.spmm_bsr(x, self.row_ptr, self.col_idx, self.values, self.scales, self.bias)
        return ops.spmm_24(x, self.values, self.indices, self.scales, NM_GROUP[self.format], self.bias)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What the dense layer did: F.linear in x's dtype (the unpack, when not kept, is amortized over M)."""
        w = self._dense_weight if self._dense_weight is not None else self.dequantized_weight()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), bias)

    # ---- describing -----------------------------------------------------------------------------
    @property
    def stored_values(self) -> int:
        """Weight values the layout stores (zeros inside stored blocks or N:M groups included)."""
        return self.values.numel()

    @property
    def stored_sparsity(self) -> float:
        """1 - stored values / (N * K): what the kernel skips (0.5 for N:M); the crossover is read at it."""
        return 1.0 - self.stored_values / (self.out_features * self.in_features)

    @property
    def nnz(self) -> int:
        """Number of nonzero weights (stored values that are not zero)."""
        if self.values.device.type == "meta":
            return self.stored_values
        return int(torch.count_nonzero(self.values))

    @property
    def sparsity(self) -> float:
        """Fraction of the weight's N * K entries that are zero."""
        return 1.0 - self.nnz / (self.out_features * self.in_features)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the saved tensors (what a checkpoint holds for this layer, bias included)."""
        return sum(t.numel() * t.element_size() for _, t in self._own_state())

    def format_summary(self) -> str:
        """A few words on the format: 'csr fp32 90.0%', 'bsr 16x1 int8 85.2%', '2:4 bf16'."""
        kind = VALUE_KINDS[self.value_dtype]
        if self.format in NM_GROUP:
            return f"{self.format} {kind}"
        name = "csr" if self.format == "csr" else f"bsr {self.block[0]}x{self.block[1]}"
        return f"{name} {kind} {_percent(self.sparsity)}"

    @property
    def policy(self) -> str:
        """When the layer runs sparse, in words for reports: 'csr fp32 90.0% (sparse up to M=32, dense
        above)', or 'runs dense: 50% unstructured is below the CSR crossover'."""
        threshold = self._dense_from_m
        if threshold is None:
            return f"{self.format_summary()} (sparse at every M)"
        if threshold == 1:
            if self.format in NM_GROUP:
                return f"runs dense: {self.format} {VALUE_KINDS[self.value_dtype]} is below the {self.format} crossover"
            share = f"{100 * self.stored_sparsity:.1f}".removesuffix(".0")
            return f"runs dense: {share}% {self.pattern} is below the {self.format.upper()} crossover"
        return f"{self.format_summary()} (sparse up to M={threshold - 1}, dense above)"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"pattern={self.pattern}, sparsity={_percent(self.sparsity)}, format={self.format}, "
                f"values={str(self.value_dtype).removeprefix('torch.')}, stored_bytes={self.stored_bytes}")
