"""Recipes: TOML / dict parsing, plan() (first match wins, errors naming the rule), apply_recipe on a small
MLP and a tiny BertModel (one pass per distinct config, fixed pass order, the combined formats)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.compress import Recipe, Step, apply_recipe
from slimkernels.compress.recipe import DistillConfig, Rule
from slimkernels.nn import HashedLinear, LowRankLinear, QuantLinear, SparseLinear

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recipe.toml"


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(96, 160), nn.ReLU(), nn.Linear(160, 96), nn.ReLU(), nn.Linear(96, 64),
                         nn.ReLU(), nn.Linear(64, 10))


def batches(count: int = 4, rows: int = 24, features: int = 96, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, features, generator=g) for _ in range(count)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# ---- parsing --------------------------------------------------------------------------------------
def test_toml_and_dict_give_the_same_recipe(tmp_path):
    text = """
[[rule]]
pattern = "*.attention.*"
quantize = { mode = "w8a8" }
[[rule]]
pattern = "*"
quantize = { mode = "w4a16", group_size = 128 }
low_rank = { rank = 8 }
"""
    path = tmp_path / "r.toml"
    path.write_text(text)
    from_toml = Recipe.from_toml(path)
    from_dict = Recipe.from_dict({"rule": [{"pattern": "*.attention.*", "quantize": {"mode": "w8a8"}},
                                           {"pattern": "*", "low_rank": {"rank": 8},
                                            "quantize": {"mode": "w4a16", "group_size": 128}}]})
    assert from_toml == from_dict
    # the fixed pass order, whatever the order of the tables in the rule
    assert [s.pass_name for s in from_toml.rules[1].steps] == ["low_rank", "quantize"]
    assert Recipe.from_dict(from_toml.to_dict()) == from_toml


def test_example_recipe_parses():
    recipe = Recipe.from_toml(EXAMPLE)
    assert [r.pattern for r in recipe.rules] == ["pooler.*", "*.attention.*", "*"]
    assert recipe.rules[0].steps == []


def test_step_config_builds_each_pass():
    assert isinstance(Step("quantize", {"mode": "w8a8"}).config(), slimkernels.Int8DynamicConfig)
    assert Step("quantize", {"mode": "w4a16", "group_size": 64}).config() == slimkernels.Int4WeightOnlyConfig(64)
    assert Step("quantize", {"mode": "codebook", "bits": 3}).config().bits == 3
    assert Step("sparsify", {"sparsity": 0.7, "block": [4, 8], "pattern": "block"}).config().block == (4, 8)
    assert Step("low_rank", {"params": 0.5, "factors": {"mode": "w8a16"}}).config().factors == \
        slimkernels.Int8WeightOnlyConfig()
    assert Step("hash", {"compression": 0.25}).config() == slimkernels.HashingConfig(0.25)
    assert Step("prune", {"ratio": 0.25}).config() == slimkernels.StructuredPruningConfig(0.25)
    assert Step("distill", {"steps": 5}).config() == DistillConfig(steps=5)


def test_equal_steps_hash_alike():
    a = Step("sparsify", {"sparsity": 0.5, "block": [4, 8]})
    b = Step("sparsify", {"block": [4, 8], "sparsity": 0.5})
    assert a == b and hash(a) == hash(b) and len({a, b, Step("sparsify", {"sparsity": 0.6})}) == 2


@pytest.mark.parametrize("data, message", [
    ({"rule": [{"pattern": "*", "quantise": {"mode": "w8a8"}}]}, "unknown pass 'quantise'"),
    ({"rule": [{"pattern": "*", "quantize": {"mode": "w8a8", "groupsize": 32}}]}, "no option 'groupsize'"),
    ({"rule": [{"pattern": "*", "quantize": {"mode": "int3"}}]}, "mode = one of"),
    ({"rule": [{"pattern": "*", "quantize": {"mode": "w4a16", "group_size": 33}}]}, "group_size"),
    ({"rule": [{"pattern": "*", "low_rank": {"rank": 0}}]}, "rank"),
    ({"rule": [{"quantize": {"mode": "w8a8"}}]}, "rule 1 has no pattern"),
    ({"rule": [{"pattern": "", "quantize": {"mode": "w8a8"}}]}, "pattern"),
    ({"rules": []}, "unknown top-level key"),
    ({"rule": []}, "no rules"),
    ({"rule": {"pattern": "*"}}, "[[rule]] tables"),
    ({"rule": [{"pattern": "*", "quantize": "w8a8"}]}, "must be a table"),
    ({"rule": [{"pattern": "*", "hash": {}, "quantize": {"mode": "w8a8"}}]}, "hash + quantize"),
    ({"rule": [{"pattern": "*", "low_rank": {"rank": 4}, "sparsify": {}}]}, "low_rank + sparsify"),
    ({"rule": [{"pattern": "*", "low_rank": {"rank": 4}, "quantize": {"mode": "w4a16", "method": "gptq"}}]},
     "round to nearest"),
    ({"rule": [{"pattern": "*", "sparsify": {}, "quantize": {"mode": "w4a16"}}]}, "w8a16"),
    ({"rule": [{"pattern": "*", "distill": {"steps": 0}}]}, "steps"),
])
def test_bad_recipes_are_named(data, message):
    with pytest.raises(ValueError, match=None) as exc:
        Recipe.from_dict(data)
    assert message in str(exc.value) and str(exc.value).startswith("recipe")


def test_bad_toml_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        Recipe.from_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[rule]]\npattern = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        Recipe.from_toml(broken)


# ---- plan -----------------------------------------------------------------------------------------
def test_plan_first_matching_rule_wins_and_empty_rules_keep_float():
    model = mlp()
    recipe = Recipe.from_dict({"rule": [
        {"pattern": "6"},                                        # the head stays float
        {"pattern": "[02]", "quantize": {"mode": "w8a8"}},
        {"pattern": "*", "quantize": {"mode": "w8a16"}},
    ]})
    plan = recipe.plan(model)
    assert sorted(plan) == ["0", "2", "4"]
    assert plan["0"] == plan["2"] == [Step("quantize", {"mode": "w8a8"})]
    assert plan["4"] == [Step("quantize", {"mode": "w8a16"})]


def test_plan_names_a_rule_that_matches_nothing():
    model = mlp()
    with pytest.raises(ValueError, match=r"rule 2 \(pattern '\*.attention.\*'\) matches no layer"):
        Recipe.from_dict({"rule": [{"pattern": "0", "quantize": {"mode": "w8a8"}},
                                   {"pattern": "*.attention.*", "quantize": {"mode": "w8a8"}}]}).plan(model)
    with pytest.raises(ValueError, match="rule 2 .* matches only layers that earlier rules take"):
        Recipe.from_dict({"rule": [{"pattern": "*", "quantize": {"mode": "w8a8"}},
                                   {"pattern": "0", "quantize": {"mode": "w8a16"}}]}).plan(model)


def test_plan_skips_layers_inside_compressed_modules():
    model = mlp()
    slimkernels.low_rank_(model, slimkernels.LowRankConfig(rank=4), filter_fn=lambda m, n: n == "0", progress=False)
    plan = Recipe([Rule("*", [Step("quantize", {"mode": "w8a8"})])]).plan(model)
    assert sorted(plan) == ["2", "4", "6"]  # not 0.down / 0.up


# ---- apply ----------------------------------------------------------------------------------------
def test_apply_recipe_mixed_rules_on_an_mlp():
    model, data = mlp(), batches()
    x = torch.randn(7, 96)
    with torch.no_grad():
        ref = model(x)
    recipe = Recipe.from_dict({"rule": [
        {"pattern": "0", "quantize": {"mode": "w4a16", "group_size": 32, "method": "gptq"}},
        {"pattern": "2", "low_rank": {"rank": 48}, "quantize": {"mode": "w8a16"}},
        {"pattern": "4", "sparsify": {"sparsity": 0.3, "method": "wanda"}, "quantize": {"mode": "w8a16"}},
        {"pattern": "6", "quantize": {"mode": "w4a16", "group_size": 32, "method": "gptq"}},  # same step as "0"
    ]})
    with warnings.catch_warnings():  # thin-calibration and "runs dense" notes: the test is the result
        warnings.simplefilter("ignore")
        reports = apply_recipe(model, recipe, calibration=data, progress=False)
    # low_rank, sparsify, quantize: three passes, the two gptq layers in one
    assert [r.method.split(" ")[0] for r in reports] == ["LowRankConfig", "SparsityConfig", "Int4WeightOnlyConfig"]
    assert sorted(rec.name for rec in reports[2].converted) == ["0", "6"]
    assert isinstance(model[0], QuantLinear) and isinstance(model[6], QuantLinear)
    assert isinstance(model[2], LowRankLinear) and isinstance(model[2].down, QuantLinear)
    assert isinstance(model[4], SparseLinear) and model[4].value_dtype == torch.int8
    with torch.no_grad():
        assert cosine(model(x), ref) > 0.9


def test_apply_recipe_takes_a_plan_dict():
    model = mlp()
    plan = {"2": [Step("hash", {"compression": 0.25})], "4": [Step("quantize", {"mode": "w8a8"})]}
    reports = apply_recipe(model, plan, progress=False)
    assert len(reports) == 2 and isinstance(model[2], HashedLinear) and isinstance(model[4], QuantLinear)
    assert type(model[0]) is nn.Linear
    with pytest.raises(ValueError, match="no nn.Linear / nn.Conv2d under: 'nope'"):
        apply_recipe(mlp(), {"nope": [Step("quantize", {"mode": "w8a8"})]})
    with pytest.raises(TypeError, match="Recipe or a plan"):
        apply_recipe(mlp(), "w8a8")


def test_apply_recipe_prune_needs_and_uses_calibration():
    model, data = mlp(), batches()
    recipe = Recipe.from_dict({"rule": [{"pattern": "[02]", "prune": {"ratio": 0.25}},
                                        {"pattern": "4", "quantize": {"mode": "w8a8"}}]})
    with pytest.raises(ValueError, match="prune needs calibration"):
        apply_recipe(copy.deepcopy(model), recipe, progress=False)
    reports = apply_recipe(model, recipe, calibration=data, progress=False)
    assert reports[0].method.startswith("StructuredPruningConfig")
    assert model[0].out_features == 120 and model[2].out_features == 72  # 160 and 96 less a quarter
    assert type(model[4]) is QuantLinear and model[4].in_features == 72
    assert model(torch.randn(3, 96)).shape == (3, 10)


def test_distill_needs_a_teacher_and_then_helps():
    torch.manual_seed(3)
    teacher = mlp()
    data = batches(count=2, rows=32)
    recipe = Recipe.from_dict({"rule": [{"pattern": "[024]", "hash": {"compression": 0.25},
                                         "distill": {"steps": 40, "lr": 3e-3, "hidden": "mse"}}]})
    with pytest.raises(ValueError, match="needs teacher="):
        apply_recipe(copy.deepcopy(teacher), recipe, calibration=data, progress=False)
    x = torch.cat(data)
    hashed_only = copy.deepcopy(teacher)
    apply_recipe(hashed_only, {n: [Step("hash", {"compression": 0.25})] for n in "024"}, progress=False)
    student = copy.deepcopy(teacher)
    apply_recipe(student, recipe, teacher=teacher, train_data=data, progress=False)
    with torch.no_grad():
        before = F.mse_loss(hashed_only(x), teacher(x))
        after = F.mse_loss(student(x), teacher(x))
    assert isinstance(student[0], HashedLinear)
    assert after < 0.8 * before


@pytest.fixture
def tiny_bert():
    """A 2-layer BertModel from a config (nothing downloaded) and keyword batches with some padding."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    g = torch.Generator().manual_seed(5)
    data = []
    for _ in range(6):
        ids = torch.randint(1, 97, (4, 20), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 13:] = 0
        data.append({"input_ids": ids, "attention_mask": mask})
    return model, data


