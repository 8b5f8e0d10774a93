"""GPTQ for codebook weights (slimkernels.quant.gptq.gptq_quantize_codebook): with the codebook held
fixed it must beat nearest-entry assignment on the layer-output error, return codes of that codebook,
and handle the Hessians the int4 variant handles."""
from __future__ import annotations

import pytest
import torch

from slimkernels.quant import codebook as cbk
from slimkernels.quant import gptq, hessian, lowbit
from slimkernels.testing import DEVICES


def _layer(n=40, k=96, rows=384, seed=0):
    """A random layer and correlated calibration inputs (H far from diagonal, uneven diag)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k) * 0.3
    x = (torch.randn(rows, k, generator=gen) * torch.linspace(0.2, 3, k)) @ mix
    acc = hessian.HessianAccumulator(k)
    acc.add(x)
    return w, acc.hessian()


def _error(w, h, codes, codebook):
    return hessian.layer_output_error(w, lowbit.dequantize_codebook(lowbit.pack_codes(codes, lowbit.bits_from_codebook(
        codebook.shape[1])), codebook, w.shape[1]), h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, bits", [("kmeans", 4), ("kmeans", 2), ("nf4", 4), ("pow2", 3)])
@pytest.mark.parametrize("per", ["row", "layer"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_nearest_entry(device, kind, bits, per, act_order):
    w, h = _layer()
    w, h = w.to(device), h.to(device)
    nearest, codebook = cbk.fit_codebook(w, bits, kind, per)
    codes = gptq.gptq_quantize_codebook(w, h, codebook, block_size=32, act_order=act_order)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape and int(codes.max()) < codebook.shape[1]
    assert _error(w, h, codes, codebook) < 0.8 * _error(w, h, nearest, codebook)


def test_identity_hessian_is_nearest_entry():
    # H = I: no column's error can be compensated by another, so GPTQ is plain nearest assignment.
    w, _ = _layer(n=16, k=64)
    nearest, codebook = cbk.fit_codebook(w, 3, "kmeans", "row")
    assert torch.equal(gptq.gptq_quantize_codebook(w, torch.eye(64), codebook), nearest)
    assert torch.equal(cbk.NearestEntry(codebook)(w)[0], cbk.assign_codes(w, codebook))


def test_dead_inputs_and_singular_hessians():
    w, h = _layer()
    dead = [0, 7, 95]
    h[dead, :] = 0
    h[:, dead] = 0
    _, codebook = cbk.fit_codebook(w, 4, "kmeans", "layer")
    nearest = cbk.assign_codes(w, codebook)
    codes = gptq.gptq_quantize_codebook(w, h, codebook, act_order=True)
    # a dead input is decoupled: its weights get their nearest entries and nothing is pushed onto them
    assert torch.equal(codes[:, dead], nearest[:, dead])
    assert _error(w, h, codes, codebook) < _error(w, h, nearest, codebook)
    zeroed = gptq.gptq_quantize_codebook(w, h, codebook, zero_dead=True)
    assert torch.equal(zeroed[:, dead], cbk.assign_codes(torch.zeros(w.shape[0], 3), codebook))
    low_rank = torch.randn(8, 96)
    codes = gptq.gptq_quantize_codebook(w, low_rank.T @ low_rank, codebook, damp=0.0)  # retried with damping
    assert codes.shape == w.shape


def test_small_shapes():
    gen = torch.Generator().manual_seed(3)
    for n, k in [(1, 1), (3, 7), (5, 33)]:
        w = torch.randn(n, k, generator=gen)
        x = torch.randn(32, k, generator=gen)
        _, codebook = cbk.fit_codebook(w, 2, "kmeans", "row")
        codes = gptq.gptq_quantize_codebook(w, 2 / 32 * x.T @ x, codebook, block_size=4, act_order=True)
        assert codes.shape == (n, k) and int(codes.max()) < 4
    assert gptq.gptq_quantize_codebook(torch.randn(0, 8), torch.eye(8), torch.zeros(1, 4)).shape == (0, 8)


def test_bad_input():
    w = torch.randn(4, 16)
    cb = torch.randn(1, 16)
    with pytest.raises(ValueError, match=r"\[16, 16\]"):
        gptq.gptq_quantize_codebook(w, torch.eye(8), cb)
    with pytest.raises(ValueError, match="codebook must be"):
        gptq.gptq_quantize_codebook(w, torch.eye(16), torch.randn(3, 16))
    with pytest.raises(ValueError, match="codebook must be"):
        gptq.gptq_quantize_codebook(w, torch.eye(16), torch.arange(16).reshape(1, 16))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq.gptq_quantize_codebook(w, torch.eye(16), cb.masked_fill(cb > 0, float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq.gptq_quantize_codebook(w, torch.full((16, 16), float("inf")), cb)
    with pytest.raises(ValueError, match="gptq_quantize_codebook: block_size"):
        gptq.gptq_quantize_codebook(w, torch.eye(16), cb, block_size=0)
