"""slimkernels.distill.losses: each loss against its formula written out, gradients, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkernels.distill import (
    attention_transfer_loss, feature_loss, hidden_loss, kd_loss, make_projection, mean_pool,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(11)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


# ---- kd_loss -------------------------------------------------------------------------------------
def kd_by_hand(s, t, labels, T, alpha):
    """Hinton's loss row by row, with plain softmax/log (float64)."""
    s, t = s.double().reshape(-1, s.shape[-1]), t.double().reshape(-1, t.shape[-1])
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    soft = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    if labels is None:
        return soft
    flat = labels.reshape(-1)
    rows = flat != -100
    hard = -torch.log_softmax(s, -1)[rows, flat[rows]].mean()
    return alpha * hard + (1 - alpha) * soft


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 11), (1, 2)])
@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.3), (2.5, 1.0), (3.0, 0.0)])
def test_kd_matches_the_formula(gen, shape, T, alpha):
    s, t = randn(gen, *shape) * 3, randn(gen, *shape) * 3
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    got = kd_loss(s, t, labels, temperature=T, alpha=alpha)
    torch.testing.assert_close(got.double(), kd_by_hand(s, t, labels, T, alpha), rtol=1e-5, atol=1e-6)


def test_kd_without_labels_is_the_soft_term_at_full_weight(gen):
    s, t = randn(gen, 6, 9), randn(gen, 6, 9)
    got = kd_loss(s, t, temperature=3.0, alpha=0.9)  # alpha ignored without labels
    torch.testing.assert_close(got.double(), kd_by_hand(s, t, None, 3.0, 0.0), rtol=1e-5, atol=1e-6)


def test_kd_ignore_index_and_zero_at_the_teacher(gen):
    s, t = randn(gen, 2, 5, 7), randn(gen, 2, 5, 7)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, 1] = labels[1, 4] = -100
    torch.testing.assert_close(kd_loss(s, t, labels).double(), kd_by_hand(s, t, labels, 4.0, 0.5), rtol=1e-5, atol=1e-6)
    assert kd_loss(t.clone(), t, temperature=2.0).abs() < 1e-6


