"""PruningSchedule: ramps, masks kept through fine-tuning (Adam, momentum, QAT), convert, resume, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkernels.compress.config import Int4WeightOnlyConfig, Int8WeightOnlyConfig, SparsityConfig
from slimkernels.compress.qat import convert_, prepare_qat_
from slimkernels.nn import QuantLinear, SparseConv2d, SparseLinear
from slimkernels.nn.fake_quant_linear import FakeQuantLinear
from slimkernels.prune import StructuredPruningConfig, count_params
from slimkernels.prune.schedule import (
    PruningSchedule, StructuredPruningSchedule, gradual_sparsity, iterative_sparsity, update_steps,
)
from slimkernels.quant.sparse import is_nm


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine, torch's thread team only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(k=40, hidden=64, out=12, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 16, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


def train_steps(model, opt, schedule, steps, k=40, seed=1):
    """Regression on fresh random batches; schedule.step() (if any) after each optimizer step."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, k, generator=gen)
        loss = (model(x) - x[:, :1]).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if schedule is not None:
            schedule.step()


def pruned_where_masked(schedule, model):
    for name, keep in schedule.masks.items():
        assert (model.get_submodule(name).weight.detach()[~keep] == 0).all(), name


# ---- ramps ----------------------------------------------------------------------------------------------
def test_cubic_ramp_values_at_known_steps():
    expected = {10: 0.0, 20: 0.8 - 0.8 * 0.75 ** 3, 30: 0.8 - 0.8 * 0.5 ** 3, 40: 0.8 - 0.8 * 0.25 ** 3, 50: 0.8}
    for step, value in expected.items():
        assert gradual_sparsity(step, 10, 50, 0.0, 0.8) == pytest.approx(value)
    assert gradual_sparsity(20, 10, 50, 0.2, 0.8) == pytest.approx(0.8 - 0.6 * 0.75 ** 3)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.8), "gradual", start=10, end=50, frequency=10)
    seen = {}
    for t in range(51):
        train_steps(model, opt, schedule, 1, seed=t)
        seen[t] = schedule.sparsity
        if t in expected:  # per="row": every row prunes exactly round(s * K)
            for name, fraction in schedule.layer_sparsities().items():
                k = model.get_submodule(name).in_features
                assert fraction == pytest.approx(round(expected[t] * k) / k), (t, name)
    assert seen[15] == pytest.approx(expected[10]) and seen[29] == pytest.approx(expected[20])
    assert schedule.done


def test_iterative_prunes_the_same_fraction_of_what_is_left():
    assert update_steps(0, 25, 10) == [0, 10, 20, 25]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.9, per="layer"), "iterative", start=0, end=30,
                               frequency=10)
    left = []
    for t in range(31):
        train_steps(model, opt, schedule, 1, seed=t)
        if t in (0, 10, 20, 30):
            left.append(1 - schedule.sparsity)
    assert left[-1] == pytest.approx(0.1)
    ratios = [b / a for a, b in zip([1.0] + left, left)]
    assert ratios == pytest.approx([0.1 ** 0.25] * 4)
    assert iterative_sparsity(2, 4, 0.9) == pytest.approx(1 - 0.1 ** 0.5)


def test_one_shot_prunes_at_start_then_fine_tunes_with_the_mask():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.6), "one_shot", start=3)
    train_steps(model, opt, schedule, 3)
    assert schedule.sparsity == 0 and not schedule.masks
    train_steps(model, opt, schedule, 1, seed=5)
    assert schedule.sparsity == 0.6 and schedule.done
    for _ in range(5):  # after the end: apply_masks keeps momentum from reviving pruned weights
        x = torch.randn(8, 40)
        model(x).square().mean().backward()
        opt.step()
        schedule.apply_masks()
        opt.zero_grad()
        pruned_where_masked(schedule, model)


# ---- masks ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    SparsityConfig(sparsity=0.85), SparsityConfig(sparsity=0.85, per="layer"),
    SparsityConfig(sparsity=0.85, scope="global"), SparsityConfig(sparsity=0.75, pattern="block", block=(4, 8)),
    SparsityConfig(sparsity=0.75, pattern="block", block=(4, 8), scope="global"), SparsityConfig(pattern="2:4"),
    SparsityConfig(pattern="4:8"),
], ids=lambda c: c.describe() + " " + c.per)
def test_masks_grow_monotone_and_reach_the_final_sparsity(config):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, config, "gradual", start=0, end=40, frequency=8, optimizer=opt)
    previous = {}
    for t in range(41):
        train_steps(model, opt, schedule, 1, seed=t)
        for name, keep in schedule.masks.items():
            if name in previous:
                assert not (keep & ~previous[name]).any(), f"{name} revived weights at step {t}"
            previous[name] = keep.clone()
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in previous)
    total = sum(model.get_submodule(n).weight.numel() for n in previous)
    assert zeros / total == pytest.approx(config.sparsity, abs=0.02)


