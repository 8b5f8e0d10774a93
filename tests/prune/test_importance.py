"""Importance criteria on hand-built groups over small MLPs and CNNs: known answers per criterion."""
import pytest
import torch
from torch import nn

from slimkernels.prune.group import Group, Member
from slimkernels.prune.importance import (
    CRITERIA, ActivationImportance, BNScaleImportance, MagnitudeImportance, RandomImportance, TaylorImportance,
    bn_l1_penalty, make_importance, unit_scores,
)


def channels(n: int, per_unit: int = 1) -> torch.Tensor:
    return torch.arange(n * per_unit).reshape(n, per_unit)


def mlp(hidden: int = 5, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def mlp_group(model: nn.Sequential) -> Group:
    n = model[0].out_features
    return Group([Member("0", model[0], "weight", 0, channels(n), "out"),
                  Member("0", model[0], "bias", 0, channels(n), "out"),
                  Member("2", model[2], "weight", 1, channels(n), "in")], size=n, root="0")


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.2, 0.2)
    return model.eval()


def cnn_group(model: nn.Sequential) -> Group:
    n = model[0].out_channels
    members = [Member("0", model[0], p, 0, channels(n), "out") for p in ("weight", "bias")]
    members += [Member("1", model[1], p, 0, channels(n), "out") for p in ("weight", "bias", "running_mean", "running_var")]
    members.append(Member("3", model[3], "weight", 1, channels(n), "in"))
    return Group(members, size=n, root="0")


# ---- aggregation -----------------------------------------------------------------------------------
def test_unit_scores_sum_over_per_unit_entries():
    lin = nn.Linear(4, 6)
    member = Member("q", lin, "weight", 0, torch.tensor([[0, 3], [1, 4], [2, 5]]), "out")  # 3 "heads" of 2 rows
    entry = torch.rand(6) + 0.1
    assert torch.equal(unit_scores(member, entry), torch.stack([entry[0] + entry[3], entry[1] + entry[4], entry[2] + entry[5]]))


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_is_the_mean_of_normalized_member_norms(p):
    model = mlp()
    group = mlp_group(model)
    rows = torch.linalg.vector_norm(model[0].weight.detach(), ord=p, dim=1)
    cols = torch.linalg.vector_norm(model[2].weight.detach(), ord=p, dim=0)
    expected = (rows / rows.mean() + cols / cols.mean()) / 2  # the bias is not a magnitude member
    torch.testing.assert_close(MagnitudeImportance(p)(group), expected)
    assert make_importance(f"l{p}")(group).allclose(expected)


def test_larger_weights_score_higher():
    model = mlp(hidden=6, seed=3)
    with torch.no_grad():
        model[0].weight[4] *= 10
        model[2].weight[:, 4] *= 10
        model[0].weight[1] *= 0.01
        model[2].weight[:, 1] *= 0.01
    for name in ("l1", "l2"):
        scores = make_importance(name)(mlp_group(model))
        assert scores.argmax() == 4 and scores.argmin() == 1, name


def test_heads_are_scored_whole():
    torch.manual_seed(1)
    q, o = nn.Linear(8, 8), nn.Linear(8, 8)
    heads = channels(4, 2)  # 4 heads of head_dim 2
    with torch.no_grad():
        q.weight[6:8] *= 20  # head 3
        o.weight[:, 6:8] *= 20
    group = Group([Member("q", q, "weight", 0, heads, "out"), Member("o", o, "weight", 1, heads, "in")],
                  size=4, unit="head", root="q")
    scores = MagnitudeImportance(2)(group)
    assert scores.shape == (4,) and scores.argmax() == 3


def test_a_zero_member_adds_zeros_not_nan():
    model = mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    scores = MagnitudeImportance(1)(mlp_group(model))
    rows = model[0].weight.detach().abs().sum(1)
    torch.testing.assert_close(scores, rows / rows.mean() / 2)


def test_not_a_group_is_a_type_error():
    with pytest.raises(TypeError, match="expected a Group"):
        MagnitudeImportance(2)(["not", "a", "group"])


# ---- batchnorm scale --------------------------------------------------------------------------------
def test_bn_scale_is_abs_gamma():
    model = cnn()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.01, 1.0, -0.3, 0.8]))
    scores = BNScaleImportance()(cnn_group(model))
    gamma = model[1].weight.detach().abs()
    torch.testing.assert_close(scores, gamma / gamma.mean())
    assert scores.argmax() == 1 and scores.argmin() == 2


def test_bn_scale_without_batchnorm_says_so():
    with pytest.raises(ValueError, match="bn_scale importance: group '0' has nothing.*BatchNorm"):
        BNScaleImportance()(mlp_group(mlp()))


def test_bn_l1_penalty_value_and_gradient():
    model = cnn()
    penalty = bn_l1_penalty(model, 1e-3)
    torch.testing.assert_close(penalty, 1e-3 * model[1].weight.abs().sum())
    penalty.backward()
    torch.testing.assert_close(model[1].weight.grad, 1e-3 * model[1].weight.detach().sign())


@pytest.mark.parametrize("strength", [-1.0, "0.1", True, float("nan")])
def test_bn_l1_penalty_rejects_bad_strength(strength):
    with pytest.raises(ValueError, match="strength must be a number >= 0"):
        bn_l1_penalty(cnn(), strength)


def test_bn_l1_penalty_needs_batchnorm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_l1_penalty(mlp(), 1e-4)