def test_kd_gradient_reaches_the_student_only(gen):
    s = randn(gen, 4, 6).requires_grad_()
    t = randn(gen, 4, 6).requires_grad_()
    kd_loss(s, t, torch.randint(0, 6, (4,), generator=gen)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("call, error, match", [
    (lambda s, t: kd_loss(s, t[:, :4]), ValueError, r"student logits shape \(3, 5\) != teacher logits shape \(3, 4\)"),
    (lambda s, t: kd_loss(s, t.double()), ValueError, "dtype"),
    (lambda s, t: kd_loss(s, t, temperature=0), ValueError, "temperature"),
    (lambda s, t: kd_loss(s, t, temperature=True), ValueError, "temperature"),
    (lambda s, t: kd_loss(s, t, alpha=1.5), ValueError, "alpha"),
    (lambda s, t: kd_loss(s, t, torch.zeros(3, dtype=torch.float32)), TypeError, "integer"),
    (lambda s, t: kd_loss(s, t, torch.zeros(4, dtype=torch.long)), ValueError, r"labels shape \(4,\)"),
    (lambda s, t: kd_loss(s, t.long()), TypeError, "floating point"),
    (lambda s, t: kd_loss(s, [1.0]), TypeError, "torch.Tensor"),
])
def test_kd_bad_input(gen, call, error, match):
    with pytest.raises(error, match=match):
        call(randn(gen, 3, 5), randn(gen, 3, 5))


def test_kd_device_mismatch_names_both():
    s = torch.randn(2, 3)
    t = torch.randn(2, 3, device="meta")
    with pytest.raises(ValueError, match="student logits is on cpu, teacher logits on meta"):
        kd_loss(s, t)


# ---- hidden_loss / feature_loss / make_projection ------------------------------------------------
def test_hidden_mse_and_cosine(gen):
    s, t = randn(gen, 3, 5, 8), randn(gen, 3, 5, 8)
    torch.testing.assert_close(hidden_loss(s, t), ((s - t) ** 2).mean())
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    torch.testing.assert_close(hidden_loss(s, t, kind="cosine"), (1 - cos).mean())
    assert hidden_loss(2.5 * t, t, kind="cosine").abs() < 1e-6  # scale-free


def test_hidden_mask_drops_padding(gen):
    s, t = randn(gen, 2, 6, 4), randn(gen, 2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    keep = mask.bool()
    torch.testing.assert_close(hidden_loss(s, t, mask=mask), ((s[keep] - t[keep]) ** 2).mean())
    s2 = s.clone()
    s2[0, 3:] += 100.0  # what the padding holds does not count
    torch.testing.assert_close(hidden_loss(s2, t, mask=mask, kind="cosine"), hidden_loss(s, t, mask=mask, kind="cosine"))
    with pytest.raises(ValueError, match="mask must be a"):
        hidden_loss(s, t, mask=mask[:, :5])
    with pytest.raises(ValueError, match="keeps no tokens"):
        hidden_loss(s, t, mask=torch.zeros(2, 6))
    with pytest.raises(ValueError, match="kind must be one of"):
        hidden_loss(s, t, kind="l1")


def test_mean_pool(gen):
    states = randn(gen, 2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(states, mask)
    torch.testing.assert_close(pooled[0], states[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], states[1].mean(0))
    with pytest.raises(ValueError, match=r"\[batch, tokens, channels\]"):
        mean_pool(states[0])


def test_projection_kinds_and_shapes(gen):
    assert make_projection(randn(gen, 2, 7, 8), randn(gen, 2, 7, 8)) is None
    lin = make_projection(randn(gen, 2, 7, 5), randn(gen, 2, 7, 8))
    assert type(lin) is nn.Linear and (lin.in_features, lin.out_features) == (5, 8)
    conv = make_projection(randn(gen, 2, 3, 6, 5), randn(gen, 2, 8, 6, 5))
    assert type(conv) is nn.Conv2d and (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 8, (1, 1))
    with pytest.raises(ValueError, match=r"student feature shape \(2, 3, 6, 5\) and teacher feature shape \(2, 8, 6, 4\)"):
        make_projection(randn(gen, 2, 3, 6, 5), randn(gen, 2, 8, 6, 4))
    with pytest.raises(ValueError, match="same number of dims"):
        make_projection(randn(gen, 2, 5), randn(gen, 2, 1, 5))


def test_feature_loss_through_projection(gen):
    s, t = randn(gen, 2, 3, 5, 7), randn(gen, 2, 6, 5, 7)
    proj = make_projection(s, t)
    torch.testing.assert_close(feature_loss(s, t, proj), F.mse_loss(proj(s), t))
    # cosine over the channels of each position of a conv map
    got = feature_loss(s, t, proj, kind="cosine")
    want = (1 - F.cosine_similarity(proj(s), t, dim=1)).mean()
    torch.testing.assert_close(got, want)
    got.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"student states shape \(2, 3, 5, 7\) != teacher states shape \(2, 6, 5, 7\)"):
        feature_loss(s, t)  # widths differ and no projection


# ---- attention transfer --------------------------------------------------------------------------
def test_spatial_attention_matches_the_paper(gen):
    s, t = randn(gen, 3, 4, 5, 6), randn(gen, 3, 9, 5, 6)  # channel counts may differ
    for p in (2.0, 1.0, 3.0):
        def at(f):
            a = f.abs().pow(p).sum(1).flatten(1)
            return a / a.norm(dim=1, keepdim=True)
        want = (at(s) - at(t)).norm(dim=1).mean()
        torch.testing.assert_close(attention_transfer_loss(s, t, p=p), want)
    assert attention_transfer_loss(3 * t[:, :4] + 0, 3 * t[:, :4]) < 1e-6
    with pytest.raises(ValueError, match="spatial sizes"):
        attention_transfer_loss(s, t[:, :, :4])
    with pytest.raises(ValueError, match="p must be"):
        attention_transfer_loss(s, t, p=0)
    with pytest.raises(ValueError, match="maps must be one of"):
        attention_transfer_loss(s, t, maps="heads")


def test_attention_probs_kl(gen):
    s = torch.softmax(randn(gen, 2, 4, 5, 5), -1)
    t = torch.softmax(randn(gen, 2, 4, 5, 5), -1)
    want = (t * (t.log() - s.log())).sum(-1).mean()
    torch.testing.assert_close(attention_transfer_loss(s, t, maps="probs"), want)
    assert attention_transfer_loss(t, t, maps="probs").abs() < 1e-6
    fewer = s[:, :3]  # a student with a head pruned
    with pytest.raises(ValueError, match="average_heads=True"):
        attention_transfer_loss(fewer, t, maps="probs")
    sm, tm = fewer.mean(1), t.mean(1)
    torch.testing.assert_close(attention_transfer_loss(fewer, t, maps="probs", average_heads=True),
                               (tm * (tm.log() - sm.log())).sum(-1).mean())
    with pytest.raises(ValueError, match=r"\[batch, heads, queries, keys\]"):
        attention_transfer_loss(s[0], t[0], maps="probs")
    assert math.isfinite(float(attention_transfer_loss(torch.zeros_like(s).index_fill(-1, torch.tensor([0]), 1.0), t,
                                                       maps="probs")))
