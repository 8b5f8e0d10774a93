"""low_rank_ and the math under it: the truncated SVD error, ASVD and SVD-LLM against plain SVD on the
inputs they are made for, SVD-LLM's truncation-awareness, rank allocation from a budget, the report,
quantized factors, save/load of a converted model, bad input."""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import LowRankConfig, LowRankConv2d, LowRankLinear, QuantLinear, low_rank_
from slimkernels.compress import Int4WeightOnlyConfig, Int8WeightOnlyConfig, low_rank_layer
from slimkernels.quant import low_rank as lr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_models import TinyTransformer  # noqa: E402


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _output_error(w, w_hat, x):
    return float((x.double() @ (w.double() - w_hat.double()).T).square().sum())


def _correlated_inputs(n_rows, k, seed=0):
    """Rows concentrated in a few directions (a decaying spectrum), as real activations are."""
    g = _gen(seed)
    mix = torch.randn(k, k, generator=g) * torch.logspace(0, -2.5, k)[:, None]
    return torch.randn(n_rows, k, generator=g) @ mix


# ---- the math ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(31, 17), (17, 31), (40, 40)])
def test_truncated_svd_error_is_the_discarded_singular_values(shape):
    w = torch.randn(*shape, generator=_gen(1))
    s = torch.linalg.svdvals(w.double())
    for rank in (1, 7, min(shape)):
        f = lr.truncated_svd(w, rank)
        err = (w.double() - f.up.double() @ f.down.double()).square().sum()
        torch.testing.assert_close(err, s[rank:].square().sum(), rtol=1e-4, atol=1e-8)
        lost = lr.discarded_energy(f.singular_values)[rank]
        torch.testing.assert_close(lost, s[rank:].square().sum() / s.square().sum(), rtol=1e-4, atol=1e-8)


def test_svd_llm_is_truncation_aware_and_beats_svd_on_correlated_inputs():
    n, k, rank = 24, 32, 8
    w = torch.randn(n, k, generator=_gen(2))
    x = _correlated_inputs(500, k)
    gram = x.double().T @ x.double()
    f = lr.svd_llm(w, gram, rank, damp=0.0)
    # the discarded singular values of W S are the output error on the calibration data, exactly
    discarded = float(f.singular_values.double()[rank:].square().sum())
    assert _output_error(w, f.up @ f.down, x) == pytest.approx(discarded, rel=2e-3)
    svd = lr.truncated_svd(w, rank)
    assert _output_error(w, f.up @ f.down, x) < 0.5 * _output_error(w, svd.up @ svd.down, x)
    full = lr.svd_llm(w, gram, min(n, k), damp=0.0)
    torch.testing.assert_close(full.up @ full.down, w, rtol=1e-3, atol=1e-3)


def test_asvd_beats_svd_on_outlier_channels():
    n, k, rank = 32, 48, 12
    w = torch.randn(n, k, generator=_gen(3))
    x = torch.randn(400, k, generator=_gen(4))
    x[:, [3, 17, 40]] *= 30.0  # outlier input channels
    mean_abs = x.abs().mean(0)
    a = lr.asvd(w, mean_abs, rank)
    s = lr.truncated_svd(w, rank)
    assert _output_error(w, a.up @ a.down, x) < 0.7 * _output_error(w, s.up @ s.down, x)
    full = lr.asvd(w, mean_abs, min(n, k))
    torch.testing.assert_close(full.up @ full.down, w, rtol=1e-3, atol=1e-3)


def test_rank_helpers():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    total = 16 + 4 + 1 + 0.25
    assert lr.rank_for_energy(s, 16 / total) == 1
    assert lr.rank_for_energy(s, 0.94) == 2 and lr.rank_for_energy(s, 0.95) == 3
    assert lr.rank_for_energy(s, 1.0) == 4
    assert lr.rank_for_params(100, 50, 0.5) == 16  # 0.5 * 5000 / 150 = 16.7
    assert lr.saves_parameters(33, 100, 50) and not lr.saves_parameters(34, 100, 50)
    assert lr.break_even_rank(100, 50) == 33
    assert lr.ideal_speedup(512, 4096, 4096) == pytest.approx(4.0)


def test_allocate_ranks_respects_budget_and_follows_sensitivity():
    shapes = [(64, 64), (64, 64), (128, 64)]
    # layer 0: a flat spectrum (sensitive), layer 1: fast decay (insensitive), layer 2: medium
    spectra = [torch.ones(64), torch.logspace(0, -4, 64), torch.logspace(0, -1, 64)]
    curves = [lr.discarded_energy(s) for s in spectra]
    for params in (0.3, 0.6, 0.9):
        ranks = lr.allocate_ranks(curves, shapes, params)
        kept = sum(lr.kept_fraction(r, n, k) * n * k for r, (n, k) in zip(ranks, shapes))
        assert kept <= params * sum(n * k for n, k in shapes) + 1e-9
        assert len(set(ranks)) > 1  # layers that differ get different ranks
        uniform = [lr.rank_for_params(n, k, params) for n, k in shapes]

        def total_error(rs):
            return sum(0.0 if r is None else float(c[r]) for r, c in zip(rs, curves))

        assert total_error(ranks) < total_error(uniform)  # the point of measuring sensitivity
    with pytest.raises(ValueError, match="cannot be met.*closest reachable"):
        lr.allocate_ranks(curves, shapes, 0.001)


