"""plan_for_budget on a tiny nn.Sequential: the sensitive layer gets the larger format, the budget holds,
impossible budgets say how close one can get, explain() and info, candidates=, latency=, the knapsack
against brute force, bad input."""
import copy
import itertools
import json

import pytest
import torch
from torch import nn

from slimkernels.compress import module_bytes
from slimkernels.compress.budget import (
    DP_GRID, BudgetPlan, _cells, _knapsack, _Option, default_candidates, plan_for_budget,
)
from slimkernels.compress.passes import convert_layer
from slimkernels.compress.recipe import Step, apply_recipe

W8 = Step("quantize", {"mode": "w8a16"})
W4 = Step("quantize", {"mode": "w4a16", "group_size": 32})
CB3 = Step("quantize", {"mode": "codebook", "bits": 3, "method": "gptq"})
SENSITIVE = "1"
# the tiny inputs are thin calibration for GPTQ on purpose (correlated); the verification's pass says so
pytestmark = pytest.mark.filterwarnings("ignore::slimkernels.compress.CalibrationWarning")


def tiny_model(seed=0) -> nn.Sequential:
    """Three linears; the middle one has a 50x outlier in every row, on an input feature that is always 0
    (the first layer's row 5 is zero), so the outlier changes no output but sets the scale of its group:
    w4 (16 levels per group) loses the group's other weights, int8 per row (255 levels) keeps them. The
    middle layer is far more sensitive to w4 than the others."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 64), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        model[0].weight[5] = 0
        model[0].bias[5] = 0
        model[1].weight[:, 5] = 50 * model[1].weight.abs().max()
    return model


def correlated_inputs(rows=192, seed=1) -> torch.Tensor:
    """Inputs on a few directions plus a little noise (as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 6, generator=g) @ torch.randn(6, 64, generator=g) + 0.05 * torch.randn(rows, 64, generator=g)


def setup(seed=0):
    model, x = tiny_model(seed), correlated_inputs()
    return model, (lambda m: m(x)), [x[:96], x[96:]]


def layer_bytes(model, name, step) -> int:
    return module_bytes(convert_layer(copy.deepcopy(model.get_submodule(name)), step.config()))