@pytest.mark.parametrize("pattern,m", [("2:4", 4), ("4:8", 8)])
def test_nm_masks_valid_at_every_update(pattern, m):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(pattern=pattern), "gradual", start=2, end=30, frequency=4,
                               optimizer=opt)
    for t in range(31):
        train_steps(model, opt, schedule, 1, seed=t)
        for name, keep in schedule.masks.items():
            n, k = keep.shape
            pruned = (~keep).reshape(n, k // m, m).sum(-1)
            assert ((pruned == 0) | (pruned == m // 2)).all(), (t, name)  # every group whole or N:M
            held = float((pruned > 0).float().mean())
            assert held == pytest.approx(schedule.sparsity / 0.5, abs=1 / (n * k // m) + 1e-6)
            assert ((model.get_submodule(name).weight == 0) | keep).all()
    for name in schedule.masks:
        assert is_nm(model.get_submodule(name).weight.detach(), m)
    schedule.convert(progress=False)
    assert all(isinstance(model[i], SparseLinear) and model[i].format == pattern for i in (0, 2, 4))


@pytest.mark.parametrize("attached", [True, False])
def test_pruned_weights_and_gradients_stay_zero_under_adam(attached):
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-2, betas=(0.9, 0.99), weight_decay=0.1)
    train_steps(model, opt, None, 5)  # Adam moments everywhere before the masks
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.7), "iterative", start=0, end=20, frequency=5,
                               optimizer=opt if attached else None)
    gen = torch.Generator().manual_seed(3)
    for t in range(21):
        x = torch.randn(16, 40, generator=gen)
        (model(x) - x[:, :3].sum(1, keepdim=True)).square().mean().backward()
        for name, keep in schedule.masks.items():
            assert (model.get_submodule(name).weight.grad[~keep] == 0).all()
        opt.step()
        if attached:  # the optimizer's post-step hook re-applied the masks
            pruned_where_masked(schedule, model)
        opt.zero_grad()
        schedule.step()
        pruned_where_masked(schedule, model)
    assert schedule.done and schedule.sparsity == pytest.approx(0.7)


# ---- the classic recipe ---------------------------------------------------------------------------------
def test_iterative_recipe_recovers_accuracy_at_80_percent():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x_test = torch.randn(2000, 16)
    with torch.no_grad():
        y_test = teacher(x_test).argmax(1)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def train(steps, schedule=None):
        for _ in range(steps):
            x = torch.randn(128, 16)
            with torch.no_grad():
                y = teacher(x).argmax(1)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if schedule is not None and not schedule.done:
                schedule.step()

    def accuracy():
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).float().mean())

    train(600)
    dense = accuracy()
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.8), "iterative", start=0, end=300, frequency=60,
                               optimizer=opt)
    train(400, schedule)
    assert schedule.done
    assert all(abs(s - 0.8) < 0.02 for s in schedule.layer_sparsities().values())
    pruned = accuracy()
    assert dense > 0.9, dense
    assert pruned > dense - 0.02, (dense, pruned)


# ---- convert --------------------------------------------------------------------------------------------
def test_convert_gives_sparse_modules_equal_to_the_masked_dense_model():
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.9), "gradual", start=0, end=12, frequency=3,
                               optimizer=opt)
    for _ in range(13):
        x = torch.randn(4, 3, 10, 10)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        schedule.step()
    masked = copy.deepcopy(model)
    report = schedule.convert(progress=False)
    assert isinstance(model.conv1, SparseConv2d) and isinstance(model.conv2, SparseConv2d)
    assert isinstance(model.fc, SparseLinear) and model.conv2.groups == 2
    assert [r.name for r in report.converted] == ["conv1", "conv2", "fc"]
    assert report.model_bytes_after < report.model_bytes_before
    x = torch.randn(3, 3, 10, 10)
    torch.testing.assert_close(model(x), masked(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="converted"):
        schedule.step()


def test_convert_without_sparse_modules_keeps_dense_zeros():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.5, pattern="block", block=(4, 8)), "one_shot")
    train_steps(model, opt, schedule, 1)
    keep = schedule.masks["2"]
    report = schedule.convert(sparse_modules=False, progress=False)
    assert type(model[2]) is nn.Linear and (model[2].weight[~keep] == 0).all()
    assert "sparse_modules=False" in report.note and len(report.converted) == 3
    model[2].weight.sum().backward()  # the gradient hook is gone
    assert (model[2].weight.grad == 1).all()


