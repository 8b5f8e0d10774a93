"""Clear answers where a pass has nothing to do or is called wrongly: a warning and a report that say why
nothing happened; "did you mean Int8DynamicConfig()" for a config class or a mode name; a checkpoint of
one format loaded into a model quantized in another names both formats."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import (
    CodebookConfig, FakeQuantLinear, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantLinear,
    prepare_qat_, quantize_,
)
from slimkernels.compress import config_suggestion, quantize_layer, run_pass


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))


# ---- nothing to do -----------------------------------------------------------------------------------
def test_already_quantized_model_warns_and_reports_why():
    model = _mlp()
    quantize_(model, Int8DynamicConfig(), progress=False)
    with pytest.warns(UserWarning, match=r"quantize_: nothing to convert: it is already compressed \(2 QuantLinear "
                                         r"w8a8\) and has no nn.Linear left"):
        report = quantize_(model, Int4WeightOnlyConfig(group_size=32), progress=False)
    assert report.layers == [] and "already compressed" in report.note
    assert report.note in str(report) and report.to_dict()["note"] == report.note
    assert report.model_bytes_after == report.model_bytes_before


def test_filter_that_matches_nothing_and_models_without_linears():
    with pytest.warns(UserWarning, match=r"filter_fn accepted none of its 2 nn.Linear layers \('0', '2'\)"):
        report = quantize_(_mlp(), Int8DynamicConfig(), filter_fn=lambda m, name: name == "head", progress=False)
    assert "filter_fn accepted none" in report.note
    with pytest.warns(UserWarning, match="it has no nn.Linear layers"):
        assert "no nn.Linear" in quantize_(nn.Sequential(nn.ReLU()), Int8DynamicConfig(), progress=False).note

    class MyLinear(nn.Linear):
        pass

    with pytest.warns(UserWarning, match=r"its 1 linear layers are subclasses of nn.Linear \(MyLinear\)"):
        quantize_(nn.Sequential(MyLinear(8, 8)), Int8DynamicConfig(), progress=False)


def test_qat_prepared_model_says_call_convert():
    model = _mlp()
    prepare_qat_(model, Int8WeightOnlyConfig())
    with pytest.warns(UserWarning, match=r"prepared for QAT \(2 FakeQuantLinear layers.*call convert_\(model\)"):
        quantize_(model, Int8DynamicConfig(), progress=False)
    with pytest.warns(UserWarning, match="prepare_qat_: nothing to convert"):
        prepare_qat_(model, Int8WeightOnlyConfig())
    assert isinstance(model[0], FakeQuantLinear)


def test_warning_points_at_the_callers_line():
    model = _mlp()
    quantize_(model, Int8DynamicConfig(), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(model, Int8DynamicConfig(), progress=False)
    assert [w.filename for w in caught] == [__file__]


def test_every_layer_skipped_is_in_the_note():
    with pytest.warns(UserWarning, match="min_features"):
        report = quantize_(_mlp(), Int8DynamicConfig(min_features=1000), progress=False)
    assert len(report.skipped) == 2 and report.note.startswith("nothing converted: every one of the 2 candidate")


def test_a_normal_pass_has_no_note():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quantize_(_mlp(), Int8DynamicConfig(), progress=False).note == ""


# ---- did you mean ... --------------------------------------------------------------------------------
@pytest.mark.parametrize("value, suggestion", [
    (Int8DynamicConfig, "Int8DynamicConfig()"), (Int4WeightOnlyConfig, "Int4WeightOnlyConfig()"),
    ("w8a8", "Int8DynamicConfig()"), ("W8A16", "Int8WeightOnlyConfig()"), ("int4", "Int4WeightOnlyConfig()"),
    ("w4a16", "Int4WeightOnlyConfig()"), ("int8", "Int8DynamicConfig() or Int8WeightOnlyConfig() for weight-only int8"),
    ("int8_weight_only", "Int8WeightOnlyConfig()"), ("nf4", "CodebookConfig(codebook='nf4')"),
    ("codebook", "CodebookConfig()"), ("Int8DynamicConfig", "Int8DynamicConfig()"),
])
def test_config_suggestions(value, suggestion):
    assert config_suggestion(value) == suggestion


def test_passes_say_did_you_mean():
    model = _mlp()
    for call, fn in ((lambda c: quantize_(model, c), "quantize_"), (lambda c: prepare_qat_(model, c), "prepare_qat_"),
                     (lambda c: run_pass(model, c, "my_pass_"), "my_pass_"),
                     (lambda c: quantize_layer(model[0], c), "quantize_layer")):
        with pytest.raises(TypeError, match=rf"{fn}: got the class Int8DynamicConfig, not a config object; did you "
                                            r"mean Int8DynamicConfig\(\)\?"):
            call(Int8DynamicConfig)
        with pytest.raises(TypeError, match=rf"{fn}: config must be a config object, not the string 'w8a8'; did you "
                                            r"mean Int8DynamicConfig\(\)\?"):
            call("w8a8")
        with pytest.raises(TypeError, match=r"'gptq'; did you mean Int4WeightOnlyConfig\(method='gptq'\)"):
            call("gptq")
        with pytest.raises(TypeError, match=r"not the string 'bogus'; configs: Int8DynamicConfig\(\), "):
            call("bogus")
    with pytest.raises(TypeError, match=r"did you mean CodebookConfig\(\)\?"):
        QuantLinear.from_float(nn.Linear(8, 8), CodebookConfig)
    assert isinstance(model[0], nn.Linear) and type(model[0]) is nn.Linear  # nothing was touched


# ---- load across formats -----------------------------------------------------------------------------
def test_load_names_both_formats(tmp_path):
    source = _mlp()
    quantize_(source, Int4WeightOnlyConfig(group_size=64), progress=False)
    path = tmp_path / "w4a16.safetensors"
    slimkernels.save(source, path)
    target = _mlp()
    quantize_(target, Int8DynamicConfig(), progress=False)
    with pytest.raises(ValueError, match=r"checkpoint layer '0' is w4a16 g64 asym but the model's is w8a8: the "
                                         r"checkpoint records .*Load the checkpoint into the float model"):
        slimkernels.load(path, target)
    other_group = _mlp()
    quantize_(other_group, Int4WeightOnlyConfig(group_size=32), progress=False)
    with pytest.raises(ValueError, match="checkpoint layer '0' is w4a16 g64 asym but the model's is w4a16 g32 asym"):
        slimkernels.load(path, other_group)
    no_bias = _mlp()
    no_bias[0] = QuantLinear(128, 64, bias=False, mode="w4a16", group_size=64)
    with pytest.raises(ValueError, match=r"checkpoint layer '0' and the model's are both w4a16 g64 asym but differ: "
                                         r"bias True in the checkpoint, False in the model"):
        slimkernels.load(path, no_bias)
    slimkernels.load(path, _mlp())  # into the float model it works