def test_math_bad_input():
    w = torch.randn(8, 6)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, min\(N, K\)\] = \[1, 6\]"):
        lr.truncated_svd(w, 7)
    with pytest.raises(ValueError, match="rank"):
        lr.truncated_svd(w, 0)
    with pytest.raises(ValueError, match="NaN"):
        lr.truncated_svd(torch.full((3, 3), float("nan")), 1)
    with pytest.raises(ValueError, match="gram must have shape"):
        lr.svd_llm(w, torch.eye(5), 2)
    with pytest.raises(ValueError, match="mean_abs must have shape"):
        lr.asvd(w, torch.ones(5), 2)
    with pytest.raises(ValueError, match="needs gram"):
        lr.factorize(w, 2, "svd-llm")
    with pytest.raises(ValueError, match="params must be in"):
        lr.allocate_ranks([], [], 1.5)


# ---- the config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of rank=, energy=, params="),
    ({"rank": 4, "energy": 0.9}, "exactly one"),
    ({"energy": 0.9, "params": 0.5}, "exactly one"),
    ({"rank": 0}, "rank must be an int >= 1"),
    ({"rank": 1.5}, "rank must be"),
    ({"rank": True}, "rank must be"),
    ({"energy": 0.0}, r"energy must be a number in \(0, 1\]"),
    ({"energy": 1.2}, "energy must be"),
    ({"params": -0.1}, r"params must be a number in \(0, 1\]"),
    ({"params": 0.5, "method": "pca"}, "method must be one of"),
    ({"params": 0.5, "allocation": "greedy"}, "allocation must be one of"),
    ({"params": 0.5, "factors": "w8a8"}, "not the string"),
    ({"params": 0.5, "factors": Int4WeightOnlyConfig(method="gptq")}, "round to nearest"),
    ({"params": 0.5, "alpha": 0}, "alpha"),
    ({"params": 0.5, "damp": 1.0}, "damp"),
])
def test_config_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LowRankConfig(**kwargs)


# ---- the pass ------------------------------------------------------------------------------------------
def _model(seed=0):
    torch.manual_seed(seed)
    return TinyTransformer().eval()


def _batches(n=6, seed=1):
    g = _gen(seed)
    return [torch.randint(0, 40, (4, 16), generator=g) for _ in range(n)]


def _linear_params(model):
    total = 0
    for m in model.modules():
        if type(m) is nn.Linear and not any(m is getattr(p, "down", None) or m is getattr(p, "up", None)
                                            for p in model.modules() if isinstance(p, LowRankLinear)):
            total += m.weight.numel()
        elif isinstance(m, LowRankLinear):
            total += m.rank * (m.in_features + m.out_features)
    return total


def _skip_head(module, name):
    return name != "head"


@pytest.mark.parametrize("method", ["svd", "asvd", "svd-llm"])
def test_pass_budget_is_respected_and_ranks_differ(method):
    model = _model()
    dense = _linear_params(model)
    head = model.head.weight.numel()
    report = low_rank_(model, LowRankConfig(params=0.5, method=method), calibration=_batches(), filter_fn=_skip_head,
                       progress=False)
    assert len(report.converted) + len(report.skipped) == 6
    assert _linear_params(model) - head <= 0.5 * (dense - head)
    ranks = {m.rank for m in model.modules() if isinstance(m, LowRankLinear)}
    assert len(ranks) > 1
    assert all("allocated" in r.detail and f"{method} relative error" in r.detail for r in report.converted)
    out = model(_batches(1, seed=9)[0])
    assert torch.isfinite(out).all()


def test_uniform_params_and_rank_and_energy():
    model = _model()
    low_rank_(model, LowRankConfig(params=0.5, allocation="uniform"), progress=False)
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            assert m.rank == lr.rank_for_params(m.out_features, m.in_features, 0.5)
    model = _model()
    low_rank_(model, LowRankConfig(rank=0.25), progress=False)
    assert {m.rank for m in model.modules() if isinstance(m, LowRankLinear)} == {16, 10}  # head: min(40, 64) = 40
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = low_rank_(model, LowRankConfig(energy=0.5), progress=False)
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            assert m.kept_fraction < 1
    assert all(r.action in ("converted", "skipped") for r in report.layers)


