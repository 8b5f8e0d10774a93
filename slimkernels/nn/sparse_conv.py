"""SparseConv2d: a drop-in nn.Conv2d whose weight is stored sparse (only its nonzeros).

The weight [Cout, Cin/groups, kh, kw] is kept as CSR over output channels of W [Cout, Cin/groups*kh*kw]
(columns in (cin, r, s) order = weight.reshape(Cout, -1)), the layout of quant/sparse.py: buffers
`row_ptr` int32 [Cout + 1], `col_idx` int16/int32 [nnz], `values` [nnz] (float32 / float16 / bfloat16,
or int8 with `scales` float32 [Cout]) and `bias` float32 [Cout] or None. Checkpoints store exactly these
(`nnz` and the value dtype are in the layer config, so the empty module has the right buffer sizes).

forward runs slimkernels.ops.sparse_conv2d (the native CPU kernel: a direct sparse convolution, no
im2col), or, when the layer is not sparse enough to beat torch's dense convolution for the input's
memory format (the measured crossovers below), F.conv2d with the dense weight rebuilt by repack() into a
non-persistent buffer: a sparse layer is not slower than the dense one it replaced; extra_repr says
which runs for NCHW and for channels_last inputs.

Depthwise convolutions (groups == Cin == Cout) are supported and computed correctly; at kh*kw taps per
channel they rarely reach the crossover, so they usually run dense (a pruning pass may keep them as
nn.Conv2d; that is its choice). Training: the input and the bias get gradients (`bias.requires_grad_()`),
the sparse weight is frozen.

Building one:
  SparseConv2d.from_dense(weight, bias, stride, padding, dilation, groups, values)   from a pruned weight
  SparseConv2d.from_float(conv)   an nn.Conv2d whose weight already holds its zeros (pruning itself is
                                  slimkernels.compress.sparsify_, which calls from_dense)
  SparseConv2d(in_channels, out_channels, kernel_size, ..., nnz=, values=)   empty, for load_state_dict
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import sparse as layout
from .base import CompressedModule, dtype_name

# Below this sparsity (fraction of zero weights) the layer runs torch's dense conv2d, which is faster
# there. Measured on the ResNet-50 conv shapes, fp32, batch 1 and 8, ours vs F.conv2d with the same
# threads, in two runs: bench/results/2026-11-30-sparse-conv-cpu.md. At 80% NCHW rows range 0.97x-1.91x
# dense (two rows of one run just under 1.0x), at 90% 1.34x-3.11x: the switch sits between, at 85%.
DENSE_BELOW_SPARSITY = 0.85
# channels_last inputs cost the kernel a transpose of the input into its workspace, so they need more
# sparsity (at 90% one run had 3x3 64->64 at 56x56, batch 8, at 0.77x dense; every layer is >= 1.08x at
# 95% in both runs), and enough taps per input channel (nnz / Cin) to pay for the transpose: 1x1
# 256->64 at 56x56 (3-6 taps per channel) is slower than dense at every sparsity measured, 1x1
# 1024->256 at 14x14 (13-26 per channel) is 1.1-1.6x faster at 95%.
DENSE_BELOW_SPARSITY_CHANNELS_LAST = 0.95
CHANNELS_LAST_MIN_TAPS_PER_INPUT_CHANNEL = 16

VALUE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}


def _pair(name: str, value, low: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value) \
        if isinstance(value, (list, tuple)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"SparseConv2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < low:
        raise ValueError(f"SparseConv2d: {name} must be >= {low}, got {value!r}")
    return pair


def _value_dtype(values, weight: Optional[torch.Tensor] = None) -> torch.dtype:
    """None (the weight's float dtype), a name from VALUE_NAMES, or one of those dtypes."""
    if values is None:
        return weight.dtype if weight is not None and weight.dtype in layout.VALUE_DTYPES else torch.float32
    dtype = VALUE_NAMES.get(values.removeprefix("torch.")) if isinstance(values, str) else values
    if dtype not in layout.VALUE_DTYPES:
        raise ValueError(f"SparseConv2d: values must be None, 'int8' or one of {list(VALUE_NAMES)} (or the dtype), "
                         f"got {values!r}")
    return dtype


def conv_matches_config(conv: nn.Module, cfg: dict, keys: tuple[str, ...]) -> bool:
    """Whether a float nn.Conv2d (zero padding) has the geometry a saved layer config records under
    `keys` (names of nn.Conv2d attributes, "bias" meaning bias present): what load checks before
    restoring a compressed conv into it."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return False
    try:
        padding = resolve_padding(conv)
    except ValueError:
        return False
    mine = {"padding": list(padding), "bias": conv.bias is not None}
    for key in keys:
        if key not in mine:
            value = getattr(conv, key)
            mine[key] = list(value) if isinstance(value, tuple) else value
    return all(mine[k] == (list(cfg[k]) if isinstance(cfg[k], (tuple, list)) else cfg[k]) for k in keys)


def resolve_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """nn.Conv2d's padding as ints: "valid" is 0; "same" is dilation*(k-1)/2 per side, which needs an
    even total (odd totals pad asymmetrically, which sparse_conv2d does not: ValueError)."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(t % 2 for t in total):
        raise ValueError(f"SparseConv2d: padding='same' with kernel_size={conv.kernel_size} and dilation="
                         f"{conv.dilation} pads asymmetrically, which sparse_conv2d does not support")
    return (total[0] // 2, total[1] // 2)


class SparseConv2d(CompressedModule, layer_type="SparseConv2d"):
    required_config_keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                            "bias", "nnz", "values")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, nnz: int = 0, values: str = "float32", device=None, dtype=None):
        """An empty layer holding `nnz` nonzeros of value dtype `values` (filled by from_dense or
        load_state_dict). dtype: the float dtype of the weight it replaces (`weight.dtype`)."""
        super().__init__(device=device, dtype=dtype)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SparseConv2d: {name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"SparseConv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if not isinstance(nnz, int) or isinstance(nnz, bool) or nnz < 0:
            raise ValueError(f"SparseConv2d: nnz must be an int >= 0, got {nnz!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        k = self.reduction_size
        if nnz > out_channels * k:
            raise ValueError(f"SparseConv2d: nnz={nnz} exceeds the weight's {out_channels * k} entries")
        value_dtype = _value_dtype(values)
        self.register_buffer("row_ptr", torch.zeros(out_channels + 1, dtype=torch.int32, device=device))
        self.register_buffer("col_idx", torch.zeros(nnz, dtype=layout.index_dtype(k), device=device))
        self.register_buffer("values", torch.zeros(nnz, dtype=value_dtype, device=device))
        scales = torch.ones(out_channels, dtype=torch.float32, device=device) if value_dtype == torch.int8 else None
        self.register_buffer("scales", scales)
        self.register_buffer("bias", torch.zeros(out_channels, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("dense_weight", None, persistent=False)  # set by repack() below the crossover

    # ---- shape and format ---------------------------------------------------------------------------
    @property
    def reduction_size(self) -> int:
        """Columns of the CSR matrix: Cin/groups * kh * kw."""
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def nnz(self) -> int:
        return self.col_idx.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of the weight's entries that are not stored (zero)."""
        return 1.0 - self.nnz / (self.out_channels * self.reduction_size)

    def runs_dense(self, channels_last: bool = False) -> bool:
        """Whether forward runs torch's dense conv2d for NCHW (or channels_last) inputs: below the
        measured crossover of that memory format."""
        if not channels_last:
            return self.sparsity < DENSE_BELOW_SPARSITY
        return (self.sparsity < DENSE_BELOW_SPARSITY_CHANNELS_LAST
                or self.nnz < CHANNELS_LAST_MIN_TAPS_PER_INPUT_CHANNEL * self.in_channels)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
                   groups: int = 1, values=None) -> "SparseConv2d":
        """The layer for a float weight [Cout, Cin/groups, kh, kw] that already holds its zeros
        (pruned); its nonzeros are stored as `values` (None: the weight's float dtype; "int8": int8 with
        per-output-channel scales; or a dtype)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or not weight.dtype.is_floating_point:
            desc = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"SparseConv2d.from_dense: weight must be a 4-D float tensor [Cout, Cin/groups, kh, kw], "
                             f"got {desc}")
        value_dtype = _value_dtype(values, weight)
        cout, cin_g, kh, kw = weight.shape
        csr = layout.pack_csr(weight.detach().reshape(cout, -1), value_dtype)
        module = cls(cin_g * groups, cout, (kh, kw), stride, padding, dilation, groups, bias is not None,
                     nnz=csr.col_idx.numel(), values=dtype_name(value_dtype), device=weight.device, dtype=weight.dtype)
        if bias is not None and tuple(bias.shape) != (cout,):
            raise ValueError(f"SparseConv2d.from_dense: bias has shape {tuple(bias.shape)}, expected ({cout},)")
        with torch.no_grad():
            module.row_ptr.copy_(csr.row_ptr)
            module.col_idx.copy_(csr.col_idx)
            module.values.copy_(csr.values)
            if csr.scales is not None:
                module.scales.copy_(csr.scales)
            if bias is not None:
                module.bias.copy_(bias.detach().float())
        module.validate_state()
        module.repack()
        return module

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config=None, values=None) -> "SparseConv2d":
        """The layer for `conv` with the zeros its weight holds (nothing is pruned here: prune with
        slimkernels.compress.sparsify_, which builds the layers through from_dense). values: as in
        from_dense. String padding ("valid", symmetric "same") is resolved to ints."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_float expects an nn.Conv2d, got {type(conv).__name__}")
        if config is not None:
            raise ValueError("SparseConv2d.from_float packs the zeros the conv already has (config=None); to prune, "
                             "use slimkernels.compress.sparsify_(model, SparsityConfig(...))")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d: padding_mode={conv.padding_mode!r} is not supported (zeros only)")
        return cls.from_dense(conv.weight, conv.bias, conv.stride, resolve_padding(conv), conv.dilation, conv.groups,
                              values)

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        return conv_matches_config(module, cfg, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                                 "dilation", "groups", "bias"))

    # ---- state --------------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
                "nnz": self.nnz, "values": dtype_name(self.values.dtype)}

    def validate_state(self) -> None:
        """Refuse corrupt or hostile tensors (row pointers not monotone, columns out of range, counts that
        do not match, NaN/Inf) with a ValueError naming the tensor."""
        super().validate_state()
        layout.validate_csr(self.row_ptr, self.col_idx, self.values, self.scales, self.out_channels,
                            self.reduction_size, fn="SparseConv2d")

    def repack(self) -> None:
        """Below the crossover: the dense weight (in the weight dtype) for F.conv2d; else none."""
        dense = None
        state = (self.row_ptr, self.col_idx, self.values)
        filled = all(t.device.type != "meta" for t in state) and int(self.row_ptr[-1]) == self.nnz
        if (self.runs_dense(False) or self.runs_dense(True)) and filled:
            dense = self.dequantized_weight().to(self.weight_dtype)
        self.dense_weight = dense
        self._dense_for = (self.runs_dense(False), self.runs_dense(True))  # by channels_last

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [Cout, Cin/groups, kh, kw] this layer convolves with."""
        from ..ops.sparse_conv import dense_weight

        return dense_weight(self.row_ptr, self.col_idx, self.values, self.scales, self.in_channels // self.groups,
                            self.kernel_size)

    # ---- compute ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"SparseConv2d: expected input [B, {self.in_channels}, H, W] (or unbatched "
                             f"[{self.in_channels}, H, W]), got shape {tuple(x.shape)}")
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        from ..ops.sparse_conv import is_channels_last

        if self.dense_weight is not None and self._dense_for[is_channels_last(x)]:
            w = self.dense_weight if self.dense_weight.dtype == x.dtype else self.dense_weight.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)
        from .. import ops

        return ops.sparse_conv2d(x, self.row_ptr, self.col_idx, self.values, self.scales, self.bias,
                                 list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation),
                                 self.groups)

    def format_summary(self) -> str:
        """'unstructured CSR, 90.0% sparse, int8 values'."""
        return f"unstructured CSR, {100 * self.sparsity:.1f}% sparse, {dtype_name(self.values.dtype)} values"

    def extra_repr(self) -> str:
        runs = ", ".join(f"{'dense conv2d' if self.runs_dense(cl) else 'sparse_conv2d'} ({fmt})"
                         for cl, fmt in ((False, "NCHW"), (True, "channels_last")))
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
                f"pattern=unstructured, sparsity={100 * self.sparsity:.1f}%, format=CSR (col_idx "
                f"{dtype_name(self.col_idx.dtype)}), values={dtype_name(self.values.dtype)}, runs={runs}")
