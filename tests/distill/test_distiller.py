"""slimkernels.distill.Distiller on tiny models: the loss it returns, what it freezes and hooks, learned
projections for pruned students, a QAT student, transformer attention, the MiniLM bench's functions,
and bad input."""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.testing import import_torchvision
from slimkernels.distill import Distiller, attention_transfer_loss, feature_loss, hidden_loss, kd_loss, mean_pool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mlp(hidden: int = 24, classes: int = 7, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, classes))


def narrowed(model: nn.Sequential, keep: int) -> nn.Sequential:
    """The teacher with its hidden widths cut to `keep` (the first units): a structurally pruned student."""
    student = copy.deepcopy(model)
    for i, (rows, cols) in {0: (keep, None), 2: (keep, keep), 4: (None, keep)}.items():
        old = student[i]
        w = old.weight.detach()[:rows, :cols] if rows else old.weight.detach()[:, :cols]
        new = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.copy_(old.bias.detach()[:rows] if rows else old.bias.detach())
        student[i] = new
    return student


def cnn(width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 5))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(5)


def test_kd_loss_is_the_functional_loss_and_teacher_is_frozen(gen):
    teacher, student = mlp(seed=0), mlp(seed=1)
    teacher.train()
    distiller = Distiller(teacher, student, kd=dict(temperature=3.0, alpha=0.25))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x, labels = torch.randn(9, 10, generator=gen), torch.randint(0, 7, (9,), generator=gen)
    loss = distiller(x, labels=labels)
    with torch.no_grad():
        want = kd_loss(student(x), teacher(x), labels, temperature=3.0, alpha=0.25)
    torch.testing.assert_close(loss.detach(), want)
    assert set(distiller.last_losses) == {"kd", "total"} and distiller.last_losses["total"] == pytest.approx(float(want))
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # train() trains the student, never the teacher; parameters() are the student's
    distiller.train()
    assert student.training and not teacher.training
    assert {id(p) for p in distiller.parameters()} == {id(p) for p in student.parameters()}
    assert list(distiller.state_dict()) == [f"student.{k}" for k in student.state_dict()]
    teacher.train()  # someone else put it in train mode: the next call puts it back
    distiller(x)
    assert not teacher.training


def test_default_is_kd_without_labels(gen):
    teacher, student = mlp(seed=0), mlp(seed=1)
    x = torch.randn(5, 10, generator=gen)
    loss = Distiller(teacher, student)(x)
    with torch.no_grad():
        torch.testing.assert_close(loss.detach(), kd_loss(student(x), teacher(x)))


