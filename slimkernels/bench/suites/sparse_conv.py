"""Suite of the sparse_conv family: sparse_conv2d (native) at several sparsities against torch's dense
conv2d, in NCHW and channels_last, on the ResNet-50 conv layers.

The harness speaks (N, K, M): a conv layer is N = Cout, K = Cin*kh*kw (the CSR weight's shape), and
M = the batch. The spatial size and kernel come from CONV_LAYERS; other (N, K) are skipped with a reason.
The stack's random [N, K] weights are the layers' weights, pruned at random to each sparsity (the
kernel's time depends on the count of nonzeros per output channel, not on where they are). Run:

    python -m slimkernels bench --suite sparse_conv --shapes 64x576,256x2304,64x256,256x1024 --m 1,8 --layers 4
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..registry import Case, EntrySpec, Inputs, Work, register

# (Cout, Cin*kh*kw) -> (Cin, k, H = W): ResNet-50's convs (stride 1; 3x3 with padding 1).
CONV_LAYERS = {
    (64, 576): (64, 3, 56),     # layer1 3x3 64->64 at 56x56
    (256, 2304): (256, 3, 14),  # layer3 3x3 256->256 at 14x14
    (64, 256): (256, 1, 56),    # layer1 1x1 256->64 at 56x56
    (256, 1024): (1024, 1, 14),  # layer3 1x1 1024->256 at 14x14
}
SHAPES = ",".join(f"{n}x{k}" for n, k in CONV_LAYERS)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _geometry(i: Inputs) -> tuple[int, int, int]:
    return CONV_LAYERS[(i.n, i.k)]


def _x(i: Inputs, fmt) -> torch.Tensor:
    cin, _, hw = _geometry(i)
    x = torch.randn(i.m, cin, hw, hw, generator=i.gen, device=i.device).to(i.dtype)
    return x.contiguous(memory_format=fmt)


def _conv_weights(i: Inputs) -> list[torch.Tensor]:
    cin, k, _ = _geometry(i)
    return i.stack.form("conv_weights", lambda: [w.reshape(i.n, cin, k, k) for w in i.stack.weights])


def _pruned(i: Inputs, sparsity: float) -> list[tuple]:
    """The CSR tensors of every layer pruned at random to `sparsity`."""
    from ...quant.sparse import pack_csr

    def build():
        gen = torch.Generator(device=i.device).manual_seed(11)
        out = []
        for w in i.stack.weights:
            keep = torch.rand(w.shape, generator=gen, device=i.device) >= sparsity
            out.append(pack_csr(w.float() * keep))
        return out

    return i.stack.form(("conv_csr", sparsity), build)


def _bytes(i: Inputs, out_hw: int, weight_bytes: int) -> int:
    cin, _, hw = _geometry(i)
    return i.fsize * i.m * (cin * hw * hw + i.n * out_hw * out_hw) + weight_bytes


def _ours(sparsity: float, fmt):
    def build(i: Inputs) -> Work:
        from ... import ops

        _, k, hw = _geometry(i)
        pad = k // 2
        x = _x(i, fmt)
        layers = _pruned(i, sparsity)
        calls = [functools.partial(ops.sparse_conv2d, x, c.row_ptr, c.col_idx, c.values, c.scales, b, [k, k], [1, 1],
                                   [pad, pad], [1, 1], 1) for c, b in zip(layers, i.stack.biases)]
        nnz = layers[0].col_idx.numel()
        return Work(calls, _bytes(i, hw, 6 * nnz + 4 * i.n), ops=2 * nnz * i.m * hw * hw)

    return build


def _dense(fmt):
    def build(i: Inputs) -> Work:
        _, k, hw = _geometry(i)
        x = _x(i, fmt)
        calls = [functools.partial(F.conv2d, x, w.to(i.dtype), b.to(i.dtype), 1, k // 2)
                 for w, b in zip(_conv_weights(i), i.stack.biases)]
        return Work(calls, _bytes(i, hw, i.fsize * i.n * i.k), ops=2 * i.n * i.k * i.m * hw * hw)

    return build


@register("sparse_conv", family="sparse_conv", op="sparse_conv2d", default=False, description=(
    "sparse_conv2d (native, CSR weight pruned at random to 50/70/80/90/95%) against torch's dense F.conv2d, "
    "NCHW and channels_last, on the ResNet-50 convs (N=Cout, K=Cin*kh*kw, M=batch; --shapes " + SHAPES + ")"))
def sparse_conv(case: Case) -> list[EntrySpec]:
    skip = None if (case.n, case.k) in CONV_LAYERS else (
        f"{case.n}x{case.k} is not a conv layer of this suite; use --shapes {SHAPES}")
    impl = case.resolve("sparse_conv2d")
    specs: list[EntrySpec] = []
    for tag, fmt in FORMATS.items():
        for s in SPARSITIES:
            pct = f"{round(100 * s)}"
            specs += case.ours(f"{impl} {pct}% {tag}", f"{impl}_{pct}_{tag}", _ours(s, fmt), impl=impl, skip=skip,
                               dtypes=False)
        specs += case.anchor(f"fp32 F.conv2d {tag}", f"fp32_conv2d_{tag}", _dense(fmt), skip=skip)
    return specs
