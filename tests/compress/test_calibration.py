"""The block-by-block calibration runner (slimkernels.compress.calibration.run_calibration) and its
collectors: each statistic must equal the one computed directly from the layer's real inputs/outputs."""
from __future__ import annotations

import functools
import os
import sys

import pytest
import torch
from torch import nn

from slimkernels.compress.calibration import (
    ActivationStats, ActivationStatsCollector, BlockStatistics, HessianCollector, InputNormCollector, OutputCollector,
    run_calibration,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # toy_models.py (--import-mode=importlib)
from toy_models import TinyTransformer  # noqa: E402


COLLECTORS = {
    "hessian": HessianCollector,
    "norm": InputNormCollector,
    "act": functools.partial(ActivationStatsCollector, activation=torch.relu),
    "out": OutputCollector,
}


def Tiny():
    return TinyTransformer(d=16, depth=3, vocab=30)


class HFBlock(nn.Module):
    """A Hugging Face-style block: called with keywords, returns a tuple."""

    def __init__(self, d):
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        scores = self.q_proj(hidden_states) @ hidden_states.transpose(1, 2) / hidden_states.shape[-1] ** 0.5
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e4)
        mixed = scores.softmax(-1) @ hidden_states
        return (hidden_states + self.o_proj(mixed),)


class HFModel(nn.Module):
    def __init__(self, d=16, depth=2, vocab=30):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(HFBlock(d) for _ in range(depth))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(hidden_states=h, attention_mask=attention_mask)[0]
        return self.lm_head(h)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return Tiny().eval()


def _batches(n=3, seed=1, vocab=30):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, 7), generator=g) for _ in range(n)]


def _linears(model):
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear}


def _record(model, batches, call=lambda m, b: m(b)):
    """Every Linear's real inputs and outputs, as rows, from one plain run of the model."""
    seen = {name: ([], []) for name in _linears(model)}

    def hook(xs, ys):
        def fn(_module, args, out):
            xs.append(args[0].reshape(-1, args[0].shape[-1]))
            ys.append(out.reshape(-1, out.shape[-1]))
        return fn

    handles = [m.register_forward_hook(hook(*seen[name])) for name, m in _linears(model).items()]
    with torch.no_grad():
        for b in batches:
            call(model, b)
    for h in handles:
        h.remove()
    return {name: (torch.cat(x), torch.cat(y)) for name, (x, y) in seen.items()}


def _run(model, batches, collectors=COLLECTORS, process=None, **kwargs):
    got = {}

    def keep(block: BlockStatistics):
        got[block.index] = (block.prefix, block.device, block.stats, block.collectors)
        return process(block) if process else None

    done = run_calibration(model, _linears(model), batches, collectors, keep, progress=False, **kwargs)
    return done, got


