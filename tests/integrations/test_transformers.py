"""Hugging Face transformers round trip (slimkernels/integrations/transformers.py):
quantize_ -> save_pretrained -> from_pretrained gives back the same compressed modules and identical
outputs; from_pretrained(..., quantization_config=SlimkernelsConfig(...)) quantizes on load exactly as
quantize_ does; what cannot round-trip fails at save time.

Tiny random BERT, Llama and T5 (gated and non-gated feed-forward) built from configs (nothing is
downloaded), and the local all-MiniLM-L6-v2 weights when the weights package is installed.
Skipped without transformers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slimkernels  # noqa: E402
from slimkernels.integrations import transformers as hf  # noqa: E402
from slimkernels.nn import CompressedModule, QuantLinear  # noqa: E402

if hf.transformers_supported() is not None:
    pytest.skip(hf.transformers_supported(), allow_module_level=True)

from transformers import (  # noqa: E402
    AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM,
    T5Config, T5ForConditionalGeneration,
)

transformers.logging.set_verbosity_error()
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
VOCAB = 128


# ---- tiny models: (build float model, Auto class, forward) ---------------------------------------------
def _bert():
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=VOCAB, max_position_embeddings=64)
    return BertModel(config)


def _llama():
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _t5(feed_forward_proj):
    def build():
        config = T5Config(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                          vocab_size=VOCAB, feed_forward_proj=feed_forward_proj, decoder_start_token_id=0)
        return T5ForConditionalGeneration(config)
    return build


MODELS = {
    "bert": (_bert, AutoModel, lambda m, x: m(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state),
    "llama": (_llama, AutoModelForCausalLM, lambda m, x: m(input_ids=x).logits),
    "t5": (_t5("relu"), AutoModelForSeq2SeqLM, lambda m, x: m(input_ids=x, decoder_input_ids=x[:, :5]).logits),
    "t5-gated": (_t5("gated-gelu"), AutoModelForSeq2SeqLM,
                 lambda m, x: m(input_ids=x, decoder_input_ids=x[:, :5]).logits),
}
CONFIGS = {
    "w8a8": slimkernels.Int8DynamicConfig(),
    "w8a16": slimkernels.Int8WeightOnlyConfig(),
    "w4a16-g32": slimkernels.Int4WeightOnlyConfig(group_size=32),
    # NF4 levels: the same checkpoint format as k-means codebooks (packed codes + a float32 codebook
    # per row), without k-means' fitting time; test_kmeans_codebook_per_layer covers k-means
    "codebook4": slimkernels.CodebookConfig(bits=4, codebook="nf4"),
}


def _float_model(kind):
    torch.manual_seed(0)
    build, auto, run = MODELS[kind]
    return build().eval(), auto, run


def _inputs():
    return torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def _quantize(model, config, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left in float are warned about; not the subject here
        return slimkernels.quantize_(model, config, progress=False, **kwargs)


def _layout(model):
    """name -> (module type, its layer config) for the compressed modules; type for the rest."""
    return {name: (type(m).__name__, m.layer_config() if isinstance(m, CompressedModule) else None)
            for name, m in model.named_modules()}


@torch.no_grad()
def _out(run, model, x):
    return run(model, x)


# ---- quantize_ -> save_pretrained -> from_pretrained ---------------------------------------------------
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_round_trip_identical(kind, config_name, tmp_path):
    model, auto, run = _float_model(kind)
    _quantize(model, CONFIGS[config_name])
    x = _inputs()
    before = _out(run, model, x)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "slimkernels" and saved["config"]["name"] == type(CONFIGS[config_name]).__name__
    assert set(saved["layers"]) == {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}

    loaded = auto.from_pretrained(tmp_path)
    assert _layout(loaded) == _layout(model)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == len(saved["layers"]) > 0
    loaded.tie_weights()  # T5 ties lm_head to the embedding: a compressed lm_head is left alone
    assert torch.equal(_out(run, loaded, x), before)  # bit-exact: nothing re-quantized
    assert isinstance(loaded.config.quantization_config, hf.SlimkernelsConfig)
    # and again: a loaded model saves and loads the same
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(_out(run, auto.from_pretrained(tmp_path / "again"), x), before)


def test_kmeans_codebook_per_layer(tmp_path):
    model, auto, run = _float_model("bert")
    _quantize(model, slimkernels.CodebookConfig(bits=3, per="layer"))
    assert model.pooler.dense.codebook.shape == (1, 8)
    x = _inputs()
    before = _out(run, model, x)
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path)
    assert _layout(loaded) == _layout(model) and torch.equal(_out(run, loaded, x), before)


def test_t5_feed_forward_reads_weight_dtype(tmp_path):
    """T5's feed-forward casts its input to self.wo.weight.dtype: a compressed wo reports the float
    layer's dtype (bf16 here), so the cast is a no-op and the model runs; saved and loaded in bf16."""
    model, auto, run = _float_model("t5-gated")
    model = model.to(torch.bfloat16)
    _quantize(model, slimkernels.Int8WeightOnlyConfig())
    wo = model.decoder.block[0].layer[2].DenseReluDense.wo
    assert isinstance(wo, QuantLinear) and wo.weight.dtype == torch.bfloat16 and wo.weight.shape == (64, 128)
    x = _inputs()
    before = _out(run, model, x)
    assert before.dtype == torch.bfloat16 and torch.isfinite(before).all()
    model.save_pretrained(tmp_path)
    if _TRANSFORMERS_MAJOR >= 5:
        loaded = auto.from_pretrained(tmp_path)  # dtype "auto": the saved bfloat16
        assert loaded.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.bfloat16
        assert torch.equal(_out(run, loaded, x), before)
    else:  # transformers 4 would cast the float32 scales to bfloat16: refused, with what to do
        with pytest.raises(ValueError, match=r"load with dtype=torch\.float32"):
            auto.from_pretrained(tmp_path, dtype=torch.bfloat16)
    # loaded in another dtype, the layers that followed the model's dtype follow the new one
    loaded = auto.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.float32
    out = _out(run, loaded, x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_filtered_layers_stay_float(tmp_path):
    """Layers quantize_ left in float (filter_fn, or skipped: group size) load back in float."""
    model, auto, run = _float_model("llama")
    report = _quantize(model, slimkernels.Int4WeightOnlyConfig(group_size=128),  # divides only the 128-wide inputs
                       filter_fn=lambda m, name: name != "lm_head")
    assert report.skipped and isinstance(model.lm_head, torch.nn.Linear)
    x = _inputs()
    before = _out(run, model, x)
    model.save_pretrained(tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert set(recorded["skipped"]) == {r.name for r in report.skipped}
    loaded = auto.from_pretrained(tmp_path)
    assert _layout(loaded) == _layout(model) and type(loaded.lm_head) is torch.nn.Linear
    assert torch.equal(_out(run, loaded, x), before)


def test_gptq_quantized_model_round_trips(tmp_path):
    model, auto, run = _float_model("llama")
    calibration = [{"input_ids": torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(i))}
                   for i in range(2)]
    _quantize(model, slimkernels.Int4WeightOnlyConfig(group_size=32, method="gptq"), calibration=calibration)
    x = _inputs()
    before = _out(run, model, x)
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path)
    assert _layout(loaded) == _layout(model) and torch.equal(_out(run, loaded, x), before)


