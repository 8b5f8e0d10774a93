"""Suite of the sparse family: sparse layers (CSR with float32 and int8 values, BSR, 2:4) through each
implementation usable on the device, against dense float32 and bfloat16 F.linear, torch's CSR matmul
(`weight.to_sparse_csr()`) and our dense W8A8.

Sparsities: SLIMKERNELS_BENCH_SPARSITY (e.g. "0.8", or "0.9,0.5": unstructured and block, then N:M's
own, which only 0.5 fits), default 0.9 for unstructured and block and 0.5 for 2:4 (the pattern's).
The BSR block shape: SLIMKERNELS_BENCH_BLOCK ("4x16"), default BSR_BLOCK. The sparse weights are drawn
from the stack's float weights with a seeded random mask (magnitude pruning of random weights is a
random mask too, and costs a sort of every layer)."""
from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F

from ..registry import Case, EntrySpec, Inputs, Work, register
from ..stacks import Stack
from .int8_mm import int8_layers

SPARSITY = 0.9  # unstructured and block
NM_SPARSITY = 0.5  # 2:4
BSR_BLOCK = (4, 16)  # the fastest block at 90% (bench/results/2026-11-30-sparse-cpu.md): SIMD over K
_ENV_SPARSITY, _ENV_BLOCK = "SLIMKERNELS_BENCH_SPARSITY", "SLIMKERNELS_BENCH_BLOCK"


def sparsities() -> tuple[float, float]:
    """(unstructured and block sparsity, N:M sparsity) from SLIMKERNELS_BENCH_SPARSITY or the defaults."""
    text = os.environ.get(_ENV_SPARSITY, "").strip()
    if not text:
        return SPARSITY, NM_SPARSITY
    vals = [float(v) for v in text.split(",")]
    if not all(0 <= v < 1 for v in vals) or len(vals) > 2:
        raise ValueError(f"{_ENV_SPARSITY} must be one or two sparsities in [0, 1), got {text!r}")
    return vals[0], vals[1] if len(vals) > 1 else NM_SPARSITY


def block_shape() -> tuple[int, int]:
    text = os.environ.get(_ENV_BLOCK, "").strip()
    if not text:
        return BSR_BLOCK
    bn, bk = (int(v) for v in text.lower().split("x"))
    return bn, bk


