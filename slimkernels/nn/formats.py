"""Weight formats of QuantLinear: one class per format, registered by its mode name.

A format object (one per layer, holding that layer's options such as the group size) knows
  layout      buffers(): the saved buffers (name -> shape, dtype, initial fill; None = registered
              but absent, as weight_zero of symmetric int4), `packed`: the derived buffers repack()
              rebuilds (never saved), encode(*parts): the buffers from unpacked tensors
  running     forward(module, x): which op, dequantize(module): the float32 [N, K] weight
  describing  options / config_fields(): the extra layer-config fields (also QuantLinear's keyword
              arguments), summary(): a few words for repr and reports, `description`
  checks      check(module): what load must refuse beyond NaN/Inf (CompressedModule checks those)
  QAT         fit / round / dequantize_parts / fake_quantize_input: the round-to-nearest step
              FakeQuantLinear trains through, in the same arithmetic as the layer it converts to.
The quantization algorithms that choose the tensors (RTN, GPTQ, k-means) run in the passes
(slimkernels.compress.quantize.quantize_layer), not here.

Formats and their saved state (the packed layouts are specified in quant/lowbit.py):
  "w8a8"     dynamic int8: activations quantized per token at run time, weights per output channel,
             one int8 GEMM with the dequantize epilogue fused (int8_dynamic_linear).
             Saved: qweight int8 [N, K], weight_scale float32 [N]. Held: packed_weight (int8_prepack,
             for the device the layer is on) INSTEAD of qweight, which is unpacked from it when saved
             or read (one copy of the weight in memory); relaid out when the layer moves device.
             Option act_bits: 8, or 7 (activations to |q| <= 63, for the AVX2 kernel's vpmaddubsw path);
             saved in the layer config only when 7, so layers saved without it load as 8.
  "w8a16"    weight-only int8 (dequant_mm_int8): qweight int8 [N, K], weight_scale float32 [N]
  "w4a16"    weight-only int4, group-wise (dequant_mm_int4): qweight uint8 [N, ceil(K/2)],
             weight_scale float32 [N, K/g], weight_zero uint8 [N, K/g] (absent when symmetric)
  "w4a8"     w4a16's weights (same buffers and saved layout) times activations quantized per token to
             int8 at run time, integer dot products (dequant_mm_int4_a8)
  "codebook" weight sharing (lut_mm): qweight uint8 [N, ceil(K*bits/8)] packed codes,
             codebook float32 [1 or N, 2^bits]

A new format is a subclass of WeightFormat decorated with @register_format; QuantLinear(...,
mode=<its mode>), QuantLinear.from_parts, save and load then work with it unchanged.
"""
from __future__ import annotations

import functools
from typing import ClassVar, NamedTuple, Optional

import torch

from .. import _native, ops
from .._switch import CPU_BF16
from ..backends import BACKEND, CPU_AMX, CPU_ISA
from ..backends.quantize import act_qmax, quantize_rows_int8
from ..ops import _checks
from ..quant import lowbit
from ..quant.packing import int8_packed_shape
from .base import PackedState


class BufferSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: float = 0


_FORMATS: dict[str, type["WeightFormat"]] = {}


def register_format(cls: type["WeightFormat"]) -> type["WeightFormat"]:
    """Class decorator: make `cls` the format of QuantLinear mode `cls.mode`."""
    known = _FORMATS.get(cls.mode)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"weight format {cls.mode!r} is already registered by {known.__module__}.{known.__qualname__}")
    _FORMATS[cls.mode] = cls
    return cls


def weight_format(mode) -> type["WeightFormat"]:
    """The format class of a QuantLinear mode."""
    try:
        return _FORMATS[mode]
    except (KeyError, TypeError):
        raise ValueError(f"QuantLinear: mode must be one of {sorted(_FORMATS)}, got {mode!r}") from None


def weight_formats() -> dict[str, type["WeightFormat"]]:
    """Every registered format, by mode (a copy)."""
    return dict(_FORMATS)