def test_every_collector_matches_the_layers_real_inputs_and_outputs():
    model, batches = _tiny(), _batches()
    real = _record(model, batches)
    done, got = _run(model, batches)
    assert sorted(got) == [0, 1, 2] and [got[i][0] for i in range(3)] == ["layers.0.", "layers.1.", "layers.2."]
    assert done == {f"layers.{i}.{p}" for i in range(3) for p in ("up", "down")}  # the head is outside the blocks
    for i in range(3):
        for name, stats in got[i][2].items():
            x, y = real[name]
            n = x.shape[0]
            assert n == 42
            torch.testing.assert_close(stats["hessian"], 2 / n * x.T @ x, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(stats["norm"], x.norm(dim=0), rtol=1e-5, atol=1e-6)
            cols = got[i][3][name]
            torch.testing.assert_close(cols["norm"].mean_square(), x.pow(2).mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cols["norm"].mean_abs(), x.abs().mean(0), rtol=1e-5, atol=1e-6)
            act = stats["act"]
            assert isinstance(act, ActivationStats) and act.rows == n
            assert torch.equal(act.apoz, (torch.relu(y) == 0).float().mean(0))
            assert 0 < float(act.apoz.mean()) < 1
            torch.testing.assert_close(act.mean, torch.relu(y).mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stats["out"], y, rtol=0, atol=0)


def test_converted_layers_feed_the_next_block():
    model, batches = _tiny(), _batches()
    real = _record(model, batches)

    def silence_block0(block):  # block 0 becomes the identity (its residual branch outputs 0)
        if block.index == 0:
            zero = nn.Linear(32, 16)
            nn.init.zeros_(zero.weight), nn.init.zeros_(zero.bias)
            return {"layers.0.down": zero}
        return None

    _, got = _run(model, batches, {"hessian": HessianCollector}, silence_block0)
    assert not model.layers[0].down.weight.any()
    # block 1 saw block 0's inputs: the embeddings
    torch.testing.assert_close(got[1][2]["layers.1.up"]["hessian"], got[0][2]["layers.0.up"]["hessian"])
    x = real["layers.0.up"][0]
    torch.testing.assert_close(got[1][2]["layers.1.up"]["hessian"], 2 / x.shape[0] * x.T @ x, rtol=1e-5, atol=1e-5)


def test_keyword_called_blocks_returning_tuples():
    torch.manual_seed(0)
    model = HFModel().eval()
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(3):
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1, 6:] = 0  # padding
        batches.append({"input_ids": torch.randint(0, 30, (2, 9), generator=g), "attention_mask": mask})
    real = _record(model, batches, call=lambda m, b: m(**b))
    done, got = _run(model, batches, {"hessian": HessianCollector, "out": OutputCollector})
    assert done == {"layers.0.q_proj", "layers.0.o_proj", "layers.1.q_proj", "layers.1.o_proj"}
    for i in range(2):
        for name, stats in got[i][2].items():
            x, y = real[name]
            torch.testing.assert_close(stats["hessian"], 2 / x.shape[0] * x.T @ x, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(stats["out"], y, rtol=1e-6, atol=1e-6)


def test_mapping_batches_that_are_not_dicts_are_keywords():
    """A tokenizer's output (transformers' BatchEncoding) is a UserDict, not a dict."""
    from collections import UserDict

    torch.manual_seed(0)
    model = HFModel().eval()
    g = torch.Generator().manual_seed(3)
    batches = [UserDict(input_ids=torch.randint(0, 30, (2, 5), generator=g), attention_mask=torch.ones(2, 5))
               for _ in range(2)]
    real = _record(model, batches, call=lambda m, b: m(**b))
    done, got = _run(model, batches, {"out": OutputCollector})
    assert len(done) == 4
    torch.testing.assert_close(got[0][2]["layers.0.q_proj"]["out"], real["layers.0.q_proj"][1], rtol=1e-6, atol=1e-6)


def test_device_option_runs_each_block_there_and_moves_it_back():
    model, batches = _tiny(), _batches()
    _, plain = _run(model, batches, {"hessian": HessianCollector, "norm": InputNormCollector})
    _, moved = _run(model, batches, {"hessian": HessianCollector, "norm": InputNormCollector}, device="cpu")
    for i in range(3):
        assert moved[i][1] == torch.device("cpu")
        for name in moved[i][2]:
            assert all(c.device == torch.device("cpu") for c in moved[i][3][name].values())
            for stat in ("hessian", "norm"):
                assert torch.equal(moved[i][2][name][stat], plain[i][2][name][stat])
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_model_without_blocks_is_one_block():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5))
    batches = [torch.randn(6, 12) for _ in range(2)]
    real = _record(mlp, batches)
    done, got = _run(mlp, batches, {"hessian": HessianCollector, "act": COLLECTORS["act"]})
    assert done == {"0", "2"} and list(got) == [0] and got[0][0] == ""
    x = real["2"][0]
    torch.testing.assert_close(got[0][2]["2"]["hessian"], 2 / 12 * x.T @ x, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0][2]["0"]["act"].apoz, (torch.relu(real["0"][1]) == 0).float().mean(0))


def test_activation_threshold_and_output_row_cap():
    lin = nn.Linear(4, 3)
    act = ActivationStatsCollector(lin, threshold=0.5)
    act.add(None, torch.tensor([[0.1, -0.7, 0.0], [0.6, 0.2, -0.4]]))
    assert act.result().apoz.tolist() == [0.5, 0.5, 1.0]
    out = OutputCollector(lin, max_rows=3)
    for _ in range(3):
        out.add(None, torch.ones(2, 3))
    assert out.result().shape == (3, 3) and out.count == 3


def test_runner_errors():
    model = _tiny()
    with pytest.raises(ValueError, match="gave no batches"):
        run_calibration(model, _linears(model), [], COLLECTORS, lambda b: None, progress=False)
    model.layers[1].spare = nn.Linear(16, 16)  # never called in forward
    with pytest.raises(ValueError, match="my_pass: layer layers.1.spare saw no calibration rows"):
        run_calibration(model, _linears(model), _batches(), {"hessian": HessianCollector}, lambda b: None,
                        progress=False, fn="my_pass")
    model = _tiny()
    with pytest.raises(ValueError, match="process returned 'head', not a target layer"):
        run_calibration(model, {"layers.0.up": model.layers[0].up}, _batches(), {}, lambda b: {"head": nn.Identity()},
                        progress=False)
    for collector in (InputNormCollector(nn.Linear(2, 2)), ActivationStatsCollector(nn.Linear(2, 2)),
                      OutputCollector(nn.Linear(2, 2))):
        with pytest.raises(ValueError, match="no calibration rows"):
            collector.result()
    with pytest.raises(TypeError, match="floating-point input"):
        InputNormCollector(nn.Linear(2, 2)).add(torch.ones(3, 2, dtype=torch.long), None)
