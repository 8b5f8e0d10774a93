"""prune_ and StructuredPruningConfig: validation, unit selection per layer and globally, and whole
models (small CNN/MLP; torchvision ResNet-18 and tiny Hugging Face BERT when installed)."""
import fnmatch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.prune import (
    CRITERIA, Group, Member, StructuredPruningConfig, TaylorImportance, count_macs, count_params, prune_,
)
from slimkernels.prune.api import _global_selection, _layer_counts


# ---- the config -------------------------------------------------------------------------------------
def test_config_is_frozen_and_validated():
    config = StructuredPruningConfig(0.25, importance="l1", scope="global", protect="stem", min_keep=2)
    assert config.protect == ("stem",) and config.describe() == "l1, ratio 0.25, global scope"
    with pytest.raises(Exception):
        config.ratio = 0.5
    assert StructuredPruningConfig(0.5, importance=TaylorImportance()).criterion_name == "taylor"
    assert slimkernels.StructuredPruningConfig is StructuredPruningConfig and slimkernels.prune_ is prune_


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.5", None, True])
def test_config_rejects_ratios_outside_0_1(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
        StructuredPruningConfig(ratio)


@pytest.mark.parametrize("kwargs, match", [
    ({"importance": "l3"}, r"importance must be one of \('l1', 'l2', 'bn_scale', 'taylor', 'apoz', 'mean_activation', 'random'\)"),
    ({"scope": "model"}, "scope must be one of"),
    ({"unit": "neuron"}, "unit must be one of"),
    ({"protect": [1, 2]}, "protect must be module names"),
    ({"min_keep": 0}, "min_keep must be an integer >= 1"),
    ({"min_keep": 1.5}, "min_keep must be an integer >= 1"),
])
def test_config_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredPruningConfig(0.5, **kwargs)


# ---- choosing units ---------------------------------------------------------------------------------
def toy_group(size: int, root: str, min_keep: int = 1) -> Group:
    lin = nn.Linear(2, size)
    return Group([Member(root, lin, "weight", 0, torch.arange(size)[:, None], "out")], size=size, root=root,
                 min_keep=min_keep)


def test_layer_counts_round_clamp_and_refuse_zero():
    groups = [toy_group(10, "a"), toy_group(3, "b"), toy_group(4, "c", min_keep=3)]
    assert _layer_counts(groups, StructuredPruningConfig(0.5)) == [5, 2, 1]
    assert _layer_counts(groups, StructuredPruningConfig(0.0)) == [0, 0, 0]
    assert _layer_counts(groups, StructuredPruningConfig(0.5, min_keep=8)) == [2, 0, 0]
    with pytest.raises(ValueError, match="ratio 0.9 would remove all 3 channels of 'b'.*zero channels"):
        _layer_counts(groups, StructuredPruningConfig(0.9))


def test_global_selection_takes_the_lowest_normalized_scores():
    groups = [toy_group(4, "a"), toy_group(4, "b")]
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 10.0, 10.0, 10.0]) * torch.tensor([0.1, 1.3, 1.3, 1.3])]
    # normalized: a -> [0.4, 0.8, 1.2, 1.6], b -> [0.1, 1.3, 1.3, 1.3]: the 3 lowest are b0, a0, a1
    chosen = _global_selection(groups, scores, StructuredPruningConfig(3 / 8, scope="global"))
    assert [c.tolist() for c in chosen] == [[0, 1], [0]]


def test_global_selection_respects_min_keep_and_says_when_it_cannot():
    groups = [toy_group(4, "a"), toy_group(6, "b")]
    scores = [torch.tensor([0.1, 0.1, 0.1, 4.0]), torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4, 1.5])]
    chosen = _global_selection(groups, scores, StructuredPruningConfig(0.5, scope="global", min_keep=2))
    assert [c.tolist() for c in chosen] == [[0, 1], [0, 1, 2]]  # a2 is low too, but a keeps 2
    with pytest.raises(ValueError, match="asks to remove 8 of 10 units, but only 6 can go"):
        _global_selection(groups, scores, StructuredPruningConfig(0.8, scope="global", min_keep=2))