# ---- activation statistics --------------------------------------------------------------------------
def dead_mlp(dead=(1, 3)) -> nn.Sequential:
    model = mlp(hidden=6, seed=2)
    with torch.no_grad():
        model[0].weight[list(dead)] = 0
        model[0].bias[list(dead)] = -1.0  # relu(-1) = 0 for every input
        model[0].bias[[i for i in range(6) if i not in dead]] = 0.05
    return model


def test_apoz_scores_dead_channels_zero():
    model = dead_mlp()
    group = mlp_group(model)
    batches = [torch.randn(9, 7) for _ in range(3)]
    apoz = ActivationImportance("apoz")
    apoz.collect(model, [group], batches)
    scores = apoz(group)
    assert scores[[1, 3]].eq(0).all() and scores[[0, 2, 4, 5]].gt(0).all()
    # 1 - fraction of zeros, over all 27 rows, normalized by its mean
    act = torch.relu(model[0](torch.cat(batches)))
    alive = 1 - (act == 0).double().mean(0)
    torch.testing.assert_close(scores, (alive / alive.mean()).float())


def test_mean_activation_is_mean_abs_input_of_the_consumer():
    model = dead_mlp(dead=(0,))
    group = mlp_group(model)
    batches = [torch.randn(5, 7), torch.randn(4, 7)]
    crit = make_importance("mean_activation")
    crit.collect(model, [group], batches)
    act = torch.relu(model[0](torch.cat(batches))).abs().mean(0)
    torch.testing.assert_close(crit(group), act / act.mean())
    assert crit(group)[0] == 0


class _TokenMLP(nn.Module):
    """A model called as Hugging Face models are: keyword inputs with an attention_mask."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, hidden, attention_mask):
        return self.net(hidden)


def test_activation_statistics_leave_padding_tokens_out():
    model = _TokenMLP().eval()
    group = mlp_group(model.net)
    hidden = torch.randn(3, 6, 7)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    hidden[mask == 0] = 100.0  # padding positions that would dominate the mean if counted
    crit = make_importance("mean_activation")
    crit.collect(model, [group], [{"hidden": hidden, "attention_mask": mask}])
    act = torch.relu(model.net[0](hidden[mask.bool()])).abs().mean(0)
    torch.testing.assert_close(crit(group), act / act.mean())


def test_activation_statistics_of_conv_channels_and_no_hooks_left():
    model = cnn()
    with torch.no_grad():
        model[1].weight[2] = 0  # channel 2 after BN is its bias: negative -> dead after ReLU
        model[1].bias[2] = -0.5
    group = cnn_group(model)
    batches = [torch.randn(2, 3, 9, 11) for _ in range(2)]
    crit = ActivationImportance("mean_activation")
    crit.collect(model.train(), [group], batches)  # collect runs in eval mode and restores the mode
    assert model.training
    model.eval()
    feats = torch.cat([model[2](model[1](model[0](b))) for b in batches])
    mean = feats.abs().mean((0, 2, 3))
    torch.testing.assert_close(crit(group), mean / mean.mean())
    assert crit(group)[2] == 0
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_activation_without_statistics_says_so():
    with pytest.raises(ValueError, match="apoz importance: group '0' has nothing.*collect"):
        ActivationImportance("apoz")(mlp_group(mlp()))
    with pytest.raises(ValueError, match="kind must be one of"):
        ActivationImportance("mean")


def test_activation_with_empty_calibration():
    model = mlp()
    with pytest.raises(ValueError, match="no batches"):
        ActivationImportance("apoz").collect(model, [mlp_group(model)], [])


# ---- taylor -----------------------------------------------------------------------------------------
def test_taylor_on_a_quadratic_loss():
    torch.manual_seed(4)
    lin = nn.Linear(5, 4, bias=False)
    model = nn.Sequential(lin)
    group = Group([Member("0", lin, "weight", 0, channels(4), "out")], size=4, root="0")
    crit = TaylorImportance()
    batches = [torch.randn(6, 5) for _ in range(3)]
    expected = torch.zeros(4, 5)
    for x in batches:
        model.zero_grad()
        (0.5 * model(x).pow(2).sum()).backward()
        crit.accumulate(model)
        y = x @ lin.weight.detach().T
        expected += (lin.weight.detach() * (y.T @ x)).abs()  # dL/dW = y^T x for L = |xW^T|^2 / 2
    assert crit.batches == 3
    rows = expected.sum(1)
    torch.testing.assert_close(crit(group), rows / rows.mean())


def test_taylor_errors():
    model = mlp()
    crit = TaylorImportance()
    with pytest.raises(ValueError, match="no parameter of the model has a gradient"):
        crit.accumulate(model)
    with pytest.raises(ValueError, match="taylor importance: group '0' has nothing.*accumulate"):
        crit(mlp_group(model))
    model(torch.randn(3, 7)).sum().backward()
    crit.accumulate(model)
    with torch.no_grad():
        model[0].weight = nn.Parameter(model[0].weight[:4].clone())
    model[0].weight.grad = torch.randn(4, 7)
    with pytest.raises(ValueError, match="was pruned.*reset"):
        crit.accumulate(model)
    crit.reset()
    assert crit.batches == 0


# ---- random and names -------------------------------------------------------------------------------
def test_random_is_seeded():
    group = mlp_group(mlp())
    a, b, c = RandomImportance(7)(group), RandomImportance(7)(group), RandomImportance(8)(group)
    assert a.shape == (5,) and torch.equal(a, b) and not torch.equal(a, c)


def test_every_criterion_has_a_name_and_unknown_names_are_listed():
    for name in CRITERIA:
        assert make_importance(name).name == name
    with pytest.raises(ValueError, match=r"importance must be one of \('l1', 'l2'"):
        make_importance("l3")