def test_pruned_student_gets_linear_projections_and_learns(gen):
    teacher = mlp(hidden=24)
    student = narrowed(teacher, 13)
    x = torch.randn(16, 10, generator=gen)
    distiller = Distiller(teacher, student, kd=dict(temperature=2.0), features={"2": "2", "4": "4"},
                          weights={"features": 0.5, "feature:4": 2.0}, example_inputs=(x[:2],))
    proj = distiller.projections["2"]
    assert type(proj) is nn.Linear and (proj.in_features, proj.out_features) == (13, 24)
    assert "4" not in distiller.projections  # logits: same width, no projection
    assert {id(p) for p in distiller.trainable_parameters()} == {id(p) for p in [*student.parameters(), *proj.parameters()]}
    loss = distiller(x)
    with torch.no_grad():
        h_s, h_t = student[:3](x), teacher[:3](x)
        want = (kd_loss(student(x), teacher(x), temperature=2.0) + 0.5 * F.mse_loss(proj(h_s), h_t)
                + 2.0 * F.mse_loss(student(x), teacher(x)))
    torch.testing.assert_close(loss.detach(), want)
    optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(25):
        loss = distiller(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first
    assert proj.weight.grad is not None
    # no hook stays behind on either model
    assert all(not m._forward_hooks for model in (teacher, student) for m in model.modules())


def test_nested_module_names(gen):
    teacher, student = nn.Sequential(mlp(hidden=12)), nn.Sequential(narrowed(mlp(hidden=12), 5))
    x = torch.randn(3, 10, generator=gen)
    distiller = Distiller(teacher, student, kd={}, features={"0.2": "0.2"}, example_inputs=(x,))
    assert [n for n, _ in distiller.named_parameters() if n.startswith("projections")] == \
        ["projections.0/2.weight", "projections.0/2.bias"]
    distiller(x).backward()
    assert distiller.projections["0/2"].weight.grad is not None


def test_lazy_projection_warns(gen):
    teacher = mlp(hidden=24)
    distiller = Distiller(teacher, narrowed(teacher, 9), features={"0": "0"})
    with pytest.warns(UserWarning, match="optimizer made before this call does not train it"):
        distiller(torch.randn(3, 10, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distiller(torch.randn(3, 10, generator=gen))  # created once


def test_pruned_cnn_conv_projection_and_attention_transfer(gen):
    teacher, student = cnn(8, seed=0), cnn(5, seed=1)
    x = torch.randn(2, 3, 9, 7, generator=gen)
    distiller = Distiller(teacher, student, features={"3": "3"}, attention={"4": "4"}, weights={"attention": 10.0},
                          example_inputs=(x,))
    proj = distiller.projections["3"]
    assert type(proj) is nn.Conv2d and (proj.in_channels, proj.out_channels, proj.kernel_size) == (5, 8, (1, 1))
    loss = distiller(x)
    with torch.no_grad():
        s3, t3 = student[:4](x), teacher[:4](x)
        want = F.mse_loss(proj(s3), t3) + 10.0 * attention_transfer_loss(F.relu(s3), F.relu(t3))
    torch.testing.assert_close(loss.detach(), want)
    assert set(distiller.last_losses) == {"feature:3", "attention:4", "total"}
    loss.backward()
    assert student[0].weight.grad.abs().sum() > 0


def test_qat_student_float_teacher(gen):
    teacher = mlp(hidden=32, classes=6)
    student = copy.deepcopy(teacher)
    slimkernels.prepare_qat_(student, slimkernels.Int8WeightOnlyConfig())
    assert any(type(m).__name__ == "FakeQuantLinear" for m in student.modules())
    x = torch.randn(32, 10, generator=gen) * 2
    labels = torch.randint(0, 6, (32,), generator=gen)
    distiller = Distiller(teacher, student, kd=dict(temperature=2.0, alpha=0.2), features={"2": "2"})
    optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = distiller(x, labels=labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in teacher.parameters())
    slimkernels.convert_(student, progress=False)
    assert any(type(m).__name__ == "QuantLinear" for m in student.modules())


def test_student_replaced_after_build_is_hooked_where_its_layers_are(gen):
    teacher = mlp()
    student = copy.deepcopy(teacher)
    distiller = Distiller(teacher, student, hidden="mse", features={"2": "2"})
    slimkernels.prepare_qat_(student, slimkernels.Int8WeightOnlyConfig())  # replaces student[2]
    x = torch.randn(4, 10, generator=gen)
    distiller(x)
    assert distiller.last_losses["feature:2"] > 0


def test_hidden_cosine_mean_pooled_with_token_mask(gen):
    class Encoder(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.embed = nn.Embedding(20, 6)
            self.mix = nn.Linear(6, 6)

        def forward(self, input_ids, attention_mask):
            return {"states": self.mix(self.embed(input_ids))}

    teacher, student = Encoder(0), Encoder(1)
    ids = torch.randint(0, 20, (3, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    distiller = Distiller(teacher, student, hidden="cosine", pool="mean", token_mask="attention_mask",
                          features={"mix": "mix"}, output=lambda out: out["states"])
    loss = distiller(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        s, t = student(ids, mask)["states"], teacher(ids, mask)["states"]
        want = hidden_loss(mean_pool(s, mask), mean_pool(t, mask), kind="cosine") + hidden_loss(s, t, mask=mask)
    torch.testing.assert_close(loss.detach(), want)
    with pytest.raises(ValueError, match="no keyword input of that name"):
        distiller(input_ids=ids, attention_mask=None)


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kd=dict(temp=2.0)), ValueError, "only 'temperature' and 'alpha'"),
    (dict(kd="yes"), TypeError, "kd must be"),
    (dict(hidden="l1"), ValueError, "hidden must be"),
    (dict(kd={}, hidden="mse"), ValueError, "choose one"),
    (dict(pool="mean"), ValueError, "pool applies to the hidden term"),
    (dict(features={"9": "0"}), ValueError, "the student has no module named '9'"),
    (dict(features={"0": "nope"}), ValueError, "the teacher has no module named 'nope'"),
    (dict(features=[("0", "0")]), TypeError, "features must be a dict"),
    (dict(feature_loss="l1"), ValueError, "feature_loss must be"),
    (dict(attention={"0": "0"}, attention_maps="maps"), ValueError, "attention_maps must be"),
    (dict(weights={"kdd": 1.0}), ValueError, "unknown key 'kdd'"),
    (dict(weights={"kd": -1.0}), ValueError, r"weights\['kd'\] must be a number >= 0"),
    (dict(output=3), TypeError, "output must be a callable"),
    (dict(example_inputs=[1]), TypeError, "example_inputs must be a tuple"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Distiller(mlp(), mlp(seed=1), **kwargs)


def test_bad_calls(gen):
    teacher = mlp()
    x = torch.randn(4, 10, generator=gen)
    with pytest.raises(ValueError, match="same module"):
        Distiller(teacher, teacher)
    with pytest.raises(TypeError, match="student must be an nn.Module"):
        Distiller(teacher, lambda x: x)
    with pytest.raises(ValueError, match=r"student logits shape \(4, 5\) != teacher logits shape \(4, 7\)"):
        Distiller(teacher, mlp(classes=5))(x)
    with pytest.raises(ValueError, match="labels were given but there is no kd term"):
        Distiller(teacher, mlp(seed=1), hidden="mse")(x, labels=torch.zeros(4, dtype=torch.long))
    on_meta = mlp(seed=1).to("meta")
    with pytest.raises(ValueError, match="the teacher is on cpu and the student on meta"):
        Distiller(teacher, on_meta)(x)


def test_to_moves_the_teacher_too():
    teacher, student = mlp(), mlp(seed=1)
    distiller = Distiller(teacher, student).to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64 and next(student.parameters()).dtype == torch.float64


# ---- transformers: attention probabilities, and the MiniLM bench on a tiny random BERT -------------------
@pytest.fixture(scope="module")
def transformers():
    module = pytest.importorskip("transformers")
    try:
        import_torchvision()  # transformers imports it when installed
    except ImportError:
        pass
    return module


def tiny_bert(transformers, seed=0, init=0.02):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=6,
                                     intermediate_size=40, max_position_embeddings=32, attn_implementation="eager",
                                     initializer_range=init)
    return transformers.BertModel(config).eval()


def test_bert_attention_probs_with_fewer_student_heads(transformers, gen):
    teacher = tiny_bert(transformers)
    student = tiny_bert(transformers, seed=1)
    ids = torch.randint(1, 50, (2, 7), generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    attention = {"encoder.layer.1.attention.self": "encoder.layer.1.attention.self"}
    distiller = Distiller(teacher, student, hidden="mse", attention=attention, attention_maps="probs",
                          average_heads=True, token_mask="attention_mask")
    loss = distiller(input_ids=ids, attention_mask=mask)
    assert set(distiller.last_losses) == {"hidden", "attention:encoder.layer.1.attention.self", "total"}
    assert distiller.last_losses["attention:encoder.layer.1.attention.self"] > 0
    loss.backward()
    assert student.encoder.layer[1].attention.self.query.weight.grad.abs().sum() > 0
    sdpa = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2,
                                                          num_attention_heads=6, intermediate_size=40,
                                                          attn_implementation="sdpa")).eval()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        Distiller(sdpa, student, hidden="mse", attention=attention, attention_maps="probs")(input_ids=ids)


def load_bench():
    spec = importlib.util.spec_from_file_location("distill_minilm", os.path.join(ROOT, "bench", "distill_minilm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WordTokenizer:
    """A stand-in for the Hugging Face tokenizer of the bench (called the same way): word ids by hash."""

    def __call__(self, sentences, padding, truncation, max_length, return_tensors):
        rows = [[2 + sum(map(ord, w)) % 45 for w in s.split()][:max_length] for s in sentences]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("mode, kept", [("mlp", 20), ("heads", 4)])
def test_minilm_bench_functions_on_a_tiny_bert(transformers, mode, kept):
    bench = load_bench()
    teacher, tokenizer = tiny_bert(transformers, init=0.3), WordTokenizer()  # large weights: pruning shows
    sentences = [" ".join(f"w{(i * 7 + j * 3) % 31}" for j in range(3 + i % 6)) for i in range(40)]
    batches = bench.md.calibration_batches(tokenizer, sentences[:16], batch_size=8)
    student = copy.deepcopy(teacher)
    report = bench.prune(student, mode, "mean_activation", batches)
    assert len([r for r in report.layers if r.action == "converted"]) == 2
    layer = student.encoder.layer[0]
    width = layer.intermediate.dense.out_features if mode == "mlp" else layer.attention.self.num_attention_heads
    assert width == kept
    held_out = bench.md.batch(tokenizer, sentences[30:])

    @torch.no_grad()
    def error(model):  # a random BERT's mean-pooled embeddings are all alike: compare the token states
        return float(F.mse_loss(model(**held_out).last_hidden_state, teacher(**held_out).last_hidden_state))

    before = error(student)
    result = bench.distill(student, teacher, tokenizer, sentences[:30], steps=15, minutes=1.0, batch_size=8, lr=3e-3,
                           layer_weight=1.0, seed=0, eval_every=1000, progress=False,
                           evaluate=lambda model: (error(model), 0.0))
    assert result["steps"] == 15 and result["history"][-1]["step"] == 15
    assert error(student) < 0.7 * before, (before, error(student))