# ---- resume ---------------------------------------------------------------------------------------------
def test_state_dict_resume_matches_an_uninterrupted_run():
    config = SparsityConfig(sparsity=0.75, scope="global")

    def build(model):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return opt, PruningSchedule(model, config, "gradual", start=2, end=22, frequency=5, optimizer=opt)

    straight = mlp()
    opt, schedule = build(straight)
    for t in range(23):
        train_steps(straight, opt, schedule, 1, seed=t)

    first = mlp()
    opt, schedule = build(first)
    for t in range(11):
        train_steps(first, opt, schedule, 1, seed=t)
    saved = copy.deepcopy((first.state_dict(), opt.state_dict(), schedule.state_dict()))
    resumed = mlp(seed=7)  # other weights: everything comes from the checkpoint
    opt, schedule = build(resumed)
    resumed.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    schedule.load_state_dict(saved[2])
    assert schedule.step_count == 11 and schedule.masks.keys() == saved[2]["masks"].keys()
    for t in range(11, 23):
        train_steps(resumed, opt, schedule, 1, seed=t)
    assert schedule.done
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)

    other = PruningSchedule(mlp(), SparsityConfig(sparsity=0.5), "gradual", start=2, end=22, frequency=5)
    with pytest.raises(ValueError, match="final=0.75"):
        other.load_state_dict(saved[2])
    bad = copy.deepcopy(saved[2])
    bad["masks"]["0"] = bad["masks"]["0"][:, :3]
    with pytest.raises(ValueError, match="mask of 0"):
        build(mlp())[1].load_state_dict(bad)


# ---- QAT ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qat_first", [True, False])
def test_qat_keeps_pruned_weights_zero_into_the_quantized_layer(symmetric, qat_first):
    model = mlp(k=64)
    qat = Int4WeightOnlyConfig(group_size=32, symmetric=symmetric)
    if qat_first:
        prepare_qat_(model, qat)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.6), "gradual", start=0, end=12, frequency=4,
                               optimizer=opt)
    if not qat_first:
        prepare_qat_(model, qat)  # the FakeQuantLinear layers share the masked Parameters
    assert all(isinstance(model[i], FakeQuantLinear) for i in (0, 2, 4))
    train_steps(model, opt, schedule, 13, k=64)
    masks = schedule.masks
    pruned_where_masked(schedule, model)
    x = torch.randn(5, 64)
    fake = model(x)
    report = schedule.convert(progress=False)
    assert all("convert_(model) next" in r.detail for r in report.converted)
    convert_(model, progress=False)
    for name, keep in masks.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantLinear)
        assert (layer.dequantized_weight()[~keep] == 0).all(), name
    torch.testing.assert_close(model(x), fake, rtol=1e-4, atol=1e-4)


def test_convert_after_convert_qat_checks_the_quantized_zeros():
    model = mlp()
    prepare_qat_(model, Int8WeightOnlyConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PruningSchedule(model, SparsityConfig(pattern="2:4"), "gradual", start=0, end=8, frequency=2,
                               optimizer=opt)
    train_steps(model, opt, schedule, 3)
    masks = schedule.masks
    convert_(model, progress=False)  # before schedule.convert(): the schedule cannot go on
    with pytest.raises(RuntimeError, match="no longer holds the weight"):
        schedule.step()
    with pytest.warns(UserWarning, match="at step 3 of 8"):
        report = schedule.convert(progress=False)
    assert all("convert_ ran first" in r.detail for r in report.converted)
    for name, keep in masks.items():
        assert (~keep).any() and (model.get_submodule(name).dequantized_weight()[~keep] == 0).all()


def test_tied_weights_get_one_mask():
    model = mlp(k=64, hidden=64, out=64)
    model[4].weight = model[2].weight
    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.5, scope="global"), "one_shot")
    schedule.step()
    assert set(schedule.masks) == {"0", "2"} and (model[4].weight == 0).float().mean() > 0.3
    report = schedule.convert(progress=False)
    assert [r.name for r in report.skipped] == ["4"] and "shares its weight with 2" in report.skipped[0].detail


