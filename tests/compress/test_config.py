"""The config base (slimkernels.compress.config.CompressionConfig) and the generic pass (passes.run_pass)
that quantize_ uses and the coming sparsify_ / prune_ / low_rank_ will: a new config with its own
handler and calibration statistics plugs in without touching the pass."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn

from slimkernels import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, prepare_qat_, quantize_
from slimkernels.compress import (
    HANDLERS, CompressionConfig, HessianCollector, InputNormCollector, InputRowsCollector, QuantizationConfig, SkipLayer,
    config_for_mode, register_handler, run_pass,
)

CONFIGS = (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig, CodebookConfig)


def test_existing_configs_keep_fields_order_defaults_and_mode():
    fields = {cls: [(f.name, f.default) for f in dataclasses.fields(cls)] for cls in CONFIGS}
    # new fields go last (act: int8 activations of the weight-only configs), so positions stay
    assert fields[Int8DynamicConfig] == [("min_features", 1), ("act_bits", 8)]
    assert fields[Int8WeightOnlyConfig] == [("min_features", 1), ("act", None)]
    assert fields[Int4WeightOnlyConfig] == [("group_size", 128), ("symmetric", False), ("method", "rtn"),
                                            ("min_features", 1), ("damp", 0.01), ("block_size", 128),
                                            ("act_order", False), ("act", None)]
    assert fields[CodebookConfig] == [("bits", 4), ("codebook", "kmeans"), ("per", "row"), ("min_features", 1),
                                      ("seed", 0), ("method", "rtn"), ("damp", 0.01), ("block_size", 128),
                                      ("act_order", False), ("keep_zero", False), ("act", None)]
    assert Int4WeightOnlyConfig(64, True) == Int4WeightOnlyConfig(group_size=64, symmetric=True)
    assert [cls().mode for cls in CONFIGS] == ["w8a8", "w8a16", "w4a16", "codebook"]
    for cls in CONFIGS:
        config = cls()
        assert isinstance(config, CompressionConfig) and isinstance(config, QuantizationConfig)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.min_features = 2
        with pytest.raises(ValueError, match=f"{cls.__name__}.min_features must be an int >= 1, got 0"):
            cls(min_features=0)
        assert config_for_mode(config.mode) == config
    with pytest.raises(ValueError, match="mode must be one of"):
        config_for_mode("w3a3")


def test_calibration_hooks():
    for cls in CONFIGS:
        config = cls()
        assert not config.needs_calibration and config.collectors() == {}
    for cls in (Int4WeightOnlyConfig, CodebookConfig):
        config = cls(method="gptq")
        assert config.needs_calibration and config.collectors() == {"hessian": HessianCollector,
                                                                  "input_rows": InputRowsCollector}
        fallback, note = config.uncalibrated()
        assert note == "rtn" and fallback == dataclasses.replace(config, method="rtn")
    assert Int4WeightOnlyConfig(group_size=32).describe() == "w4a16 g32 asym rtn"
    assert CodebookConfig(bits=3, method="gptq").describe() == "codebook 3-bit kmeans per row gptq"


# ---- a new pass plugged in through the base class: Wanda-style pruning ------------------------------
@dataclasses.dataclass(frozen=True)
class WandaConfig(CompressionConfig):
    """Zero the `sparsity` fraction of each row with the smallest |W_ij| * ||X_j|| (Sun et al. 2023)."""

    sparsity: float = 0.5
    min_features: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"WandaConfig.sparsity must be in [0, 1), got {self.sparsity!r}")

    def describe(self) -> str:
        return f"wanda {self.sparsity:.0%}"

    def skip_reason(self, module):
        return "bias-free layers only in this test" if module.bias is not None and module.out_features == 7 else None

    def collectors(self):
        return {"input_norm": InputNormCollector}


def _prune(module: nn.Linear, config: WandaConfig, input_norm=None) -> nn.Linear:
    if input_norm is None:
        raise SkipLayer("Wanda needs input norms")
    score = module.weight.detach().abs() * input_norm
    k = int(config.sparsity * module.in_features)
    new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    new.load_state_dict(module.state_dict())
    with torch.no_grad():
        new.weight.scatter_(1, score.topk(k, dim=1, largest=False).indices, 0.0)
    return new


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h):
        return h + self.down(torch.relu(self.up(h)))


class Tiny(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(2))
        self.head = nn.Linear(d, 7)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_a_new_config_runs_through_the_generic_pass():
    register_handler(WandaConfig)(_prune)
    try:
        torch.manual_seed(0)
        model = Tiny()
        batches = [torch.randn(4, 5, 16) * torch.linspace(0.1, 4, 16) for _ in range(3)]
        with pytest.warns(UserWarning, match="my_prune_: left head in float: no calibration inputs reach this layer"):
            report = run_pass(model, WandaConfig(sparsity=0.5), "my_prune_", calibration=batches, progress=False)
        assert [r.name for r in report.converted] == ["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"]
        assert all(r.detail == "wanda 50%" for r in report.converted)
        assert [(r.name, r.detail) for r in report.skipped] == [("head", "no calibration inputs reach this layer")]
        assert float((model.layers[1].down.weight == 0).float().mean()) == 0.5
        assert report.method == "WandaConfig (wanda 50%)"
        with pytest.raises(ValueError, match="my_prune_: wanda 50% needs calibration data"):
            run_pass(Tiny(), WandaConfig(), "my_prune_")
        # not a quantization config: quantize_ and prepare_qat_ refuse it
        with pytest.raises(TypeError, match="not a quantization config"):
            quantize_(Tiny(), WandaConfig())
        with pytest.raises(TypeError, match="config must be one of"):
            prepare_qat_(Tiny(), WandaConfig())
        with pytest.raises(ValueError, match="WandaConfig.min_features"):
            WandaConfig(min_features=0)
    finally:
        HANDLERS.pop(WandaConfig)


def test_configs_must_stay_frozen():
    with pytest.raises(TypeError):
        @dataclasses.dataclass
        class Loose(CompressionConfig):
            min_features: int = 1


def test_non_config_inputs_are_rejected():
    with pytest.raises(TypeError, match="quantize_: no handler for config object"):
        quantize_(Tiny(), object())
    with pytest.raises(TypeError, match=r"prepare_qat_: config must be a config object, not the string 'w4a16'; "
                                        r"did you mean Int4WeightOnlyConfig\(\)\?"):
        prepare_qat_(Tiny(), "w4a16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="wrap a lone nn.Linear"):
            quantize_(nn.Linear(4, 4), Int8DynamicConfig())


@pytest.mark.parametrize("per", ["row", "layer"])
def test_codebook_keep_zero_keeps_pruned_weights_zero(per):
    """keep_zero: through quantize_ and through QAT, a zero weight dequantizes to exactly 0 (Deep Compression
    shares the weights of a pruned layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 24))
    with torch.no_grad():
        model[0].weight[torch.rand(24, 48) < 0.7] = 0
    pruned = model[0].weight == 0
    config = CodebookConfig(bits=3, per=per, keep_zero=True)
    assert config.describe().endswith("with 0")
    quantized = copy.deepcopy(model)
    quantize_(quantized, config, progress=False)
    assert (quantized[0].dequantized_weight()[pruned] == 0).all()
    qat = copy.deepcopy(model)
    prepare_qat_(qat, config)
    assert (qat[0].quantized_weight()[pruned] == 0).all()