def test_qat_convert_round_trips(tmp_path):
    model, auto, run = _float_model("t5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimkernels.prepare_qat_(model, slimkernels.Int4WeightOnlyConfig(group_size=32))
    slimkernels.convert_(model, progress=False)
    x = _inputs()
    before = _out(run, model, x)
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path)
    assert _layout(loaded) == _layout(model) and torch.equal(_out(run, loaded, x), before)


def test_slimkernels_load_then_save_pretrained(tmp_path):
    """A checkpoint of slimkernels.save loaded into a transformers model saves with save_pretrained."""
    model, auto, run = _float_model("llama")
    _quantize(model, slimkernels.CodebookConfig(bits=4, codebook="nf4"))
    slimkernels.save(model, tmp_path / "model.safetensors")
    fresh, _, _ = _float_model("llama")
    slimkernels.load(tmp_path / "model.safetensors", fresh)
    fresh.save_pretrained(tmp_path / "hf")
    loaded = auto.from_pretrained(tmp_path / "hf")
    x = _inputs()
    assert _layout(loaded) == _layout(model) and torch.equal(_out(run, loaded, x), _out(run, model, x))


def test_base_model_from_causal_lm_checkpoint(tmp_path):
    """A LlamaForCausalLM checkpoint loaded into LlamaModel (AutoModel): names lose the "model."
    prefix, lm_head is dropped, as transformers does for float checkpoints."""
    model, _, _ = _float_model("llama")
    _quantize(model, slimkernels.Int8DynamicConfig())
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    x = _inputs()
    assert isinstance(base.layers[0].self_attn.q_proj, QuantLinear)
    assert torch.equal(_out(lambda m, i: m(input_ids=i).last_hidden_state, base, x),
                       _out(lambda m, i: m.model(input_ids=i).last_hidden_state, model, x))


