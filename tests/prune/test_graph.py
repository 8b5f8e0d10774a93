"""The dependency tracer on one small model per coupling case (the cases Torch-Pruning documents):
which members each group has, with which entries, and that removing zeroed units keeps outputs exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkernels.prune.graph import UnsupportedOperation, build_groups
from slimkernels.prune.shrink import remove


def members(group):
    return {(m.module_name, m.param, m.dim, m.role): m.index for m in group.members}


def by_root(groups):
    return {g.root: g for g in groups}


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3)

    def forward(self, x):
        return self.conv2(F.relu(self.bn(self.conv1(x))))


def test_conv_bn_relu_conv(exact, norms):
    model = norms(ConvBnConv()).eval()
    x = torch.randn(2, 3, 9, 7)
    (g,) = build_groups(model, x)
    assert (g.root, g.size, g.unit) == ("conv1", 6, "channel")
    got = members(g)
    assert set(got) == {("conv1", "weight", 0, "out"), ("conv1", "bias", 0, "out"), ("bn", "weight", 0, "out"),
                        ("bn", "bias", 0, "out"), ("bn", "running_mean", 0, "out"), ("bn", "running_var", 0, "out"),
                        ("conv2", "weight", 1, "in")}
    assert all(torch.equal(i, torch.arange(6)[:, None]) for i in got.values())
    exact(model, x, [g], fraction=0.5)
    assert model.conv1.weight.shape == (3, 3, 3, 3) and model.bn.num_features == 3 and model.conv2.in_channels == 3
    assert model.bn.running_mean.shape == (3,) and model.conv2.weight.shape == (5, 3, 3, 3)


def test_linear_chain_and_multiple_inputs_outputs(exact):
    class TwoTowers(nn.Module):
        def __init__(self):
            super().__init__()
            self.a1, self.a2 = nn.Linear(5, 12), nn.Linear(12, 4)
            self.b1, self.b2 = nn.Linear(3, 10), nn.Linear(10, 2)

        def forward(self, x, y):
            return {"a": self.a2(F.gelu(self.a1(x))), "b": self.b2(torch.tanh(self.b1(y)))}

    model = TwoTowers()
    inputs = (torch.randn(3, 5), torch.randn(3, 3))
    groups = by_root(build_groups(model, inputs))
    assert set(groups) == {"a1", "b1"}  # a2, b2 produce the outputs
    assert groups["a1"].size == 12 and groups["b1"].size == 10
    assert set(members(groups["b1"])) == {("b1", "weight", 0, "out"), ("b1", "bias", 0, "out"),
                                          ("b2", "weight", 1, "in")}
    exact(model, inputs, list(groups.values()))
    assert model.a1.out_features == model.a2.in_features == 9


class ResidualWithDownsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10)
        self.down, self.down_bn = nn.Conv2d(8, 10, 1, bias=False), nn.BatchNorm2d(10)
        self.conv3 = nn.Conv2d(10, 10, 3, padding=1)  # a second block on the same stream, identity shortcut
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(y + self.down_bn(self.down(x)))
        x = x + F.relu(self.conv3(x))
        return self.head(x)


def test_residual_add_with_downsample_shares_units(exact, norms):
    model = norms(ResidualWithDownsample()).eval()
    x = torch.randn(2, 3, 8, 8)
    groups = by_root(build_groups(model, x))
    assert set(groups) == {"stem", "conv1", "conv2"}
    stream = groups["conv2"]  # both branches of the add, and every reader of the stream
    assert stream.modules() == ["bn2", "conv2", "conv3", "down", "down_bn", "head"]
    roles = {(m.module_name, m.dim): m.role for m in stream.members if m.param == "weight"}
    assert roles == {("conv2", 0): "out", ("down", 0): "out", ("conv3", 0): "out", ("conv3", 1): "in",
                     ("head", 1): "in", ("bn2", 0): "out", ("down_bn", 0): "out"}
    assert set(groups["stem"].modules()) == {"stem", "stem_bn", "conv1", "down"}
    exact(model, x, list(groups.values()), fraction=0.4)
    assert model.conv2.out_channels == model.down.out_channels == model.conv3.out_channels == 6


def test_concat_of_two_producers_maps_offsets(exact, norms):
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
            self.bn = nn.BatchNorm2d(10)
            self.c = nn.Conv2d(10, 5, 3)

        def forward(self, x):
            gated = torch.sigmoid(self.b(x)) * x.mean(1, keepdim=True)
            return self.c(F.relu(self.bn(torch.cat([self.a(x), gated], 1))))

    model = norms(Concat()).eval()
    x = torch.randn(1, 3, 6, 6)
    groups = by_root(build_groups(model, x))
    assert set(groups) == {"a", "b"}
    assert torch.equal(members(groups["a"])[("c", "weight", 1, "in")], torch.arange(4)[:, None])
    assert torch.equal(members(groups["b"])[("c", "weight", 1, "in")], torch.arange(4, 10)[:, None])
    assert torch.equal(members(groups["b"])[("bn", "weight", 0, "out")], torch.arange(4, 10)[:, None])
    # sigmoid(0) != 0: zeroing b's rows alone would leave 0.5 * x.mean in the concat; the removal
    # check below passes because the bn entries of those units are zeroed too
    exact(model, x, list(groups.values()), fraction=0.5)
    assert model.c.in_channels == 2 + 3 and model.bn.num_features == 5


def test_chunk_into_consumers_and_glu(exact):
    class Chunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.left, self.right = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
            self.fc = nn.Linear(5, 12)
            self.out = nn.Linear(6, 3)

        def forward(self, x, t):
            a, b = self.conv(x).chunk(2, dim=1)
            return self.left(a) + self.right(b), self.out(F.glu(self.fc(t), -1))

    model = Chunk()
    inputs = (torch.randn(1, 3, 4, 5), torch.randn(2, 5))
    groups = by_root(build_groups(model, inputs))
    conv, fc = groups["conv"], groups["fc"]
    assert conv.size == 4  # channel j of each chunk goes with channel j of the other
    assert torch.equal(members(conv)[("conv", "weight", 0, "out")], torch.tensor([[j, j + 4] for j in range(4)]))
    assert torch.equal(members(conv)[("left", "weight", 1, "in")], torch.arange(4)[:, None])
    assert fc.size == 6 and members(fc)[("fc", "weight", 0, "out")].shape == (6, 2)
    exact(model, inputs, [conv, fc], fraction=0.5)
    assert model.conv.out_channels == 4 and model.left.in_channels == model.right.in_channels == 2


def test_literal_split_and_slices_keep_their_width():
    class Literal(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.left, self.right, self.tail = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            a, b = torch.split(self.conv(x), [3, 5], dim=1)  # sizes written in the code: they cannot follow
            return self.left(a) + self.right(b) + self.tail(self.conv2(x)[:, :4])

    assert build_groups(Literal(), torch.randn(1, 3, 4, 4)) == []


def test_flatten_into_classifier(exact, norms):
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)
            self.fc1, self.fc2 = nn.Linear(5 * 3 * 2, 7), nn.Linear(7, 3)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(torch.flatten(F.relu(self.bn(self.conv(x))), 1))))

    model = norms(Classifier()).eval()
    x = torch.randn(2, 3, 5, 4)
    groups = by_root(build_groups(model, x))
    index = members(groups["conv"])[("fc1", "weight", 1, "in")]
    assert torch.equal(index, torch.arange(30).reshape(5, 6))  # each channel: its 3x2 features
    exact(model, x, list(groups.values()), fraction=0.4)
    assert model.fc1.in_features == 3 * 6


def test_channels_last_permute_and_view(exact):
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.fc2 = nn.Conv2d(3, 6, 1), nn.Linear(6, 8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.fc(self.conv(x).permute(0, 2, 3, 1))  # [N, H, W, C]
            y = y.reshape(y.shape[0], -1, y.shape[-1]).transpose(1, 2).contiguous()  # [N, C, HW]
            return self.fc2(F.relu(y.view(y.shape[0], y.shape[1], -1).mean(-1)))

    model = ChannelsLast()
    x = torch.randn(2, 3, 3, 4)
    groups = by_root(build_groups(model, x))
    assert set(groups) == {"conv", "fc"}
    exact(model, x, list(groups.values()), fraction=0.5)


def test_depthwise_and_grouped_convs(exact, norms):
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.gconv = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # 2 in, 3 out per conv group
            self.out = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.out(F.relu(self.gconv(F.relu(self.dw(F.relu(self.bn(self.pw(x))))))))

    model = norms(Grouped()).eval()
    x = torch.randn(1, 3, 5, 5)
    (g,) = build_groups(model, x)
    assert g.size == 4  # one unit per conv group of gconv: 2 pw/dw channels and 3 gconv outputs
    got = members(g)
    assert torch.equal(got[("pw", "weight", 0, "out")], torch.arange(8).reshape(4, 2))
    assert torch.equal(got[("dw", "weight", 0, "out")], torch.arange(8).reshape(4, 2))
    assert torch.equal(got[("gconv", "weight", 0, "out")], torch.arange(12).reshape(4, 3))
    assert torch.equal(got[("out", "weight", 1, "in")], torch.arange(12).reshape(4, 3))
    exact(model, x, [g], fraction=0.5)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (4, 4, 4)
    assert (model.gconv.in_channels, model.gconv.out_channels, model.gconv.groups) == (4, 6, 2)


def test_transposed_conv(exact, norms):
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.up, self.bn = nn.ConvTranspose2d(6, 5, 2, stride=2), nn.BatchNorm2d(5)
            self.out = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            return self.out(F.relu(self.bn(self.up(F.relu(self.conv(x))))))

    model = norms(Decoder()).eval()
    x = torch.randn(1, 3, 5, 6)
    groups = by_root(build_groups(model, x))
    assert set(members(groups["conv"])) >= {("up", "weight", 0, "in")}
    assert ("up", "weight", 1, "out") in members(groups["up"])
    exact(model, x, list(groups.values()), fraction=0.4)
    assert (model.up.in_channels, model.up.out_channels) == (4, 3)


def test_layer_norm_keeps_width_unless_approximate():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(self.norm(self.fc1(x)))

    x = torch.randn(5, 4)
    assert build_groups(Block(), x) == []  # the norm's statistics read every unit
    model = Block()
    (g,) = build_groups(model, x, approximate=True)
    assert "approximate" in g.note and set(g.modules()) == {"fc1", "norm", "fc2"}
    remove(model, g, [1, 5])
    assert model.norm.normalized_shape == (6,) and model(x).shape == (5, 3)


def test_group_norm_units_are_norm_groups(exact):
    class GN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.out = nn.Conv2d(3, 12, 3), nn.GroupNorm(4, 12), nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.out(F.silu(self.norm(self.conv(x))))

    model = GN()
    x = torch.randn(2, 3, 6, 6)
    (g,) = build_groups(model, x)
    assert g.size == 4 and torch.equal(members(g)[("norm", "weight", 0, "out")], torch.arange(12).reshape(4, 3))
    exact(model, x, [g], fraction=0.5)
    assert (model.norm.num_groups, model.norm.num_channels) == (2, 6)


def test_prelu_per_channel_and_embedding(exact):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.conv2 = nn.Conv2d(3, 6, 1), nn.PReLU(6), nn.Conv2d(6, 2, 1)
            self.emb, self.fc = nn.Embedding(20, 7), nn.Linear(7, 3)

        def forward(self, x, ids):
            return self.conv2(self.act(self.conv(x))), self.fc(self.emb(ids))

    model = Mixed()
    with torch.no_grad():
        model.act.weight.uniform_(0.1, 0.9)
    inputs = (torch.randn(1, 3, 4, 4), torch.randint(0, 20, (2, 5)))
    groups = by_root(build_groups(model, inputs))
    assert ("act", "weight", 0, "out") in members(groups["conv"])
    assert set(members(groups["emb"])) == {("emb", "weight", 1, "out"), ("fc", "weight", 1, "in")}
    exact(model, inputs, list(groups.values()), fraction=0.5)
    assert model.act.num_parameters == 3 and model.emb.embedding_dim == 4


def test_parameters_used_in_forward_join_the_hidden_dim(exact):
    class TinyViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.pos = nn.Parameter(torch.randn(1, 5, 8))
            self.scale = nn.Parameter(torch.rand(8) + 0.5)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
            return self.head(F.gelu(tokens * self.scale)[:, 0])

    model = TinyViT()
    x = torch.randn(2, 3, 8, 8)
    (g,) = build_groups(model, x)
    assert set(members(g)) == {("patch", "weight", 0, "out"), ("patch", "bias", 0, "out"), ("", "cls", 2, "out"),
                               ("", "pos", 2, "out"), ("", "scale", 0, "out"), ("head", "weight", 1, "in")}
    exact(model, x, [g], fraction=0.5)
    assert model.cls.shape == (1, 1, 4) and model.pos.shape == (1, 5, 4) and model.head.in_features == 4


def test_unbind_stack_and_expand(exact):
    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(3, 6), nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, x):
            s = torch.stack([self.a(x), self.b(x)], dim=0)  # [2, N, 6]
            first, second = s.unbind(0)
            return self.out(first * second + s.sum(0))

    model = Stacked()
    x = torch.randn(4, 3)
    (g,) = build_groups(model, x)
    assert g.size == 6 and set(g.modules()) == {"a", "b", "out"}
    exact(model, x, [g], fraction=0.5)


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads, written the way most code writes it."""

    def __init__(self, dim=24, heads=6, kv_heads=2, sdpa=False):
        super().__init__()
        self.head_dim, self.sdpa = dim // heads, sdpa
        self.q = nn.Linear(dim, heads * self.head_dim)
        self.k = nn.Linear(dim, kv_heads * self.head_dim)
        self.v = nn.Linear(dim, kv_heads * self.head_dim)
        self.o = nn.Linear(heads * self.head_dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5
            y = scores.softmax(-1) @ v
        return x + self.o(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("sdpa", [False, True])
def test_attention_heads_with_grouped_query_heads(exact, sdpa):
    model = Attention(sdpa=sdpa)
    x = torch.randn(2, 5, 24)
    (g,) = build_groups(model, x)
    assert (g.unit, g.size, g.root) == ("head", 2, "q")  # a key/value head and its 3 query heads
    got = members(g)
    assert torch.equal(got[("q", "weight", 0, "out")], torch.arange(24).reshape(2, 12))
    assert torch.equal(got[("k", "weight", 0, "out")], torch.arange(8).reshape(2, 4))
    assert torch.equal(got[("o", "weight", 1, "in")], torch.arange(24).reshape(2, 12))
    exact(model, x, [g], fraction=0.5)
    assert (model.q.out_features, model.k.out_features, model.o.in_features) == (12, 4, 12)


def test_model_input_and_outputs_are_never_pruned():
    class Inputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv2(x + self.conv(x)), self.conv(x)

    assert build_groups(Inputs(), torch.randn(1, 4, 3, 3)) == []


def test_ignore_drops_groups_touching_the_module():
    model = ResidualWithDownsample().eval()
    x = torch.randn(1, 3, 8, 8)
    assert set(by_root(build_groups(model, x, ignore=["head"]))) == {"stem", "conv1"}
    assert set(by_root(build_groups(model, x, ignore=["conv1"]))) == {"conv2"}
    with pytest.raises(ValueError, match="'nope' is not a module"):
        build_groups(model, x, ignore=["nope"])
    with pytest.raises(TypeError, match="single string"):
        build_groups(model, x, ignore="head")


def test_reduction_over_channels_keeps_them():
    class Reduce(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).sum(1).flatten(1))  # x.sum(1) feeding a layer

    assert build_groups(Reduce(), torch.randn(1, 3, 2, 2)) == []


@pytest.mark.parametrize("case", ["fft", "einsum", "mha", "setitem", "computed_weight"])
def test_unsupported_operations_name_the_op_and_module(case):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.inner = nn.MultiheadAttention(6, 2, batch_first=True)
            self.fc2 = nn.Linear(6, 2)

        def forward(self, x):
            y = self.fc(x)
            if case == "fft":
                y = torch.fft.fft(y).real
            elif case == "einsum":
                y = torch.einsum("btc,btd->bcd", y, y).mean(-1)[:, None]
            elif case == "mha":
                y = self.inner(y, y, y)[0]
            elif case == "setitem":
                y[:, 0] = 0
            elif case == "computed_weight":
                return F.linear(y, self.fc2.weight * 2)
            return self.fc2(y)

    expected = {"fft": "'fft_fft' in module '<model>'", "einsum": "'einsum'", "setitem": "'__setitem__'",
                "mha": r"in module .inner. \(MultiheadAttention\)", "computed_weight": "not a parameter"}[case]
    with pytest.raises(UnsupportedOperation, match=expected):
        build_groups(Odd(), torch.randn(2, 3, 4))