# ---- MACs -------------------------------------------------------------------------------------------
def test_count_macs_by_the_formulas_and_no_hooks_left():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 6, (1, 3), stride=(1, 2)), nn.Flatten(), nn.Linear(6 * 7 * 4, 5)).train()
    conv1 = 8 * 7 * 9 * 3 * 9
    depthwise = 8 * 7 * 9 * 1 * 9
    conv3 = 6 * 7 * 4 * 8 * 3  # 9 columns, kernel 3, stride 2 -> 4
    linear = 6 * 7 * 4 * 5
    assert count_macs(model, torch.randn(1, 3, 7, 9)) == conv1 + depthwise + conv3 + linear
    assert count_macs(model, (torch.randn(3, 3, 7, 9),)) == 3 * (conv1 + depthwise + conv3 + linear)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_count_macs_of_linear_rows():
    model = nn.Sequential(nn.Linear(10, 4), nn.GELU(), nn.Linear(4, 3))
    assert count_macs(model, torch.randn(2, 5, 10)) == 10 * (10 * 4 + 4 * 3)
    with pytest.raises(TypeError, match="count_macs: model must be an nn.Module"):
        count_macs(lambda x: x, torch.randn(1))


# ---- whole models -----------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """conv-bn-relu x3 (the middle one depthwise), a residual add, pool, flatten, an MLP head."""

    def __init__(self, width: int = 12, hidden: int = 20, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.dw = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.project = nn.Conv2d(2 * width, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, 4)
        for bn in (self.bn0, self.bn1, self.bn2, self.bn3):  # non-trivial running stats and affine terms
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
                bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.expand(x)))
        y = F.relu(self.bn2(self.dw(y)))
        x = x + self.bn3(self.project(y))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_prune_cnn_shrinks_layers_and_macs():
    model, x = SmallCNN(), torch.randn(1, 3, 9, 11)
    macs = count_macs(model, x)
    report = prune_(model, StructuredPruningConfig(0.5), x, progress=False)
    assert model(torch.randn(2, 3, 9, 11)).shape == (2, 4) and no_hooks(model)
    assert model.expand.out_channels == 12 and model.dw.groups == 12 and model.bn2.num_features == 12
    assert model.fc1.out_features == 10 and model.fc2.in_features == 10
    assert model.stem.out_channels == 6 and model.project.out_channels == 6  # the residual stream, one group
    assert count_macs(model, x) < 0.4 * macs
    assert {r.name for r in report.converted} >= {"stem", "expand", "fc1"}
    assert all(r.detail.endswith("kept (l2)") for r in report.converted)
    assert type(model.stem) is nn.Conv2d and type(model.fc1) is nn.Linear


def test_ratio_zero_keeps_everything():
    model, x = SmallCNN(), torch.randn(2, 3, 8, 8)
    expected, params = model(x), count_params(model)
    report = prune_(model, StructuredPruningConfig(0.0), x, progress=False)
    assert count_params(model) == params and torch.equal(model(x), expected)
    assert report.converted and all(r.detail.split()[0].split("/")[0] == r.detail.split()[0].split("/")[1]
                                    for r in report.converted)


def test_zero_importance_units_go_and_outputs_stay_exact():
    model, x = SmallCNN(), torch.randn(3, 3, 8, 10)
    dead = [1, 2, 10, 17]
    with torch.no_grad():  # hidden neurons 0, 5, 7 of fc1 and 4 expand channels contribute nothing
        model.fc1.weight[[0, 5, 7]] = 0
        model.fc1.bias[[0, 5, 7]] = 0
        model.fc2.weight[:, [0, 5, 7]] = 0
        model.expand.weight[dead] = 0
        model.dw.weight[dead] = 0
        model.project.weight[:, dead] = 0
        for bn in (model.bn1, model.bn2):
            bn.weight[dead], bn.bias[dead] = 0, 0
    expected = model(x)
    prune_(model, StructuredPruningConfig(0.15, importance="l1"), x, progress=False,  # 3 of 20, 4 of 24
           filter_fn=lambda g: g.root in ("fc1", "expand"))
    assert model.fc1.out_features == 17 and model.expand.out_channels == 20
    torch.testing.assert_close(model(x), expected)