# ---- bad input ------------------------------------------------------------------------------------------
def test_errors():
    model = mlp()
    for sparsity in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            PruningSchedule(model, SparsityConfig(sparsity=sparsity), "one_shot")
    with pytest.raises(ValueError, match="start must be < end"):
        PruningSchedule(model, SparsityConfig(), "gradual", start=5, end=5)
    with pytest.raises(ValueError, match="needs end"):
        PruningSchedule(model, SparsityConfig(), "iterative", start=5)
    with pytest.raises(ValueError, match="frequency"):
        PruningSchedule(model, SparsityConfig(), "gradual", end=10, frequency=0)
    with pytest.raises(ValueError, match="start"):
        PruningSchedule(model, SparsityConfig(), "gradual", start=-1, end=10)
    with pytest.raises(ValueError, match="kind"):
        PruningSchedule(model, SparsityConfig(), "cubic", end=10)
    with pytest.raises(ValueError, match="one_shot"):
        PruningSchedule(model, SparsityConfig(), "one_shot", start=2, end=9)
    with pytest.raises(ValueError, match="initial_sparsity"):
        PruningSchedule(model, SparsityConfig(sparsity=0.5), "gradual", end=10, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="magnitude"):
        PruningSchedule(model, SparsityConfig(method="wanda"), "gradual", end=10)
    with pytest.raises(TypeError, match="SparsityConfig"):
        PruningSchedule(model, 0.5, "one_shot")
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d layer"):
        PruningSchedule(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), SparsityConfig(), "one_shot")
    with pytest.raises(ValueError, match="that filter_fn accepts"):
        PruningSchedule(model, SparsityConfig(), "one_shot", filter_fn=lambda m, n: False)
    with pytest.raises(ValueError, match=r"in_features=10 is not a multiple of 4"):
        PruningSchedule(nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 4)), SparsityConfig(pattern="2:4"), "one_shot")
    schedule = PruningSchedule(model, SparsityConfig(), "gradual", start=0, end=3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_steps(model, opt, schedule, 4)
    with pytest.raises(RuntimeError, match="ended at step 3"):
        schedule.step()
    schedule = PruningSchedule(model, SparsityConfig(), "gradual", start=0, end=3)
    model[2] = nn.Linear(64, 64)  # a layer replaced under the schedule
    with pytest.raises(RuntimeError, match="layer 2 no longer holds"):
        schedule.step()


# ---- structured -----------------------------------------------------------------------------------------
def small_convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 10))


def test_structured_schedule_shrinks_the_model_gradually_while_it_trains():
    model = small_convnet()
    box = [torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)]
    rebuilt = []

    def rebuild(m):
        box[0] = torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9)
        rebuilt.append(count_params(m))

    schedule = StructuredPruningSchedule(model, StructuredPruningConfig(0.75), torch.randn(1, 3, 8, 8), "gradual",
                                         start=1, end=13, frequency=4, on_prune=rebuild)
    widths = []
    for t in range(14):
        x = torch.randn(4, 3, 8, 8)
        F.cross_entropy(model(x), torch.randint(0, 10, (4,))).backward()
        box[0].step()
        box[0].zero_grad()
        if schedule.step():
            widths.append((model[0].out_channels, model[3].out_channels, model[7].out_features))
            assert schedule.ratio == pytest.approx(schedule.target_ratio(t))
    assert schedule.done and schedule.ratio == pytest.approx(0.75) and len(rebuilt) == 4
    assert widths[0] == (16, 24, 40)  # the ramp starts at 0
    for before, after in zip(widths, widths[1:]):
        assert all(a <= b for a, b in zip(after, before)) and after != before
    for width, original in zip(widths[-1], widths[0]):  # a quarter of each group's units (ratios compound)
        assert abs(width - original / 4) <= 1
    assert type(model[0]) is nn.Conv2d and model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert {p for g in box[0].param_groups for p in g["params"]} == set(model.parameters())
    with pytest.raises(RuntimeError, match="ended at step 13"):
        schedule.step()
    state = schedule.state_dict()
    again = StructuredPruningSchedule(model, StructuredPruningConfig(0.75), torch.randn(1, 3, 8, 8), "gradual",
                                      start=1, end=13, frequency=4)
    again.load_state_dict(state)
    assert again.done and again.ratio == pytest.approx(0.75)


def test_structured_schedule_warns_about_the_optimizer_and_checks_its_input():
    model = small_convnet()
    schedule = StructuredPruningSchedule(model, StructuredPruningConfig(0.5), torch.randn(1, 3, 8, 8), "one_shot")
    with pytest.warns(UserWarning, match="rebuild it"):
        assert schedule.step()
    assert model[0].out_channels == 8
    with pytest.raises(TypeError, match="StructuredPruningConfig"):
        StructuredPruningSchedule(model, SparsityConfig(), torch.randn(1, 3, 8, 8), "one_shot")
    with pytest.raises(ValueError, match="ratio"):
        StructuredPruningSchedule(model, StructuredPruningConfig(1.0), torch.randn(1, 3, 8, 8), "one_shot")
    with pytest.raises(ValueError, match="start must be < end"):
        StructuredPruningSchedule(model, StructuredPruningConfig(0.5), torch.randn(1, 3, 8, 8), "iterative", 4, 2)
    with pytest.raises(TypeError, match="on_prune"):
        StructuredPruningSchedule(model, StructuredPruningConfig(0.5), torch.randn(1, 3, 8, 8), "one_shot", on_prune=3)