def _masked(stack: Stack, fmt: str, sparsity: float, block=(1, 1)) -> list[torch.Tensor]:
    """The stack's float32 weights with `sparsity` of their entries (or bn x bk blocks, or per group
    of 4: the 2 smallest) set to zero."""
    from ...quant import sparse as layout

    def build():
        gen = torch.Generator(device=stack.device).manual_seed(11)
        out = []
        for w in stack.weights:
            w = w.float()
            if fmt == "2:4":
                out.append(w * layout.nm_mask(w, 4))
                continue
            bn, bk = block
            keep = torch.rand(stack.n // bn, 1, stack.k // bk, 1, generator=gen, device=stack.device) >= sparsity
            out.append((w.reshape(stack.n // bn, bn, stack.k // bk, bk) * keep).reshape(stack.n, stack.k))
        return out

    return stack.form(("sparse_masked", fmt, sparsity, block), build)


def sparse_weights(stack: Stack, fmt: str, dtype: torch.dtype, sparsity: float, block=(1, 1)) -> list[tuple]:
    """Per layer the packed tensors of `fmt` ("csr" | "bsr" | "2:4") with values in `dtype`."""
    from ...quant import sparse as layout

    def build():
        pack = {"csr": lambda w: layout.pack_csr(w, dtype), "bsr": lambda w: layout.pack_bsr(w, block, dtype),
                "2:4": lambda w: layout.pack_nm(w, 4, dtype)}[fmt]
        return [tuple(pack(w)) for w in _masked(stack, fmt, sparsity, block if fmt == "bsr" else (1, 1))]

    return stack.form(("sparse", fmt, dtype, sparsity, block), build)


def _packed_bytes(packed: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in packed if isinstance(t, torch.Tensor))


def _ours(fmt: str, dtype: torch.dtype, sparsity: float, block=(1, 1)):
    from ... import ops

    def build(i: Inputs) -> Work:
        weights = sparse_weights(i.stack, fmt, dtype, sparsity, block)
        if fmt == "csr":
            calls = [functools.partial(ops.spmm_csr, i.x, *w) for w in weights]
        elif fmt == "bsr":
            calls = [functools.partial(ops.spmm_bsr, i.x, *w) for w in weights]
        else:
            calls = [functools.partial(ops.spmm_24, i.x, *w, 4) for w in weights]
        return Work(calls, i.fsize * (i.m * i.k + i.m * i.n) + _packed_bytes(weights[0]))

    return build


def _f_linear(dtype: torch.dtype):
    def build(i: Inputs) -> Work:
        ws = i.stack.weights if dtype == i.stack.dtype else i.stack.form(("weights", dtype),
                                                                        lambda: [w.to(dtype) for w in i.stack.weights])
        x = i.x.to(dtype)
        size = torch.finfo(dtype).bits // 8
        return Work([functools.partial(F.linear, x, w) for w in ws], size * (i.m * i.k + i.n * i.k + i.m * i.n))

    return build


def _torch_csr(sparsity: float):
    """torch's sparse CSR tensor (the float32 weight's nonzeros) @ x.T, as `torch.sparse.mm`."""

    def build(i: Inputs) -> Work:
        def csr_mats():
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                return [w.to_sparse_csr() for w in _masked(i.stack, "csr", sparsity)]

        mats = i.stack.form(("torch_csr", sparsity), csr_mats)
        xt = i.x.float().T
        nnz = mats[0].values().numel()
        return Work([functools.partial(torch.sparse.mm, w, xt) for w in mats],
                    4 * (i.m * i.k + i.m * i.n) + 12 * nnz + 8 * (i.n + 1))

    return build


@register("sparse", family="sparse", op="spmm (sparse layers)", default=False, description=(
    "sparse layers: spmm_csr (float32 and int8 values), spmm_bsr (float32, 4x16 blocks) at 90% sparsity and "
    "spmm_24 (2:4, float32 and bfloat16 values; '2of4'), once per implementation usable on the device, against dense "
    "fp32 and bf16 F.linear, torch's CSR matmul and our W8A8 (SLIMKERNELS_BENCH_SPARSITY, SLIMKERNELS_BENCH_BLOCK "
    "change the sparsity and block)"))
def sparse(case: Case) -> list[EntrySpec]:
    s, s_nm = sparsities()
    block = block_shape()
    pct = lambda v: f"{round(v * 100)}"  # noqa: E731
    bn, bk = block
    block_skip = None if case.n % bn == 0 and case.k % bk == 0 else f"block {bn}x{bk} does not divide {case.n}x{case.k}"
    nm_skip = None if case.k % 4 == 0 else f"K={case.k} is not a multiple of 4"
    entries = [
        ("spmm_csr", "csr-fp32", "csr", torch.float32, s, (1, 1), None),
        ("spmm_csr", "csr-int8", "csr_int8", torch.int8, s, (1, 1), None),
        ("spmm_bsr", f"bsr{bn}x{bk}-fp32", "bsr", torch.float32, s, block, block_skip),
        ("spmm_24", "2of4-fp32", "nm24", torch.float32, s_nm, (1, 1), nm_skip),
        ("spmm_24", "2of4-bf16", "nm24_bf16", torch.bfloat16, s_nm, (1, 1), nm_skip),
    ]
    specs: list[EntrySpec] = []
    for op, label, ident, dtype, sp, blk, skip in entries:
        fmt = {"spmm_csr": "csr", "spmm_bsr": "bsr", "spmm_24": "2:4"}[op]
        for impl in case.implementations(op):
            if impl == "torch":  # torch's CSR matmul is the anchor below
                continue
            specs += case.ours(f"{label}-{pct(sp)}%:{impl}", f"{ident}_{impl}", _ours(fmt, dtype, sp, blk), impl=impl,
                               backend=impl, skip=skip)
    if case.device == "cpu":
        specs += case.anchor("fp32 F.linear", "fp32_linear", _f_linear(torch.float32), dtype=torch.float32)
    specs += case.anchor("bf16 F.linear", "bf16_linear", _f_linear(torch.bfloat16), dtype=torch.bfloat16)
    specs += case.anchor(f"torch CSR {pct(s)}%", "torch_csr", _torch_csr(s), dtype=torch.float32)
    specs += case.anchor("w8a8 (ours, dense)", "w8a8", int8_layers("w8a8"))
    return specs