def test_bn_scale_prunes_zero_scales_exactly():
    model, x = SmallCNN(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # the scales and shifts of both batchnorms of 4 expand channels are zero
        for bn in (model.bn1, model.bn2):
            bn.weight[[0, 3, 4, 9]], bn.bias[[0, 3, 4, 9]] = 0, 0
    expected = model(x)
    report = prune_(model, StructuredPruningConfig(4 / 24, importance="bn_scale"), x, progress=False,
                    filter_fn=lambda g: g.root == "expand")
    assert model.bn1.num_features == 20 and report.converted[0].detail == "20/24 channels kept (bn_scale)"
    torch.testing.assert_close(model(x), expected)


def test_global_scope_removes_the_ratio_of_all_units():
    model, x = SmallCNN(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model.fc1.weight[:10] *= 0.01  # half of fc1's neurons are weak: global takes them before others
        model.fc2.weight[:, :10] *= 0.01
    report = prune_(model, StructuredPruningConfig(0.25, scope="global"), x, progress=False)
    kept = [tuple(int(v) for v in r.detail.split()[0].split("/")) for r in report.converted]
    total = sum(t for _, t in kept)
    assert total - sum(k for k, _ in kept) == round(0.25 * total)
    assert model.fc1.out_features == 10


def test_protect_and_filter_fn_select_groups():
    model, x = SmallCNN(), torch.randn(1, 3, 8, 8)
    report = prune_(model, StructuredPruningConfig(0.5, protect=("fc*",)), x, progress=False)
    assert model.fc1.out_features == 20 and model.expand.out_channels == 12
    assert any(r.name == "fc1" and r.action == "skipped" and "protected ('fc*')" in r.detail for r in report.layers)

    model = SmallCNN()
    prune_(model, StructuredPruningConfig(0.5), x, filter_fn=lambda g: fnmatch.fnmatch(g.root, "fc*"), progress=False)
    assert model.fc1.out_features == 10 and model.expand.out_channels == 24 and model.stem.out_channels == 12

    with pytest.warns(UserWarning, match="nothing pruned"):
        report = prune_(SmallCNN(), StructuredPruningConfig(0.5), x, filter_fn=lambda g: False, progress=False)
    assert not report.converted


def test_activation_criteria_through_prune_():
    model, x = SmallCNN(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():  # fc1 neurons 2 and 3 never fire
        model.fc1.weight[[2, 3]] = 0
        model.fc1.bias[[2, 3]] = -1
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    expected = model(batches[0])
    for criterion in ("apoz", "mean_activation"):
        pruned = SmallCNN()
        pruned.load_state_dict(model.state_dict())
        prune_(pruned, StructuredPruningConfig(0.1, importance=criterion), x, calibration=iter(batches),
               filter_fn=lambda g: g.root == "fc1", progress=False)
        assert pruned.fc1.out_features == 18 and no_hooks(pruned)
        torch.testing.assert_close(pruned(batches[0]), expected)
    with pytest.raises(ValueError, match="'apoz' needs calibration data"):
        prune_(SmallCNN(), StructuredPruningConfig(0.1, importance="apoz"), x, progress=False)


def test_taylor_through_prune_keeps_the_users_gradients():
    model, x = SmallCNN(), torch.randn(1, 3, 8, 8)
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    marker = torch.full_like(model.fc2.bias, 3.0)  # fc2's outputs are the model's: never pruned
    model.fc2.bias.grad = marker
    prune_(model, StructuredPruningConfig(0.25, importance="taylor"), x, calibration=batches,
           loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]), progress=False)
    assert model.fc1.out_features == 15 and model.fc2.bias.grad is marker
    with pytest.raises(ValueError, match="'taylor' needs gradients.*loss_fn"):
        prune_(SmallCNN(), StructuredPruningConfig(0.25, importance="taylor"), x, calibration=batches, progress=False)


def test_taylor_accumulated_in_the_users_loop():
    model, x = SmallCNN(), torch.randn(1, 3, 8, 8)
    taylor = TaylorImportance()
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 4, (4,))).backward()
        taylor.accumulate(model)
    report = prune_(model, StructuredPruningConfig(0.5, importance=taylor, unit="channel"), x, progress=False)
    assert model.fc1.out_features == 10 and "(taylor)" in report.converted[0].detail


