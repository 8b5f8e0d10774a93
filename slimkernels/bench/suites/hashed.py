"""Suite of the hashed family: hashed_linear (HashedNets' virtual weight, never materialized) at 1/8
and 1/64 of the weights, once per implementation usable on the device, against dense float32 and
bfloat16 F.linear on the stack's weights (which stream from memory: the stack defeats the cache).

Each layer of the stack gets its own random buckets (the kernel's speed does not depend on their
values; averaging the stack's weights into them would cost a hash of every weight). The bytes an entry
moves are x, y and the buckets: the weight is computed, not read."""
from __future__ import annotations

import functools

import torch

from ..registry import Case, EntrySpec, Inputs, Work, register
from .sparse import _f_linear

COMPRESSIONS = (1 / 8, 1 / 64)


def hashed_buckets(stack, compression: float) -> list[torch.Tensor]:
    """Per layer of the stack, random float32 buckets, round(compression * N * K) of them."""
    count = max(1, round(compression * stack.n * stack.k))

    def build():
        gen = torch.Generator(device=stack.device).manual_seed(12)
        return [torch.randn(count, generator=gen, device=stack.device) / stack.k ** 0.5 for _ in stack.weights]

    return stack.form(("hashed_buckets", compression), build)


def _ours(compression: float):
    from ... import ops

    def build(i: Inputs) -> Work:
        buckets = hashed_buckets(i.stack, compression)
        calls = [functools.partial(ops.hashed_linear, i.x, b, seed, i.n, i.k) for seed, b in enumerate(buckets)]
        return Work(calls, i.x.element_size() * (i.m * i.k + i.m * i.n) + 4 * buckets[0].numel())

    return build


@register("hashed", family="hashed", op="hashed_linear", default=False, description=(
    "hashed layers (HashedNets): hashed_linear at 1/8 and 1/64 of the weights, once per implementation usable on "
    "the device, against dense fp32 and bf16 F.linear"))
def hashed(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for compression in COMPRESSIONS:
        tag = f"1/{round(1 / compression)}"
        for impl in case.implementations("hashed_linear"):
            if impl == "reference":  # hashes and materializes the weight in torch: seconds per layer, no information
                continue
            specs += case.ours(f"hashed {tag}:{impl}", f"hashed_{round(1 / compression)}_{impl}", _ours(compression),
                               impl=impl, backend=impl)
    if case.device == "cpu":
        specs += case.anchor("fp32 F.linear", "fp32_linear", _f_linear(torch.float32), dtype=torch.float32)
    specs += case.anchor("bf16 F.linear", "bf16_linear", _f_linear(torch.bfloat16), dtype=torch.bfloat16)
    return specs