class WeightFormat:
    """One weight format; an instance describes one layer's ([N, K] = [out_features, in_features])."""

    mode: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()  # extra layer-config fields = QuantLinear keyword arguments
    packed: ClassVar[tuple[str, ...]] = ()  # derived, unsaved buffers that repack() sets

    def __init__(self, in_features: int, out_features: int):
        self.in_features, self.out_features = in_features, out_features

    def packed_state(self) -> dict:
        """Saved buffers held only in a `packed` buffer (nn.base.PackedState by saved name; default none)."""
        return {}

    # ---- layout -----------------------------------------------------------------------------------
    def buffers(self) -> dict[str, Optional[BufferSpec]]:
        """The saved buffers, in state_dict order (QuantLinear adds bias after them)."""
        raise NotImplementedError

    def encode(self, *parts: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """The saved buffers from the unpacked tensors of QuantLinear.from_parts (same order as round())."""
        raise NotImplementedError

    @classmethod
    def fields_from_parts(cls, *parts: torch.Tensor) -> dict:
        """in_features, out_features and the options the unpacked tensors imply. Default: the first
        part is [N, K]."""
        n, k = parts[0].shape
        return {"in_features": k, "out_features": n}

    # ---- running ----------------------------------------------------------------------------------
    def forward(self, module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, module) -> torch.Tensor:
        """The float32 [N, K] weight the layer multiplies by."""
        raise NotImplementedError

    def repack(self, module) -> None:
        """Rebuild the `packed` buffers of `module` from its saved ones."""

    def fast_path(self, module) -> Optional["FastPath"]:
        """The eager batch-1 shortcut for `module`'s buffers as they are now, or None (the op runs).
        QuantLinear asks again whenever its buffers change (assignment, load, device moves, casts)."""
        return None

    def check(self, module) -> None:
        """Raise ValueError for loaded values the ops do not re-check per call (NaN/Inf in float
        state is checked for every format by CompressedModule.validate_state)."""

    # ---- describing -------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {name: getattr(self, name) for name in self.options}

    def summary(self) -> str:
        """A few words on the format, e.g. 'w4a16 g128 asym' or 'codebook 4-bit per row'."""
        return self.mode

    # ---- QAT: the round-to-nearest step FakeQuantLinear trains through ------------------------------------
    @classmethod
    def default_config(cls):
        """The pass config of this format with default settings (QuantLinear.from_float(linear, mode))."""
        raise ValueError(f"QuantLinear: format {cls.mode!r} has no default quantization config")

    @classmethod
    def options_from_config(cls, config) -> dict:
        return {name: getattr(config, name) for name in cls.options}

    def fit(self, w: torch.Tensor, config) -> dict[str, torch.Tensor]:
        """State fitted once when QAT prepares the layer and kept fixed while it trains (buffers of
        the FakeQuantLinear). Default: none."""
        return {}

    def round(self, w: torch.Tensor, state: dict) -> tuple:
        """The unpacked tensors (from_parts order) of float32 weight w [N, K], rounded to nearest."""
        raise NotImplementedError(f"format {self.mode!r} has no round-to-nearest step (QAT)")

    def dequantize_parts(self, parts: tuple) -> torch.Tensor:
        """float32 [N, K] from round()'s tensors: the values `dequantize` gives once they are encoded."""
        raise NotImplementedError(f"format {self.mode!r} has no round-to-nearest step (QAT)")

    def fake_quantize_input(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The activations as the layer's op rounds them, or None when it keeps them float."""
        return None


class _Int8PerChannel(WeightFormat):
    def buffers(self):
        n, k = self.out_features, self.in_features
        return {"qweight": BufferSpec((n, k), torch.int8), "weight_scale": BufferSpec((n,), torch.float32, 1)}

    def encode(self, qweight, scale):
        return {"qweight": qweight, "weight_scale": scale}

    def dequantize(self, module):
        return module.qweight.float() * module.weight_scale[:, None]

    def round(self, w, state):
        return quantize_rows_int8(w)

    def dequantize_parts(self, parts):
        q, scale = parts
        return q.float() * scale[:, None]


@register_format
class W8A8(_Int8PerChannel):
    mode = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"
    packed = ("packed_weight",)
    options = ("act_bits",)

    def __init__(self, in_features, out_features, act_bits: int = 8):
        """act_bits=7: activations quantized to |q| <= 63 (int8_dynamic_linear(act_bits=7)); checkpoints
        saved before the option load as 8."""
        super().__init__(in_features, out_features)
        if type(act_bits) is not int or act_bits not in (7, 8):
            raise ValueError(f"QuantLinear: w8a8 act_bits must be 7 or 8, got {act_bits!r}")
        self.act_bits = act_bits
        n, k = out_features, in_features
        self._packed_state = {"qweight": PackedState("packed_weight", (n, k), torch.int8, ops.int8_prepack,
                                                     functools.partial(ops.int8_unpack, n=n, k=k))}

    @classmethod
    def options_from_config(cls, config) -> dict:
        # Int8WeightOnlyConfig(act="int8") is W8A8 too, with 8-bit activations
        return {"act_bits": getattr(config, "act_bits", 8)}

    def packed_state(self):
        return self._packed_state

    def forward(self, module, x):
        return ops.int8_dynamic_linear(x, module.packed_weight, module.weight_scale, module.bias, self.act_bits)

    def fast_path(self, module):
        packed, scale, bias = module.packed_weight, module.weight_scale, module.bias
        n, k = self.out_features, self.in_features
        if not FastPath.usable(n, (packed, int8_packed_shape("cpu", n, k), torch.int8), (scale, (n,), torch.float32),
                               (bias, (n,), torch.float32)):
            return None
        # the binding int8_dynamic_linear_cpu (backends/int8_mm.py) calls: the same kernel, the same result
        call, qmax = _native._C.int8_dynamic_linear, act_qmax(self.act_bits)

        def run(x_ptr, m, out_ptr, threads, isa):  # pointers read per call: `.data =` may swap a storage
            call(x_ptr, k, "float32", packed.data_ptr(), scale.data_ptr(), 0 if bias is None else bias.data_ptr(),
                 m, n, k, out_ptr, n, threads, isa, qmax, CPU_AMX.get())

        return FastPath(n, k, run, (packed, scale, bias))

    def dequantize(self, module):
        return ops.int8_unpack(module.packed_weight, self.out_features, self.in_features).float() * \
            module.weight_scale[:, None]

    def repack(self, module):
        # packed_weight is the only copy of the weight: after a device move it is still in the old
        # device's layout, so it is unpacked and packed again for the new one.
        packed, n, k = module.packed_weight, self.out_features, self.in_features
        if tuple(packed.shape) != int8_packed_shape(packed.device.type, n, k):
            module.packed_weight = ops.int8_prepack(ops.int8_unpack(packed, n, k))

    @classmethod
    def default_config(cls):
        from ..compress.config import Int8DynamicConfig

        return Int8DynamicConfig()

    def fake_quantize_input(self, x):
        return fake_quantize_rows_int8(x, act_qmax(self.act_bits))

    def summary(self):
        return "w8a8" if self.act_bits == 8 else f"w8a8 act{self.act_bits}"

    def config_fields(self):
        # the default is not written: 8-bit layers keep the layer config they had before the option
        return {} if self.act_bits == 8 else {"act_bits": self.act_bits}


@register_format
class W8A16(_Int8PerChannel):
    mode = "w8a16"
    description = "int8 per-channel weights, float activations"

    def forward(self, module, x):
        return ops.dequant_mm_int8(x, module.qweight, module.weight_scale, module.bias)

    def fast_path(self, module):
        qweight, scale, bias = module.qweight, module.weight_scale, module.bias
        n, k = self.out_features, self.in_features
        if not FastPath.usable(n, (qweight, (n, k), torch.int8), (scale, (n,), torch.float32), (bias, (n,), torch.float32)):
            return None
        call = _native._C.dequant_mm_int8  # as dequant_mm_int8_cpu (backends/dequant_int8.py) calls it

        def run(x_ptr, m, out_ptr, threads, isa):
            call(x_ptr, k, "float32", qweight.data_ptr(), k, scale.data_ptr(), 0 if bias is None else bias.data_ptr(),
                 out_ptr, n, m, n, k, threads, isa, CPU_AMX.get())

        return FastPath(n, k, run, (qweight, scale, bias))

    @classmethod
    def default_config(cls):
        from ..compress.config import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


@register_format
class W4A16(WeightFormat):
    mode = "w4a16"
    description = "int4 group-wise weights, float activations"
    options = ("group_size", "symmetric")

    def __init__(self, in_features, out_features, group_size: int = 128, symmetric: bool = False):
        """group_size -1 (or None): one group per output channel."""
        super().__init__(in_features, out_features)
        self.group_size = in_features if group_size in (-1, None) else group_size
        _checks.group_size("QuantLinear", self.group_size, in_features)
        self.symmetric = bool(symmetric)

    def buffers(self):
        n, k = self.out_features, self.in_features
        groups = k // self.group_size
        zero = None if self.symmetric else BufferSpec((n, groups), torch.uint8, lowbit.INT4_ZERO_SYMMETRIC)
        return {"qweight": BufferSpec((n, lowbit.packed_row_bytes(k, 4)), torch.uint8),
                "weight_scale": BufferSpec((n, groups), torch.float32, 1), "weight_zero": zero}

    def encode(self, codes, scales, zeros):
        return {"qweight": lowbit.pack_codes(codes, 4), "weight_scale": scales, "weight_zero": zeros}

    @classmethod
    def fields_from_parts(cls, codes, scales, zeros):
        fields = super().fields_from_parts(codes)
        k, groups = codes.shape[1], scales.shape[-1]
        if groups and k % groups == 0:
            fields["group_size"] = k // groups
        return {**fields, "symmetric": zeros is None}

    def forward(self, module, x):
        return ops.dequant_mm_int4(x, module.qweight, module.weight_scale, module.weight_zero, self.group_size, module.bias)

    def fast_path(self, module):
        n, k = self.out_features, self.in_features
        groups = k // self.group_size
        qweight, scale, zero, bias = module.qweight, module.weight_scale, module.weight_zero, module.bias
        if not FastPath.usable(n, (qweight, (n, lowbit.packed_row_bytes(k, 4)), torch.uint8),
                               (scale, (n, groups), torch.float32), (zero, (n, groups), torch.uint8),
                               (bias, (n,), torch.float32)):
            return None
        return FastPath(n, k, self._native_run(qweight, scale, zero, bias), (qweight, scale, zero, bias))

    def _native_run(self, qweight, scale, zero, bias):
        """FastPath's call of the native kernel of this format's op."""
        n, k = self.out_features, self.in_features
        return _lowbit_run(qweight, 4, "int4", n, k, scale, zero, self.group_size, None, bias)

    def dequantize(self, module):
        return lowbit.dequantize_int4(module.qweight, module.weight_scale, module.weight_zero, self.group_size,
                                      self.in_features)

    def check(self, module):
        zeros = module.weight_zero
        if zeros is not None and zeros.numel() and int(zeros.max()) > 15:
            raise ValueError(f"QuantLinear: weight_zero holds {int(zeros.max())}; 4-bit zero points lie in 0..15")

    def summary(self):
        group = "per-channel" if self.group_size == self.in_features else f"g{self.group_size}"
        return f"{self.mode} {group} {'sym' if self.symmetric else 'asym'}"

    @classmethod
    def default_config(cls):
        from ..compress.config import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig()

    def round(self, w, state):
        from ..quant.int4 import quantize_int4_rtn

        return quantize_int4_rtn(w, self.group_size, self.symmetric)

    def dequantize_parts(self, parts):
        from ..quant.int4 import dequantize_int4_codes

        return dequantize_int4_codes(*parts, self.group_size)


@register_format
class W4A8(W4A16):
    """W4A16's weights, activations quantized per token to int8 as W8A8 quantizes them."""

    mode = "w4a8"
    description = "int4 group-wise weights x int8 per-token activations"

    def forward(self, module, x):
        return ops.dequant_mm_int4_a8(x, module.qweight, module.weight_scale, module.weight_zero, self.group_size,
                                      module.bias)

    def _native_run(self, qweight, scale, zero, bias):
        n, k, group_size = self.out_features, self.in_features, self.group_size
        call = _native._C.dequant_mm_int4_a8  # as dequant_mm_int4_a8_cpu (backends/lowbit.py) calls it

        def run(x_ptr, m, out_ptr, threads, isa):
            call(x_ptr, k, "float32", qweight.data_ptr(), scale.data_ptr(), 0 if zero is None else zero.data_ptr(),
                 group_size, 0 if bias is None else bias.data_ptr(), out_ptr, n, m, n, k, threads, isa)

        return run

    @classmethod
    def default_config(cls):
        from ..compress.config import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(act="int8")

    def fake_quantize_input(self, x):
        return fake_quantize_rows_int8(x)


@register_format
class Codebook(WeightFormat):
    mode = "codebook"
    description = "codebook-indexed weights, float activations"
    options = ("bits", "per")

    def __init__(self, in_features, out_features, bits: int = 4, per: str = "row"):
        super().__init__(in_features, out_features)
        if bits not in lowbit.CODE_BITS or per not in ("row", "layer"):
            raise ValueError(f"QuantLinear: codebook mode needs bits in {lowbit.CODE_BITS} and per in ('row', 'layer'), "
                             f"got {bits!r}, {per!r}")
        self.bits, self.per = bits, per

    def buffers(self):
        n, k = self.out_features, self.in_features
        return {"qweight": BufferSpec((n, lowbit.packed_row_bytes(k, self.bits)), torch.uint8),
                "codebook": BufferSpec((n if self.per == "row" else 1, 1 << self.bits), torch.float32)}

    def encode(self, codes, codebook):
        return {"qweight": lowbit.pack_codes(codes, self.bits), "codebook": codebook}

    @classmethod
    def fields_from_parts(cls, codes, codebook):
        fields = super().fields_from_parts(codes)
        n = fields["out_features"]
        return {**fields, "bits": lowbit.bits_from_codebook(codebook.shape[1]),
                "per": "layer" if codebook.shape[0] == 1 and n != 1 else "row"}

    def forward(self, module, x):
        return ops.lut_mm(x, module.qweight, module.codebook, module.bias)

    def fast_path(self, module):
        n, k = self.out_features, self.in_features
        qweight, codebook, bias = module.qweight, module.codebook, module.bias
        rows = n if self.per == "row" else 1
        if not FastPath.usable(n, (qweight, (n, lowbit.packed_row_bytes(k, self.bits)), torch.uint8),
                               (codebook, (rows, 1 << self.bits), torch.float32), (bias, (n,), torch.float32)):
            return None
        return FastPath(n, k, _lowbit_run(qweight, self.bits, "codebook", n, k, None, None, k, codebook, bias),
                        (qweight, codebook, bias))

    def dequantize(self, module):
        return lowbit.dequantize_codebook(module.qweight, module.codebook, self.in_features)

    def summary(self):
        return f"codebook {self.bits}-bit per {self.per}"

    @classmethod
    def default_config(cls):
        from ..compress.config import CodebookConfig

        return CodebookConfig()

    def fit(self, w, config):
        # fitted once (k-means / NF4 / pow2 on the weights as prepared); QAT keeps it fixed
        from ..quant.codebook import fit_codebook

        _, codebook = fit_codebook(w, config.bits, config.codebook, config.per, seed=config.seed,
                                   keep_zero=config.keep_zero)
        return {"codebook": codebook}

    def round(self, w, state):
        from ..quant.codebook import assign_codes

        codebook = state["codebook"]
        return assign_codes(w, codebook.to(w.device)), codebook

    def dequantize_parts(self, parts):
        codes, codebook = parts
        return torch.gather(codebook.to(codes.device).expand(codes.shape[0], -1), 1, codes.long())


def fake_quantize_rows_int8(x: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Per-row symmetric int8 quantize + dequantize (the rounding of quantize_per_token_int8; |q| <= qmax)."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    q, scale = quantize_rows_int8(rows.detach(), qmax)
    return (q.float() * scale[:, None]).reshape(x.shape).to(x.dtype)


def _lowbit_run(codes, bits, lut_kind, n, k, scales, zeros, group_size, codebook, bias):
    """FastPath's call of the native low-bit kernel, as _lowbit_cpu (backends/lowbit.py) makes it."""
    call = _native._C.lowbit_mm
    codebook_rows = 0 if codebook is None else codebook.shape[0]

    def ptr(t):
        return 0 if t is None else t.data_ptr()

    def run(x_ptr, m, out_ptr, threads, isa):
        call(x_ptr, k, "float32", codes.data_ptr(), bits, lut_kind, ptr(scales), ptr(zeros), group_size, ptr(codebook),
             codebook_rows, ptr(bias), out_ptr, n, m, n, k, threads, isa, CPU_AMX.get())

    return run


class FastPath:
    """The eager shortcut of a layer at small batch: the native kernel called straight from forward,
    without the op's checks and dispatch (tens of microseconds of Python per call, more than the
    kernel itself takes for a 768x768 layer at M = 1). The layer's own tensors were checked once when
    this was built (fast_path); each call checks only what the input and the context can change, and
    answers None (the op runs instead) when anything else could be watching or needs the op:
    torch.compile / export / jit tracing, tensor subclasses (fake, functorch), torch function or
    dispatch modes, autograd, a backend forced to other than "native", inputs that are not contiguous
    float32 CPU tensors of K features, empty inputs (QuantLinear.forward checks compiling and tracing). The kernel and its arguments are those of the op's
    native implementation, so the results are the same bits."""

    __slots__ = ("n", "k", "run", "tensors", "float_tensors")

    def __init__(self, n, k, run, tensors):
        self.n, self.k, self.run = n, k, run
        self.tensors = tensors  # the layer's tensors `run` reads
        self.float_tensors = tuple(t for t in tensors if t is not None and t.is_floating_point())

    @staticmethod
    def usable(n, *specs) -> bool:
        """Whether the native CPU kernel can read these (tensor, shape, dtype) as they are (None: absent)."""
        if _native._C is None or n == 0:
            return False
        return all(t is None or (type(t) is torch.Tensor and t.is_cpu and t.dtype == dtype and tuple(t.shape) == shape
                                 and t.is_contiguous()) for t, shape, dtype in specs)

    def __call__(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if (type(x) is not torch.Tensor or x.dtype is not torch.float32 or not x.is_cpu or not x.dim()
                or x.shape[-1] != self.k or not x.is_contiguous() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack() or BACKEND.get() not in (None, "native")
                or CPU_BF16.get() == "on"):
            # cpu_bf16 "on" picks other kernels (backends/lowbit.weight_only_isa); "auto" picks none yet
            # (its thresholds are None): a threshold set there must be mirrored here.
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in self.float_tensors)):
            return None  # the op's autograd (and its error for a weight that asks for a gradient)
        m = x.numel() // self.k
        if m == 0:
            return None
        out = torch.empty((*x.shape[:-1], self.n), dtype=torch.float32, device="cpu")
        self.run(x.data_ptr(), m, out.data_ptr(), max(1, torch.get_num_threads()), CPU_ISA.get() or "")
        return out