def test_prune_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match="config must be a StructuredPruningConfig"):
        prune_(SmallCNN(), slimkernels.SparsityConfig(0.5), x)
    with pytest.raises(ValueError, match="ratio 0.8 would remove all 2 channels of '0'"):
        prune_(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)), StructuredPruningConfig(0.8),
               torch.randn(1, 4), progress=False)
    model = SmallCNN()
    with pytest.raises(ValueError, match="bn_scale importance: group 'fc1'"):
        prune_(model, StructuredPruningConfig(0.5, importance="bn_scale"), x, progress=False)
    assert model.stem.out_channels == 12  # nothing was removed before the error


class Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.fft.fft(self.fc1(x)).real)  # an op the tracer does not model


def test_a_model_the_tracer_rejects_gets_the_tracers_error():
    from slimkernels.prune import UnsupportedOperation

    model = Spectral()
    with pytest.raises(UnsupportedOperation, match="cannot trace 'fft_fft'"):
        prune_(model, StructuredPruningConfig(0.5), torch.randn(3, 4), progress=False)
    assert model.fc1.out_features == 8


# ---- real architectures (skipped when the packages are absent) --------------------------------------
def test_resnet18_prunes_by_a_third_of_its_macs(torchvision, plain):
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    macs = count_macs(model, x)
    report = prune_(model, StructuredPruningConfig(0.3, importance="l1"), x, progress=False)
    plain(model)
    assert len(report.converted) == 12 and report.converted[0].detail == "45/64 channels kept (l1)"
    assert count_macs(model, x) < 0.6 * macs and model(torch.randn(2, 3, 40, 24)).shape == (2, 10)


def tiny_bert(transformers, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, attn_implementation="eager")
    return transformers.BertModel(config).eval()


def bert_batches(n: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (2, 5 + i), generator=gen)} for i in range(n)]


def test_bert_mlp_neurons_by_mean_activation(transformers, plain):
    model = tiny_bert(transformers)
    dead = [3, 8, 20, 41]  # neurons whose GELU output is ~0 on every token: lowest mean activation
    for layer in model.encoder.layer:
        with torch.no_grad():
            layer.intermediate.dense.weight[dead] = 0
            layer.intermediate.dense.bias[dead] = -12.0
    batches = bert_batches()
    expected = model(**batches[0]).last_hidden_state
    report = prune_(model, StructuredPruningConfig(4 / 48, importance="mean_activation"), batches[0],
                    calibration=batches, filter_fn=lambda g: fnmatch.fnmatch(g.root, "*intermediate.dense"),
                    progress=False)
    plain(model)
    assert [r.detail for r in report.converted] == ["44/48 channels kept (mean_activation)"] * 2
    assert all(layer.output.dense.in_features == 44 for layer in model.encoder.layer)
    torch.testing.assert_close(model(**batches[0]).last_hidden_state, expected)


def test_bert_heads(transformers, plain):
    model = tiny_bert(transformers)
    batch = bert_batches(1)[0]
    report = prune_(model, StructuredPruningConfig(0.5, unit="head"), batch, progress=False)
    plain(model)
    assert [r.detail for r in report.converted] == ["2/4 heads kept (l2)"] * 2
    attention = model.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.all_head_size == 16 and attention.query.out_features == 16
    assert model(input_ids=torch.randint(0, 100, (1, 9))).last_hidden_state.shape == (1, 9, 32)


def test_approximate_prunes_widths_read_by_a_layernorm():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(3, 8)
    with pytest.warns(UserWarning, match="nothing pruned"):
        prune_(model, StructuredPruningConfig(0.25), x, progress=False)  # exact groups only: none here
    report = prune_(model, StructuredPruningConfig(0.25, approximate=True), x, progress=False)
    assert model[1].normalized_shape == (12,) and model[3].in_features == 12
    assert report.converted[0].detail == "12/16 channels kept (l2), approximate"
    assert model(x).shape == (3, 4)
    with pytest.raises(ValueError, match="approximate must be True or False"):
        StructuredPruningConfig(0.5, approximate="yes")
