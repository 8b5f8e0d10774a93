"""LowRankLinear and LowRankConv2d: a layer replaced by two thinner ones, y = (x V^T) U^T + b.

LowRankLinear holds its factors as two sub-layers, `down` (V: K -> r, no bias) and `up` (U: r -> N,
with the bias). Each is a plain nn.Linear (float factors, trainable like any linear layer) or a
QuantLinear of any existing mode (int8 weight-only, W8A8, int4, ...): the quantization formats and
kernels are QuantLinear's, not copied here. On CPU with float32 factors the forward is one op,
slimkernels.ops.low_rank_linear (a fused kernel at small M); elsewhere the two layers run in turn (on
CUDA until the op's Triton kernel is measured there). `LowRankLinear.from_float(linear, rank, factors=config)`
quantizes them with slimkernels.compress.quantize_layer; quantize_ run on a model after low_rank_
does the same to every factor it matches. A checkpoint records the LowRankLinear (shape, rank) and,
when quantized, each factor as the QuantLinear it is: slimkernels.load builds the two nn.Linear
factors, then converts each recorded one, so every mix round-trips with no code here.

LowRankConv2d: the k x k conv to r channels (`down`, nn.Conv2d with the original stride, padding,
dilation; no bias), then a 1 x 1 conv to the output channels (`up`, with the bias). groups=1 only.

Model code: `weight` is U @ V, materialized on every read in the layer's weight dtype (a [N, K] tensor:
read it for its dtype or shape, or for the values; it is not the storage). `dequantized_weight()` gives
it in float32.

Picking the factors (truncated SVD, ASVD, SVD-LLM) and the ranks is the pass's job:
slimkernels.compress.low_rank_ (math in slimkernels/quant/low_rank.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..quant import low_rank as math_
from .base import CompressedModule


def _positive(cls: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}")
    return value


def _factor_weight(layer: nn.Module) -> torch.Tensor:
    """A factor's weight in float32: an nn.Linear / nn.Conv2d's own, a QuantLinear's dequantized."""
    if isinstance(layer, CompressedModule):
        return layer.dequantized_weight().float()
    return layer.weight.detach().float()


def _factor_words(layer: nn.Module) -> str:
    summary = getattr(layer, "format_summary", None)
    return summary() if callable(summary) else "float"


def _check_float_factors(module: CompressedModule) -> None:
    for name in ("down", "up"):
        layer = getattr(module, name)
        if isinstance(layer, CompressedModule):
            continue
        for pname, p in layer.named_parameters():
            if p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                raise ValueError(f"{type(module).__name__}: {name}.{pname} holds NaN or Inf")


def _empty_linear(k: int, n: int, bias: bool, device, dtype) -> nn.Linear:
    """An nn.Linear filled with zeros, without the cost of its random initialization."""
    layer = nn.utils.skip_init(nn.Linear, k, n, bias=bias, device=device, dtype=dtype)
    with torch.no_grad():
        if layer.weight.device.type != "meta":
            for p in layer.parameters():
                p.zero_()
    return layer