def test_bert_with_the_example_recipe(tiny_bert):
    model, data = tiny_bert
    with torch.no_grad():
        ref = model(**data[0]).last_hidden_state
    recipe = Recipe.from_toml(EXAMPLE)
    plan = recipe.plan(model)
    assert "pooler.dense" not in plan
    assert plan["encoder.layer.1.attention.self.key"] == [Step("quantize", {"mode": "w8a8"})]
    assert plan["encoder.layer.0.output.dense"] == [Step("quantize", {"mode": "w4a16", "group_size": 32,
                                                                       "method": "gptq"})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_recipe(model, recipe, calibration=data, progress=False)
    layer = model.encoder.layer[0]
    assert isinstance(layer.attention.output.dense, QuantLinear) and layer.attention.output.dense.mode == "w8a8"
    assert isinstance(layer.intermediate.dense, QuantLinear) and layer.intermediate.dense.mode == "w4a16"
    assert isinstance(layer.output.dense, QuantLinear) and layer.output.dense.mode == "w4a16"
    assert type(model.pooler.dense) is nn.Linear
    with torch.no_grad():
        assert cosine(model(**data[0]).last_hidden_state, ref) > 0.95


def test_bert_prune_then_quantize_traces_keyword_batches(tiny_bert):
    model, data = tiny_bert
    recipe = Recipe.from_dict({"rule": [{"pattern": "*.intermediate.dense", "prune": {"ratio": 0.25},
                                         "quantize": {"mode": "w8a8"}}]})
    reports = apply_recipe(model, recipe, calibration=data, progress=False)
    assert [r.method.split(" ")[0] for r in reports] == ["StructuredPruningConfig", "Int8DynamicConfig"]
    for layer in model.encoder.layer:
        assert isinstance(layer.intermediate.dense, QuantLinear) and layer.intermediate.dense.out_features == 96
        assert type(layer.output.dense) is nn.Linear and layer.output.dense.in_features == 96
    assert model(**data[1]).last_hidden_state.shape == (4, 20, 64)