def test_sensitive_layer_gets_the_larger_format_and_the_budget_holds():
    model, run, calibration = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = ["0", "1", "2"]
    w4 = {n: layer_bytes(model, n, W4) for n in names}
    w8 = {n: layer_bytes(model, n, W8) for n in names}
    # room for every layer at w4 plus ONE upgrade to w8 (the smallest upgrade: every other layer's costs more)
    upgrades = sorted(w8[n] - w4[n] for n in names)
    budget = sum(w4.values()) + upgrades[-1] + 1
    assert budget < sum(w4.values()) + upgrades[0] + upgrades[-1]  # two upgrades do not fit
    plan = plan_for_budget(model, run, calibration, size=budget, candidates=[W8, W4], progress=False)
    assert isinstance(plan, BudgetPlan)
    assert plan.steps[SENSITIVE] == [W8]
    assert all(plan.steps[n] == [W4] for n in names if n != SENSITIVE)
    layers = plan.info["layers"]
    w4_error = {n: next(o["error"] for o in layers[n]["options"] if o["steps"] == W4.describe()) for n in names}
    assert all(w4_error[SENSITIVE] > 10 * w4_error[n] for n in names if n != SENSITIVE)
    assert sum(v["bytes"] for v in layers.values()) <= budget
    assert plan.info["chosen"]["bytes"] <= budget
    # the model is left as it is; the verified copy holds the plan
    assert all(type(m) is nn.Linear for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(module_bytes(plan.compressed.get_submodule(n)) for n in names) == plan.info["chosen"]["bytes"]
    assert plan.compressed[1] is not plan.converted["1", W8.describe()]  # a copy: the plan's layers stay reusable
    again = plan.build(model, {"1": W8.describe(), "0": "keep"})
    assert type(again[0]) is nn.Linear and type(again[1]) is type(plan.compressed[1])
    # the real passes give the same steps the same bytes
    applied = copy.deepcopy(model)
    apply_recipe(applied, plan.steps, calibration=calibration, progress=False)
    assert sum(module_bytes(applied.get_submodule(n)) for n in names) == plan.info["chosen"]["bytes"]
    # the mix beats both uniform methods that fit the budget (uniform w4)
    uniform = {c["label"]: c for c in plan.info["candidates"] if not c["chosen"]}
    assert plan.info["chosen"]["quality"] > uniform["uniform " + W4.describe()]["quality"]


def test_a_fraction_of_float32_and_a_generous_budget_keeps_float():
    model, run, calibration = setup()
    float32 = sum(4 * p.numel() for p in model.parameters())
    # a few cells of slack: each layer's bytes are rounded up to cells of budget / DP_GRID
    plan = plan_for_budget(model, run, calibration, size=float32 + 64, candidates=[W8], progress=False)
    assert plan.steps == {}  # keeping every layer costs nothing in error and fits
    assert plan.info["float"]["bytes"] == float32
    assert all(v["steps"] == "keep" for v in plan.info["layers"].values())
    tight = plan_for_budget(model, run, calibration, size=0.3, candidates=[W8, W4], progress=False)
    assert tight.info["chosen"]["bytes"] <= 0.3 * plan.info["float"]["bytes"]
    assert set(tight.steps) == {"0", "1", "2"}


def test_impossible_budget_names_the_closest_reachable_size():
    model, run, calibration = setup()
    smallest = sum(layer_bytes(model, n, W4) for n in ("0", "1", "2"))
    with pytest.raises(ValueError, match=f"cannot be met.*totals {smallest:,} B.*closest reachable"):
        plan_for_budget(model, run, calibration, size=smallest - 1, candidates=[W8, W4], progress=False)
    plan = plan_for_budget(model, run, calibration, size=smallest, candidates=[W8, W4], progress=False)
    assert plan.info["chosen"]["bytes"] == smallest  # exactly at the limit is reachable


def test_explain_and_info_follow_the_schema():
    model, run, calibration = setup()
    plan = plan_for_budget(model, run, calibration, size=0.2, candidates=[W8, W4, CB3], progress=False)
    text = plan.explain()
    for name in ("0", "1", "2"):
        assert any(line.startswith(name + " ") for line in text.splitlines())
    assert "budget" in text and "total" in text
    info = json.loads(json.dumps(plan.info))  # JSON-able
    assert info["tool"] == "slimkernels compress"
    assert info["float"]["bytes"] == sum(4 * p.numel() for p in model.parameters()) and info["float"]["quality"] == 1.0
    for name, layer in info["layers"].items():
        assert set(layer) >= {"steps", "bytes", "float_bytes", "error", "latency_us"}
        assert layer["bytes"] <= layer["float_bytes"] and layer["error"] >= 0
    labels = [c["label"] for c in info["candidates"]]
    assert labels == [f"uniform {s.describe()}" for s in (W8, W4, CB3)] + ["budget mix"]
    for c in info["candidates"]:
        assert set(c) >= {"label", "bytes", "quality", "latency_ms", "chosen"} and -1 <= c["quality"] <= 1
    assert [c["chosen"] for c in info["candidates"]] == [False, False, False, True]
    assert info["chosen"]["label"] == "budget mix" and info["chosen"]["bytes"] <= info["budget"]["bytes"]
    assert isinstance(info["quality_metric"], str)


def test_candidates_override_and_calibrated_candidates():
    model, run, calibration = setup()
    plan = plan_for_budget(model, run, calibration, size=0.3, candidates=[CB3], progress=False)
    assert set(plan.steps) == {"0", "1", "2"} and all(s == [CB3] for s in plan.steps.values())
    with pytest.raises(ValueError, match="need calibration data"):
        plan_for_budget(model, run, None, size=0.3, candidates=[CB3], progress=False)


def test_latency_budget():
    model, run, calibration = setup()
    plan = plan_for_budget(model, run, calibration, size=0.3, latency=100.0, candidates=[W8, W4], progress=False)
    assert plan.info["float"]["latency_ms"] > 0
    assert all(v["latency_us"] > 0 for v in plan.info["layers"].values())
    assert plan.info["chosen"]["latency_ms"] <= 100.0 * plan.info["float"]["latency_ms"]
    with pytest.raises(ValueError, match="latency budget"):
        plan_for_budget(model, run, calibration, size=0.3, latency=1e-9, candidates=[W8, W4], progress=False)


def test_knapsack_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        options = [[_Option(j, int(b), float(e)) for j, (b, e) in
                    enumerate(zip(torch.randint(10, 1000, (4,), generator=g).sort().values,
                                  torch.rand(4, generator=g).sort(descending=True).values))]
                   for _ in range(5)]
        low, high = (sum(f(x.bytes for x in o) for o in options) for f in (min, max))
        capacity = low + int(torch.rand(1, generator=g) * (high - low)) + 5  # between the smallest and largest mix
        best = min((sum(o[j].error for o, j in zip(options, choice)), choice)
                   for choice in itertools.product(range(4), repeat=5)
                   if sum(_cells(o[j].bytes, capacity) for o, j in zip(options, choice)) <= DP_GRID)
        chosen = _knapsack(options, capacity)
        assert sum(o[j].bytes for o, j in zip(options, chosen)) <= capacity
        assert sum(o[j].error for o, j in zip(options, chosen)) == pytest.approx(best[0])


def test_bad_input():
    model, run, calibration = setup()
    for size, error in ((0.0, ValueError), (1.5, ValueError), (0, ValueError), ("1/6", TypeError), (True, TypeError)):
        with pytest.raises(error, match="size"):
            plan_for_budget(model, run, calibration, size=size, candidates=[W8], progress=False)
    with pytest.raises(ValueError, match="size= .*latency="):
        plan_for_budget(model, run, calibration, candidates=[W8], progress=False)
    with pytest.raises(TypeError, match="Step"):
        plan_for_budget(model, run, calibration, size=0.5, candidates=[{"mode": "w8a16"}], progress=False)
    with pytest.raises(ValueError, match="empty"):
        plan_for_budget(model, run, calibration, size=0.5, candidates=[], progress=False)
    with pytest.raises(ValueError, match="no option"):
        plan_for_budget(model, run, calibration, size=0.5, candidates=[Step("quantize", {"mode": "w8a16", "bits": 3})],
                        progress=False)
    with pytest.raises(ValueError, match="repeat"):
        plan_for_budget(model, run, calibration, size=0.5, candidates=[W8, Step("quantize", {"mode": "w8a16"})],
                        progress=False)
    with pytest.raises(ValueError, match="latency"):
        plan_for_budget(model, run, calibration, size=0.5, latency=-1, candidates=[W8], progress=False)
    with pytest.raises(TypeError, match="run"):
        plan_for_budget(model, "run", calibration, size=0.5, candidates=[W8], progress=False)
    with pytest.raises(ValueError, match="no nn.Linear"):
        plan_for_budget(nn.Sequential(nn.ReLU()), run, calibration, size=0.5, candidates=[W8], progress=False)


def test_default_candidates_are_valid_steps():
    steps = default_candidates()
    assert len(set(steps)) == len(steps)
    for step in steps:
        step.config()