class LowRankLinear(CompressedModule, layer_type="LowRankLinear"):
    required_config_keys = ("in_features", "out_features", "rank", "bias")

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        """An empty layer (zero factors, float; filled by from_float / from_factors / load_state_dict).
        dtype: the float dtype of the weight it replaces, and of float factors."""
        super().__init__(device=device, dtype=dtype)
        k = _positive("LowRankLinear", "in_features", in_features)
        n = _positive("LowRankLinear", "out_features", out_features)
        self.rank = math_.check_rank("LowRankLinear", rank, n, k)
        if not isinstance(bias, bool):
            raise ValueError(f"LowRankLinear: bias must be True or False, got {bias!r}")
        self.in_features, self.out_features = k, n
        self.down = _empty_linear(k, self.rank, False, device, self.weight_dtype)
        self.up = _empty_linear(self.rank, n, bias, device, self.weight_dtype)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.up.bias

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     factors=None, dtype=None) -> "LowRankLinear":
        """The layer computing x -> x down^T up^T + bias from up [N, r] and down [r, K]. factors: None (float
        factors in `dtype`, default up's) or a quantization config (or mode name) both factors are
        quantized with (slimkernels.compress.quantize_layer; a factor that config leaves as it is, e.g.
        an int4 group size that does not divide r, stays float)."""
        fn = "LowRankLinear.from_factors"
        for name, t in (("up", up), ("down", down)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.dtype.is_floating_point:
                raise ValueError(f"{fn}: {name} must be a 2-D float tensor, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if up.shape[1] != down.shape[0]:
            raise ValueError(f"{fn}: up [N, r] and down [r, K] disagree on r: {tuple(up.shape)} and {tuple(down.shape)}")
        (n, r), k = up.shape, down.shape[1]
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
            raise ValueError(f"{fn}: bias must be a tensor of shape ({n},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        module = cls(k, n, r, bias is not None, device=up.device, dtype=dtype or up.dtype)
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
            if bias is not None:
                module.up.bias.copy_(bias)
        if factors is not None:
            module.quantize_factors(factors)
        return module

    @classmethod
    def from_float(cls, linear: nn.Linear, rank: int, factors=None) -> "LowRankLinear":
        """Truncated SVD of `linear` at `rank` (1 <= rank <= min(N, K)); factors: as in from_factors. For
        ASVD / SVD-LLM and ranks chosen from a budget use slimkernels.compress.low_rank_."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LowRankLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        math_.check_rank("LowRankLinear.from_float", rank, linear.out_features, linear.in_features)
        f = math_.truncated_svd(linear.weight.detach().float(), rank)
        bias = None if linear.bias is None else linear.bias.detach()
        dtype = linear.weight.dtype
        return cls.from_factors(f.up.to(dtype), f.down.to(dtype), bias, factors=factors, dtype=dtype)

    def quantize_factors(self, config) -> list[str]:
        """Quantize the float factors in place with `config` (a quantization config or mode name, as
        QuantLinear.from_float takes). Returns the reasons of the factors left float (empty if none)."""
        from ..compress.config import config_for_mode
        from ..compress.quantize import quantize_layer
        from ..compress.skip import SkipLayer

        config = config_for_mode(config) if isinstance(config, str) else config
        left = []
        for name in ("down", "up"):
            layer = getattr(self, name)
            if type(layer) is not nn.Linear:
                continue
            try:
                new = quantize_layer(layer, config)
            except SkipLayer as why:
                left.append(f"{name}: {why}")
                continue
            new.weight_dtype = self.weight_dtype
            setattr(self, name, new)
        return left

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        return type(module) is nn.Linear and (module.in_features, module.out_features, module.bias is not None) == (
            cfg["in_features"], cfg["out_features"], cfg["bias"])

    # ---- state ----------------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.up.bias is not None}

    def dequantized_weight(self) -> torch.Tensor:
        """U @ V, float32 [N, K]."""
        return _factor_weight(self.up) @ _factor_weight(self.down)

    def validate_state(self) -> None:
        """Float factors hold no NaN/Inf (quantized ones are checked by QuantLinear itself)."""
        _check_float_factors(self)

    @property
    def weight(self) -> torch.Tensor:
        """U @ V in the layer's weight dtype, computed on every read (model code reads .dtype / .shape)."""
        w = self.dequantized_weight().to(self.weight_dtype)
        w._is_hf_initialized = True  # transformers' init must not write into it (as for the base's stand-in)
        return w

    @property
    def kept_fraction(self) -> float:
        """Parameters of the two factors over the dense weight's: r (N + K) / (N K)."""
        return math_.kept_fraction(self.rank, self.out_features, self.in_features)

    # ---- running ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        if x.device.type == "cpu" and self._float32_factors():
            # One op (slimkernels.ops.low_rank_linear): at small M a fused kernel reads each factor once.
            return ops.low_rank_linear(x, self.down.weight, self.up.weight, self.up.bias)
        return self.up(self.down(x))

    def _float32_factors(self) -> bool:
        """Both factors plain float32 nn.Linear (the op's fast path); half-precision and quantized factors
        run as two layers in their own dtype and kernels."""
        return all(type(layer) is nn.Linear and layer.weight.dtype == torch.float32 for layer in (self.down, self.up))

    def format_summary(self) -> str:
        """'rank 128 (41.7% of the parameters), factors w8a16 / w8a16'."""
        words = f"rank {self.rank} ({100 * self.kept_fraction:.1f}% of the parameters)"
        kinds = {_factor_words(self.down), _factor_words(self.up)}
        return words + (f", factors {_factor_words(self.down)} / {_factor_words(self.up)}" if kinds != {"float"} else "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.up.bias is not None}, kept={100 * self.kept_fraction:.1f}% of the parameters")


class LowRankConv2d(CompressedModule, layer_type="LowRankConv2d"):
    required_config_keys = ("in_channels", "out_channels", "kernel_size", "rank", "stride", "padding", "dilation",
                            "bias")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1, padding=0, dilation=1,
                 bias: bool = True, device=None, dtype=None):
        """An empty layer: `down` = Conv2d(in_channels, rank, kernel_size, stride, padding, dilation, no
        bias), `up` = Conv2d(rank, out_channels, 1, bias=bias), zero weights."""
        super().__init__(device=device, dtype=dtype)
        cin = _positive("LowRankConv2d", "in_channels", in_channels)
        cout = _positive("LowRankConv2d", "out_channels", out_channels)
        if not isinstance(bias, bool):
            raise ValueError(f"LowRankConv2d: bias must be True or False, got {bias!r}")
        if isinstance(padding, str):
            raise ValueError(f"LowRankConv2d: padding must be ints (the pass resolves 'same' / 'valid'), got {padding!r}")
        down = nn.utils.skip_init(nn.Conv2d, cin, 1, kernel_size, stride, padding, dilation, bias=False, device=device,
                                  dtype=self.weight_dtype)  # built once to read the normalized sizes
        kh, kw = down.kernel_size
        self.rank = math_.check_rank("LowRankConv2d", rank, cout, cin * kh * kw)
        self.in_channels, self.out_channels = cin, cout
        self.kernel_size, self.stride = tuple(down.kernel_size), tuple(down.stride)
        self.padding, self.dilation = tuple(down.padding), tuple(down.dilation)
        self.down = nn.utils.skip_init(nn.Conv2d, cin, self.rank, self.kernel_size, self.stride, self.padding,
                                       self.dilation, bias=False, device=device, dtype=self.weight_dtype)
        self.up = nn.utils.skip_init(nn.Conv2d, self.rank, cout, 1, bias=bias, device=device, dtype=self.weight_dtype)
        with torch.no_grad():
            if self.down.weight.device.type != "meta":
                for p in list(self.down.parameters()) + list(self.up.parameters()):
                    p.zero_()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.up.bias

    @classmethod
    def from_matrices(cls, conv: nn.Conv2d, up: torch.Tensor, down: torch.Tensor) -> "LowRankConv2d":
        """The layer for `conv` from factors of its weight matrix [Cout, Cin kh kw]: up [Cout, r], down [r, Cin kh kw]."""
        if conv.groups != 1:
            raise ValueError(f"LowRankConv2d: grouped convolutions are not supported (groups={conv.groups})")
        if conv.padding_mode != "zeros":
            raise ValueError(f"LowRankConv2d: padding_mode={conv.padding_mode!r} is not supported (zeros only)")
        from .sparse_conv import resolve_padding

        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, up.shape[1], conv.stride,
                     resolve_padding(conv), conv.dilation, conv.bias is not None, device=conv.weight.device,
                     dtype=conv.weight.dtype)
        with torch.no_grad():
            module.down.weight.copy_(down.reshape(module.down.weight.shape))
            module.up.weight.copy_(up.reshape(module.up.weight.shape))
            if conv.bias is not None:
                module.up.bias.copy_(conv.bias)
        return module

    @classmethod
    def from_float(cls, conv: nn.Conv2d, rank: int) -> "LowRankConv2d":
        """Truncated SVD of the conv's weight matrix [Cout, Cin kh kw] at `rank`."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"LowRankConv2d.from_float expects an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight.detach().float().reshape(conv.out_channels, -1)
        math_.check_rank("LowRankConv2d.from_float", rank, *w.shape)
        f = math_.truncated_svd(w, rank)
        return cls.from_matrices(conv, f.up, f.down)

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        from .sparse_conv import conv_matches_config

        return getattr(module, "groups", None) == 1 and conv_matches_config(
            module, cfg, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias"))

    def config_fields(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "rank": self.rank, "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "bias": self.up.bias is not None}

    def dequantized_weight(self) -> torch.Tensor:
        """The conv weight U @ V, float32 [Cout, Cin, kh, kw]."""
        up = self.up.weight.detach().float().reshape(self.out_channels, self.rank)
        return (up @ self.down.weight.detach().float().reshape(self.rank, -1)).reshape(self.weight_shape)

    def validate_state(self) -> None:
        _check_float_factors(self)

    @property
    def weight(self) -> torch.Tensor:
        w = self.dequantized_weight().to(self.weight_dtype)
        w._is_hf_initialized = True
        return w

    @property
    def kept_fraction(self) -> float:
        return math_.kept_fraction(self.rank, self.out_channels, self.weight_shape[1] * self.kernel_size[0]
                                   * self.kernel_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def format_summary(self) -> str:
        return f"rank {self.rank} ({100 * self.kept_fraction:.1f}% of the parameters)"

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.up.bias is not None}, kept={100 * self.kept_fraction:.1f}% of the parameters")
