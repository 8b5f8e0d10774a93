"""Physical removal: keep_entries on every module kind, remove/remove_many bookkeeping, zero_units, and
the clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkernels.prune.graph import build_groups
from slimkernels.prune.group import Group, Member
from slimkernels.prune.shrink import keep_entries, remove, remove_many, zero_units


def kept(t, dim, keep):
    return t.detach().index_select(dim, torch.as_tensor(keep)).clone()


@pytest.mark.parametrize("module, param, dim, keep, attrs", [
    (nn.Conv2d(6, 5, 3), "weight", 0, [0, 2, 4], {"out_channels": 3, "in_channels": 6}),
    (nn.Conv2d(6, 5, 3), "weight", 1, [1, 5], {"in_channels": 2, "out_channels": 5}),
    (nn.Conv2d(6, 6, 3, groups=6), "weight", 0, [0, 3, 5], {"in_channels": 3, "out_channels": 3, "groups": 3}),
    (nn.Conv2d(6, 9, 3, groups=3), "weight", 0, [0, 1, 2, 6, 7, 8], {"in_channels": 4, "out_channels": 6, "groups": 2}),
    (nn.ConvTranspose2d(6, 4, 2), "weight", 0, [2, 3], {"in_channels": 2, "out_channels": 4}),
    (nn.ConvTranspose2d(6, 4, 2), "weight", 1, [0, 3], {"in_channels": 6, "out_channels": 2}),
    (nn.Linear(7, 5), "weight", 0, [4], {"out_features": 1, "in_features": 7}),
    (nn.Linear(7, 5), "weight", 1, [0, 1, 6], {"in_features": 3}),
    (nn.BatchNorm2d(5), "running_var", 0, [0, 4], {"num_features": 2}),
    (nn.LayerNorm(6), "weight", 0, [1, 2, 3], {"normalized_shape": (3,)}),
    (nn.GroupNorm(3, 6), "bias", 0, [2, 3], {"num_groups": 1, "num_channels": 2}),
    (nn.Embedding(10, 6), "weight", 1, [0, 5], {"embedding_dim": 2}),
    (nn.PReLU(4), "weight", 0, [1, 2], {"num_parameters": 2}),
])
def test_keep_entries_narrows_and_fixes_sizes(module, param, dim, keep, attrs):
    before = getattr(module, param)
    keep_entries(module, param, dim, torch.tensor(keep))
    after = getattr(module, param)
    assert torch.equal(after, kept(before, dim, keep))
    assert type(after) is type(before) and after.requires_grad == before.requires_grad
    for attr, value in attrs.items():
        assert getattr(module, attr) == value, attr


def test_keep_entries_keeps_buffers_and_frozen_parameters():
    bn = nn.BatchNorm1d(4)
    bn.weight.requires_grad_(False)
    keep_entries(bn, "running_mean", 0, torch.tensor([1, 3]))
    keep_entries(bn, "weight", 0, torch.tensor([1, 3]))
    assert "running_mean" in bn._buffers and bn.running_mean.shape == (2,)
    assert isinstance(bn.weight, nn.Parameter) and not bn.weight.requires_grad


def test_pruned_conv_runs_like_the_slice():
    conv = nn.Conv2d(6, 9, 3, groups=3)
    x = torch.randn(1, 6, 5, 5)
    ref = conv(x)[:, 3:6]
    keep_entries(conv, "weight", 0, torch.arange(3, 6))
    keep_entries(conv, "bias", 0, torch.arange(3, 6))
    torch.testing.assert_close(conv(x[:, 2:4]), ref)


@pytest.mark.parametrize("args, match", [
    ((nn.Linear(3, 4), "weight", 0, [0, 4]), r"indices must lie in \[0, 4\)"),
    ((nn.Linear(3, 4), "weight", 2, [0]), "dim 2 is out of range"),
    ((nn.Linear(3, 4), "nothing", 0, [0]), "no tensor named 'nothing'"),
    ((nn.Linear(3, 4), "weight", 0, [2, 1]), "sorted and without repeats"),
    ((nn.GroupNorm(2, 6), "weight", 0, [0, 1]), "cannot keep 2 channels"),
    ((nn.Conv2d(4, 4, 1, groups=2), "weight", 0, [0]), "not a multiple"),
])
def test_keep_entries_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        keep_entries(*args)
    with pytest.raises(TypeError, match="nn.Module"):
        keep_entries("conv", "weight", 0, [0])


class Shared(nn.Module):
    """Two producers concatenated into one consumer: their groups share the consumer's input dim."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 5), nn.Linear(9, 2)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], -1)))


