"""Training around frozen QuantLinear layers: every mode passes gradients to its input (and to its bias,
once the bias buffer is set to require grad), equal to those of an nn.Linear holding
dequantized_weight() (for w8a8 the per-token rounding of the input is straight-through); adapters on
top of a frozen quantized layer train; a gradient asked for the quantized weight is a clear error.

What "clear" can mean for the quantized weight, concretely:
  integer buffers (qweight, weight_zero, the packed weight)  torch itself refuses requires_grad_() on
      them at once: "only Tensors of floating point and complex dtype can require gradients" (no
      slimkernels code runs there; intercepting it would take a tensor subclass).
  float buffers of the weight (weight_scale, codebook)  requires_grad_() works (they are float), and
      the backward raises "slimkernels.<op>: no gradient for <argument>: the quantized weight is
      frozen ... use prepare_qat_ ... or train float layers (an adapter, LoRA) beside ..." instead of
      silently leaving .grad None.
  the module  QuantLinear has no Parameters (optimizers skip it; torch.optim over a model of only
      quantized layers says "optimizer got an empty parameter list"), and `.weight` is a stand-in
      (NaN values) that never requires grad.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkernels import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantLinear

MODES = {
    "w8a8": Int8DynamicConfig(),
    "w8a16": Int8WeightOnlyConfig(),
    "w4a16": Int4WeightOnlyConfig(group_size=64),
    "codebook": CodebookConfig(bits=4),
}
# the float tensors of each format's quantized weight, and the op argument they are
WEIGHT_FLOATS = {"w8a8": ("weight_scale", "w_scale"), "w8a16": ("weight_scale", "scales"),
                 "w4a16": ("weight_scale", "scales"), "codebook": ("codebook", "codebook")}
OPS = {"w8a8": "int8_dynamic_linear", "w8a16": "dequant_mm_int8", "w4a16": "dequant_mm_int4", "codebook": "lut_mm"}


def _layer(mode, k=128, n=48, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(k, n), MODES[mode])


def _float_twin(q: QuantLinear) -> nn.Linear:
    lin = nn.Linear(q.in_features, q.out_features)
    with torch.no_grad():
        lin.weight.copy_(q.dequantized_weight())
        lin.bias.copy_(q.bias)
    return lin


@pytest.mark.parametrize("mode", list(MODES))
def test_input_and_bias_gradients_match_the_dequantized_linear(mode):
    q = _layer(mode)
    q.bias.requires_grad_()
    ref = _float_twin(q)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 128, generator=gen)
    grad = torch.randn(2, 3, 48, generator=gen)
    xq, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    q(xq).backward(grad)
    ref(xr).backward(grad)
    torch.testing.assert_close(xq.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    assert list(q.parameters()) == [] and not q.weight.requires_grad


@pytest.mark.parametrize("mode", list(MODES))
def test_half_precision_inputs_get_gradients_in_their_dtype(mode):
    q = _layer(mode)
    x = torch.randn(4, 128, dtype=torch.bfloat16, requires_grad=True)
    q(x).float().pow(2).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_adapters_around_a_frozen_quantized_layer_train(mode):
    """Float layers around a frozen quantized one learn what a teacher adds: a LoRA-style adapter in
    front of it (its gradient flows back through the quantized layer) and a head on top of it. Only
    the float layers train."""
    torch.manual_seed(2)
    q = _layer(mode, k=64, n=32, seed=3)
    down, up = nn.Linear(64, 4, bias=False), nn.Linear(4, 64, bias=False)
    nn.init.zeros_(up.weight)
    head, teacher_head = nn.Linear(32, 8), nn.Linear(32, 8)
    target_update = torch.randn(64, 4) @ torch.randn(4, 64) * 0.2  # rank 4: what the adapter must learn

    def teacher(x):
        with torch.no_grad():
            return teacher_head(torch.relu(q(x + x @ target_update.T)))

    def student(x):
        return head(torch.relu(q(x + up(down(x)))))

    params = [*down.parameters(), *up.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    xs = torch.randn(256, 64)
    losses = []
    for _ in range(300):
        x = xs[torch.randint(0, 256, (32,))]
        loss = (student(x) - teacher(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # measured: 0.43 -> 0.024 in every mode; the head alone (no gradient through q) plateaus at 0.21
    assert end < 0.1 * start and end < 0.05, (mode, start, end)
    assert down.weight.grad.abs().sum() > 0 and list(q.parameters()) == []


@pytest.mark.parametrize("mode", list(MODES))
def test_no_gradient_for_the_quantized_weight(mode):
    q = _layer(mode)
    x = torch.randn(3, 128, requires_grad=True)
    # integer buffers: torch refuses at once
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):
        q.qweight.requires_grad_()
    # the float parts of the quantized weight: the backward says why and what to do instead
    buffer, arg = WEIGHT_FLOATS[mode]
    getattr(q, buffer).requires_grad_()
    y = q(x)
    with pytest.raises(RuntimeError, match=rf"slimkernels.{OPS[mode]}: no gradient for {arg}: the quantized weight is "
                                           r"frozen.*prepare_qat_.*adapter"):
        y.sum().backward()
    getattr(q, buffer).requires_grad_(False)
    q(x).sum().backward()  # and without it, x gets its gradient as usual
    assert x.grad is not None


def test_an_optimizer_over_only_quantized_layers_finds_nothing():
    model = nn.Sequential(_layer("w8a8", k=128, n=64), nn.ReLU(), _layer("w4a16", k=64, n=16))
    assert list(model.parameters()) == []
    with pytest.raises(ValueError, match="empty parameter list"):  # torch's own message
        torch.optim.SGD(model.parameters(), lr=0.1)