def test_svd_llm_beats_svd_through_the_pass():
    """On the calibration data the pass ran on, per layer output error of SVD-LLM < plain SVD at equal rank."""
    batches = _batches()
    errors = {}
    for method in ("svd", "svd-llm"):
        model = _model()
        float_model = copy.deepcopy(model)
        low_rank_(model, LowRankConfig(rank=12, method=method), calibration=batches, filter_fn=_skip_head, progress=False)
        with torch.no_grad():
            errors[method] = float((model(batches[0]) - float_model(batches[0])).square().sum())
    assert errors["svd-llm"] < errors["svd"]


def test_layer_that_would_not_save_stays_dense_and_report_says_so():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    low_rank_(model, LowRankConfig(rank=3), progress=False)
    # [4, 64] at rank 3: 3 * 68 = 204 < 256 saves; rank 4 would not
    assert isinstance(model[2], LowRankLinear)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with pytest.warns(UserWarning, match="stays dense"):
        report = low_rank_(model, LowRankConfig(rank=4), progress=False)
    assert type(model[2]) is nn.Linear and isinstance(model[0], LowRankLinear)
    (skipped,) = report.skipped
    assert skipped.name == "2" and "would not save parameters" in skipped.detail


def test_quantized_factors_through_the_pass_and_save_load(tmp_path):
    model = _model()
    ref = copy.deepcopy(model)
    report = low_rank_(model, LowRankConfig(params=0.6, method="svd-llm", factors=Int8WeightOnlyConfig()),
                       calibration=_batches(), filter_fn=_skip_head, progress=False)
    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert layers and all(isinstance(m.down, QuantLinear) and isinstance(m.up, QuantLinear) for m in layers)
    assert report.model_bytes_after < report.model_bytes_before
    ids = _batches(1, seed=5)[0]
    expected = model(ids)
    cos = torch.nn.functional.cosine_similarity(expected.flatten(), ref(ids).flatten(), dim=0)
    assert cos > 0.5
    slimkernels.save(model, tmp_path / "m.safetensors")
    fresh = _model(seed=7)
    slimkernels.load(tmp_path / "m.safetensors", fresh)
    torch.testing.assert_close(fresh(ids), expected, rtol=0, atol=0)


def test_quantize_after_low_rank_quantizes_the_factors():
    model = _model()
    low_rank_(model, LowRankConfig(rank=8), filter_fn=_skip_head, progress=False)
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(), filter_fn=_skip_head, progress=False)
    assert all(isinstance(m.down, QuantLinear) for m in model.modules() if isinstance(m, LowRankLinear))
    # a second low_rank_ leaves the factors of the first alone
    model = _model()
    low_rank_(model, LowRankConfig(rank=8), filter_fn=_skip_head, progress=False)
    report = low_rank_(model, LowRankConfig(rank=4), progress=False)
    assert [r.name for r in report.layers] == ["head"]


def test_conv_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=2), nn.Flatten(),
                          nn.LazyLinear(10))
    x = torch.randn(2, 8, 6, 6)
    model(x)
    with pytest.warns(UserWarning, match="grouped conv"):
        report = low_rank_(model, LowRankConfig(rank=4, method="svd-llm"), calibration=[x], progress=False)
    assert isinstance(model[0], LowRankConv2d) and type(model[2]) is nn.Conv2d and isinstance(model[4], LowRankLinear)
    assert torch.isfinite(model(x)).all()
    assert any("grouped conv" in r.detail for r in report.skipped)
    model2 = nn.Sequential(nn.Conv2d(8, 16, 3))
    with pytest.warns(UserWarning, match="nothing to convert"):
        low_rank_(model2, LowRankConfig(rank=4, conv=False), progress=False)
    assert type(model2[0]) is nn.Conv2d


def test_low_rank_layer():
    lin = nn.Linear(40, 30)
    x = torch.randn(50, 40) * torch.linspace(0.1, 5, 40)
    h = 2 / 50 * x.T @ x
    new = low_rank_layer(lin, LowRankConfig(rank=10, method="svd-llm"), hessian=h)
    assert isinstance(new, LowRankLinear) and new.rank == 10


def test_pass_bad_input():
    model = _model()
    with pytest.raises(ValueError, match=r"rank=65 > min\(N, K\) = 64.*layer"):
        low_rank_(model, LowRankConfig(rank=65), progress=False)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())  # nothing converted
    with pytest.raises(ValueError, match="needs calibration data"):
        low_rank_(model, LowRankConfig(params=0.5, method="asvd"))
    with pytest.raises(TypeError, match="LowRankConfig"):
        low_rank_(model, slimkernels.SparsityConfig())
    with pytest.raises(TypeError, match="not a config object"):
        low_rank_(model, LowRankConfig)
    with pytest.raises(ValueError, match="cannot be met.*closest reachable"):
        low_rank_(model, LowRankConfig(params=0.01), progress=False)
