"""Suite of the low_rank family: low_rank_linear ((x V^T) U^T + bias) at rank 512 and 1024, once per
implementation usable on the device, against the two matmuls it replaces (F.linear twice, what
LowRankLinear ran before the op) and dense F.linear on the stack's weights (all stream from memory: the
stack defeats the cache).

Each layer of the stack gets its own random factors (the kernel's speed does not depend on their
values; an SVD of every layer would cost seconds). The ideal speed-up over dense float32 is the ratio of
the bytes read, N K / (r (N + K))."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..registry import Case, EntrySpec, Inputs, Work, register
from .sparse import _f_linear

RANKS = (512, 1024)


def low_rank_factors(stack, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer of the stack, random float32 factors (v [r, K], u [N, r]), scaled like the weights."""
    rank = min(rank, stack.n, stack.k)

    def build():
        gen = torch.Generator(device=stack.device).manual_seed(13)
        return [(torch.randn(rank, stack.k, generator=gen, device=stack.device) * stack.k**-0.5,
                 torch.randn(stack.n, rank, generator=gen, device=stack.device) * rank**-0.5) for _ in stack.weights]

    return stack.form(("low_rank_factors", rank), build)


def _bytes(i: Inputs, rank: int) -> int:
    return i.x.element_size() * (i.m * i.k + i.m * i.n) + 4 * rank * (i.n + i.k) + 4 * i.n


def _ours(rank: int):
    from ... import ops

    def build(i: Inputs) -> Work:
        layers = low_rank_factors(i.stack, rank)
        calls = [functools.partial(ops.low_rank_linear, i.x, v, u, b) for (v, u), b in zip(layers, i.stack.biases)]
        return Work(calls, _bytes(i, layers[0][0].shape[0]), ops=2 * i.m * layers[0][0].shape[0] * (i.n + i.k))

    return build


def _two_matmuls(rank: int):
    def build(i: Inputs) -> Work:
        layers = low_rank_factors(i.stack, rank)
        x = i.x.float()
        calls = [functools.partial(lambda x, v, u, b: F.linear(F.linear(x, v), u, b), x, v, u, b)
                 for (v, u), b in zip(layers, i.stack.biases)]
        return Work(calls, _bytes(i, layers[0][0].shape[0]), ops=2 * i.m * layers[0][0].shape[0] * (i.n + i.k))

    return build


@register("low_rank", family="low_rank", op="low_rank_linear", default=False, description=(
    "low-rank layers: low_rank_linear at rank 512 and 1024, once per implementation usable on the device, against "
    "the two matmuls (fp32 F.linear twice) and dense fp32 / bf16 F.linear"))
def low_rank(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for rank in RANKS:
        for impl in case.implementations("low_rank_linear"):
            specs += case.ours(f"r{rank}:{impl}", f"r{rank}_{impl}", _ours(rank), impl=impl, backend=impl)
        specs += case.anchor(f"r{rank} two F.linear", f"r{rank}_two_linear", _two_matmuls(rank), dtype=torch.float32)
    if case.device == "cpu":
        specs += case.anchor("fp32 F.linear", "fp32_linear", _f_linear(torch.float32), dtype=torch.float32)
    specs += case.anchor("bf16 F.linear", "bf16_linear", _f_linear(torch.bfloat16), dtype=torch.bfloat16)
    return specs