def test_zero_units_zeroes_producers_only():
    model = Shared()
    g = {g.root: g for g in build_groups(model, torch.randn(2, 3))}["b"]
    c_weight = model.c.weight.detach().clone()
    zero_units(g, torch.tensor([0, 3]))
    assert (model.b.weight[[0, 3]] == 0).all() and (model.b.bias[[0, 3]] == 0).all()
    assert (model.b.weight[[1, 2, 4]] != 0).all()
    assert torch.equal(model.c.weight, c_weight)  # readers are left alone


def test_remove_renumbers_the_group_and_refuses_stale_ones():
    model = Shared()
    x = torch.randn(4, 3)
    ga, gb = sorted(build_groups(model, x), key=lambda g: g.root)
    zero_units(ga, [1])
    zero_units(gb, [0, 4])
    ref = model(x)
    remove(model, ga, [1])
    assert ga.size == 3 and model.c.in_features == 8
    assert torch.equal({m.module_name: m for m in ga.members}["c"].index, torch.tensor([[0], [1], [2]]))
    with pytest.raises(ValueError, match="stale"):  # b's entries of c moved down when a's went
        remove(model, gb, [0])
    gb = {g.root: g for g in build_groups(model, x)}["b"]
    remove(model, gb, [0, 4])
    torch.testing.assert_close(model(x), ref)
    remove(model, gb, [1])  # the renumbered group can be used again
    assert model.b.out_features == 2 and model.c.in_features == 5
    assert model(x).shape == (4, 2)


def test_remove_many_handles_shared_members():
    model = Shared()
    x = torch.randn(4, 3)
    groups = build_groups(model, x)
    for g in groups:
        zero_units(g, [0, 2])
    ref = model(x)
    remove_many(model, [(g, [0, 2]) for g in groups])
    torch.testing.assert_close(model(x), ref)
    assert (model.a.out_features, model.b.out_features, model.c.in_features) == (2, 3, 5)


def test_remove_updates_head_counters_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 4
            self.fc, self.out = nn.Linear(3, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.out(F.relu(self.fc(x)))

    model = Tied()
    index = torch.arange(8).reshape(4, 2)
    group = Group([Member("fc", model.fc, "weight", 0, index, "out", extent=8),
                   Member("out", model.out, "weight", 1, index, "in", extent=8)], size=4, unit="head",
                  counters={"": {"num_heads": 1}})
    remove(model, group, [3])
    assert model.num_heads == 3 and model.fc.out_features == 6 and model.out.in_features == 6

    lin = nn.Linear(4, 6)
    tied_model = nn.ModuleDict({"a": lin, "b": nn.Linear(4, 6)})
    tied_model["b"].weight = lin.weight  # one Parameter held by two modules
    index = torch.arange(6)[:, None]
    group = Group([Member("a", lin, "weight", 0, index, "out"), Member("a", lin, "bias", 0, index, "out"),
                   Member("b", tied_model["b"], "weight", 0, index, "out"),
                   Member("b", tied_model["b"], "bias", 0, index, "out")], size=6)
    remove(tied_model, group, [0, 5])
    assert tied_model["a"].weight is tied_model["b"].weight and lin.weight.shape == (4, 4)


def test_remove_bad_input():
    model = Shared()
    g = {g.root: g for g in build_groups(model, torch.randn(2, 3))}["a"]
    with pytest.raises(ValueError, match="would leave fewer than 1"):
        remove(model, g, [0, 1, 2, 3])
    g.min_keep = 3
    with pytest.raises(ValueError, match="would leave fewer than 3"):
        remove(model, g, [0, 1])
    with pytest.raises(ValueError, match=r"units must lie in \[0, 4\)"):
        remove(model, g, [4])
    with pytest.raises(ValueError, match=r"units must lie in \[0, 4\)"):
        zero_units(g, [-1])
    with pytest.raises(TypeError, match="must be a slimkernels.prune.group.Group"):
        remove(model, "a", [0])
    remove(model, g, [])  # nothing to do
    assert model.a.out_features == 4