# ---- quantize on load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,config_name", [("bert", "w8a8"), ("llama", "w4a16-g32"), ("t5-gated", "codebook4"),
                                              ("t5", "w8a16")])
def test_quantize_on_load_equals_quantize_(kind, config_name, tmp_path):
    model, auto, run = _float_model(kind)
    model.save_pretrained(tmp_path / "float")
    config = CONFIGS[config_name]

    expected = auto.from_pretrained(tmp_path / "float")
    _quantize(expected, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = auto.from_pretrained(tmp_path / "float", quantization_config=hf.SlimkernelsConfig(config))
    x = _inputs()
    assert _layout(loaded) == _layout(expected)
    assert torch.equal(_out(run, loaded, x), _out(run, expected, x))

    # a model quantized on load saves as a quantized checkpoint
    loaded.save_pretrained(tmp_path / "quantized")
    again = auto.from_pretrained(tmp_path / "quantized")
    assert _layout(again) == _layout(expected) and torch.equal(_out(run, again, x), _out(run, expected, x))


def test_quantize_on_load_modules_to_not_convert(tmp_path):
    model, auto, _ = _float_model("llama")
    model.save_pretrained(tmp_path)
    qconfig = hf.SlimkernelsConfig("w8a16", modules_to_not_convert=["lm_head", "model.layers.1"])
    loaded = auto.from_pretrained(tmp_path, quantization_config=qconfig)
    kinds = {name: type(m) for name, m in loaded.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}
    assert kinds["lm_head"] is torch.nn.Linear and kinds["model.layers.1.mlp.up_proj"] is torch.nn.Linear
    assert kinds["model.layers.0.mlp.up_proj"] is QuantLinear and kinds["model.layers.0.self_attn.q_proj"] is QuantLinear


def test_quantize_on_load_refuses_gptq(tmp_path):
    model, auto, _ = _float_model("bert")
    model.save_pretrained(tmp_path)
    qconfig = hf.SlimkernelsConfig(slimkernels.Int4WeightOnlyConfig(group_size=32, method="gptq"))
    with pytest.raises(ValueError, match=r"calibration data.*slimkernels\.quantize_\(model, config, calibration="):
        auto.from_pretrained(tmp_path, quantization_config=qconfig)
    with pytest.raises(ValueError, match="no config to quantize with"):
        auto.from_pretrained(tmp_path, quantization_config=hf.SlimkernelsConfig())


# ---- the config --------------------------------------------------------------------------------------
def test_config_json_round_trip():
    qconfig = hf.SlimkernelsConfig(slimkernels.CodebookConfig(bits=3, per="layer"), modules_to_not_convert=["lm_head"])
    data = json.loads(qconfig.to_json_string())
    assert data["config"] == {"name": "CodebookConfig", **{k: v for k, v in data["config"].items() if k != "name"}}
    back = hf.SlimkernelsConfig.from_dict(data)
    assert back.compression_config() == slimkernels.CodebookConfig(bits=3, per="layer")
    assert back.to_dict() == qconfig.to_dict()
    assert hf.SlimkernelsConfig("w8a8").compression_config() == slimkernels.Int8DynamicConfig()
    with pytest.raises(ValueError, match="upgrade slimkernels"):
        hf.SlimkernelsConfig(format_version=hf.FORMAT_VERSION + 1)
    with pytest.raises(TypeError, match="quantization config"):
        hf.SlimkernelsConfig(config=3)
    # a config from a newer slimkernels: the checkpoint still loads (its layers are what matter), and
    # only quantizing with it says what is wrong
    newer = hf.SlimkernelsConfig.from_dict({**data, "config": {"name": "Int3Config", "bits": 3}})
    with pytest.raises(ValueError, match="unknown slimkernels config 'Int3Config'"):
        newer.compression_config()


def test_registered_with_transformers():
    from transformers.quantizers import auto

    assert auto.AUTO_QUANTIZATION_CONFIG_MAPPING["slimkernels"] is hf.SlimkernelsConfig
    assert auto.AUTO_QUANTIZER_MAPPING["slimkernels"] is hf.SlimkernelsHfQuantizer
    assert hf.register() is True  # idempotent


# ---- what cannot round-trip fails at save time ---------------------------------------------------------
def test_save_refuses_shared_compressed_module(tmp_path):
    model, _, _ = _float_model("bert")
    _quantize(model, slimkernels.Int8DynamicConfig())
    model.encoder.layer[1].attention.self.query = model.encoder.layer[0].attention.self.query
    with pytest.raises(ValueError, match="several names"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_save_refuses_shared_compressed_tensors(tmp_path):
    model, _, _ = _float_model("bert")
    _quantize(model, slimkernels.Int8WeightOnlyConfig())
    attention = model.encoder.layer[0].attention.self
    attention.key.qweight = attention.query.qweight  # same shapes: two layers, one tensor
    with pytest.raises(ValueError, match="shares its storage with the compressed tensor"):
        model.save_pretrained(tmp_path)


def test_save_refuses_fake_quant_layers(tmp_path):
    model, _, _ = _float_model("bert")
    _quantize(model, slimkernels.Int8DynamicConfig(), filter_fn=lambda m, name: "attention" in name)
    slimkernels.prepare_qat_(model, slimkernels.Int8WeightOnlyConfig(), filter_fn=lambda m, name: "intermediate" in name)
    with pytest.raises(ValueError, match=r"convert_\(model\)"):
        model.save_pretrained(tmp_path)


def test_save_refuses_when_transformers_too_old(tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "MIN_TRANSFORMERS", "999.0")
    model, _, _ = _float_model("bert")
    with pytest.warns(UserWarning, match="save_pretrained will refuse"):
        _quantize_keep_warnings(model)
    with pytest.raises(ValueError, match="random weights.*slimkernels.save"):
        model.save_pretrained(tmp_path)


def _quantize_keep_warnings(model):
    return slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(), progress=False)


def test_load_refuses_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    model, auto, _ = _float_model("bert")
    _quantize(model, slimkernels.Int8DynamicConfig())
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.layer.0.output.dense.weight_scale"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.output\.dense: weight_scale is missing"):
        auto.from_pretrained(tmp_path)


