"""Shared checks of the structured-pruning tests: the optional model zoos (skipped when absent) and the
exactness pattern (zero random units of every group, record, remove, compare)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from slimkernels.prune.shrink import remove_many, zero_units


@pytest.fixture(scope="session")
def torchvision():
    from slimkernels.testing import import_torchvision

    try:
        return import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")


@pytest.fixture(scope="session")
def transformers():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    from slimkernels.testing import import_torchvision

    try:  # transformers imports torchvision when it is installed: make that import work on CPU torch
        import_torchvision()
    except ImportError:
        pass
    import transformers

    return transformers


def _call(model, inputs):
    with torch.no_grad():
        if isinstance(inputs, dict):
            out = model(**inputs)
        elif isinstance(inputs, tuple):
            out = model(*inputs)
        else:
            out = model(inputs)
    if isinstance(out, dict):
        out = tuple(v for v in out.values() if isinstance(v, torch.Tensor))
    return out if isinstance(out, (tuple, list)) else (out,)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batchnorm statistics and affine parameters (fresh modules have 0/1: too easy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model


def prune_exactly(model, inputs, groups, fraction=0.3, seed=0, rtol=1e-5, atol=1e-5):
    """Zero `fraction` of the units of every group (at least one), record the outputs, remove those units
    from all groups at once and check the outputs did not change. Returns {group root: units removed}."""
    gen = torch.Generator().manual_seed(seed)
    plan = []
    for g in groups:
        count = min(max(1, int(fraction * g.size)), g.size - 1)
        units = torch.randperm(g.size, generator=gen)[:count]
        zero_units(g, units)
        plan.append((g, units))
    before = _call(model, inputs)
    remove_many(model, plan)
    after = _call(model, inputs)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(1.0, b.abs().max().item()))
    return {g.root: len(u) for g, u in plan}


def plain_torch(model: nn.Module) -> None:
    """The pruned model runs with no hook and no slimkernels module."""
    for name, m in model.named_modules():
        assert not type(m).__module__.startswith("slimkernels"), f"{name} is a slimkernels module"
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), f"{name} has hooks"
    for name, p in model.named_parameters():
        assert type(p) is nn.Parameter, f"{name} is a {type(p).__name__}"


@pytest.fixture
def exact():
    return prune_exactly


@pytest.fixture
def norms():
    return randomize_norms


@pytest.fixture
def plain():
    return plain_torch