def test_dequantize(tmp_path):
    model, auto, run = _float_model("llama")
    _quantize(model, slimkernels.Int8WeightOnlyConfig())
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path)
    x = _inputs()
    before = _out(run, loaded, x)
    loaded.dequantize()
    assert not any(isinstance(m, CompressedModule) for m in loaded.modules())
    assert getattr(loaded.config, "quantization_config", None) is None
    torch.testing.assert_close(_out(run, loaded, x), before, atol=1e-4, rtol=1e-4)


# ---- a fresh process: `import slimkernels` alone registers the quantizer -------------------------------
def test_fresh_process_import_slimkernels_registers(tmp_path):
    model, _, _ = _float_model("bert")
    _quantize(model, slimkernels.Int8DynamicConfig())
    model.save_pretrained(tmp_path)
    code = (
        "import sys, slimkernels\n"
        "assert 'transformers' not in sys.modules, 'import slimkernels imported transformers'\n"
        "from slimkernels.testing import import_torchvision\n"  # as tests/conftest.py does: see there
        "try:\n    import_torchvision()\nexcept ImportError:\n    pass\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path)!r})\n"
        "from slimkernels.nn import QuantLinear\n"
        "print(sum(isinstance(x, QuantLinear) for x in m.modules()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(slimkernels.__file__)), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "13"


# ---- real weights: all-MiniLM-L6-v2 ----------------------------------------------------------------------
def test_minilm_w8a8_round_trip(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))
    import minilm_data as md

    if md.missing():
        pytest.skip(md.missing())
    model, tokenizer = md.load()
    _quantize(model, slimkernels.Int8DynamicConfig(), filter_fn=md.is_encoder_linear)
    sentences = list(md.EVALUATION_SENTENCES[:8])
    before = md.encode(model, tokenizer, sentences)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, local_files_only=True).eval()
    assert _layout(loaded) == _layout(model)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 36 and type(loaded.pooler.dense) is torch.nn.Linear
    assert torch.equal(md.encode(loaded, tokenizer, sentences), before)
