"""Bad input gets a clear Python exception naming the argument, never a crash or garbage."""
from __future__ import annotations

import pytest
import torch

from slimkernels import ops
from slimkernels.testing import impl_params, rand_int8


def test_int8_mm_rejects_bad_arguments():
    a, b = rand_int8(4, 8), rand_int8(3, 8)
    with pytest.raises(TypeError, match="a must be torch.int8"):
        ops.int8_mm(a.float(), b)
    with pytest.raises(TypeError, match="b must be torch.int8"):
        ops.int8_mm(a, b.to(torch.uint8))
    with pytest.raises(ValueError, match="K must match"):
        ops.int8_mm(a, rand_int8(3, 9))
    with pytest.raises(ValueError, match="a must be 2-D"):
        ops.int8_mm(a[None], b)
    with pytest.raises(ValueError, match="meta"):
        ops.int8_mm(a, b.to("meta"))


def test_scaled_mm_rejects_bad_scales_and_dtypes():
    a, b = rand_int8(4, 8), rand_int8(3, 8)
    sa, sb = torch.rand(4), torch.rand(3)
    with pytest.raises(TypeError, match="a_scale must be torch.float32"):
        ops.int8_scaled_mm(a, sa.half(), b, sb)
    with pytest.raises(ValueError, match="b_scale must have shape"):
        ops.int8_scaled_mm(a, sa, b, torch.rand(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.int8_scaled_mm(a, sa, b, sb, torch.rand(5))
    with pytest.raises(TypeError, match="out_dtype"):
        ops.int8_scaled_mm(a, sa, b, sb, None, torch.int32)


def test_packed_mismatch_is_named():
    a = rand_int8(4, 8)
    packed = ops.int8_prepack(rand_int8(3, 12))  # packed for K=12, used with K=8
    with pytest.raises(ValueError, match="b_packed has shape"):
        ops.int8_scaled_mm_packed(a, torch.rand(4), packed, torch.rand(3))


def test_quantize_rejects_non_float_and_scalars():
    with pytest.raises(TypeError, match="x must be"):
        ops.quantize_per_token_int8(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be"):
        ops.quantize_per_token_int8(torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.quantize_per_token_int8(torch.tensor(1.0))
    with pytest.raises(ValueError, match="w must be 2-D"):
        ops.quantize_per_channel_int8(torch.ones(2, 3, 4))


def test_dequant_mm_rejects_mismatch():
    with pytest.raises(ValueError, match="K=5 features"):
        ops.dequant_mm_int8(torch.randn(2, 5), rand_int8(3, 8), torch.rand(3))
    with pytest.raises(TypeError, match="scales must be torch.float32"):
        ops.dequant_mm_int8(torch.randn(2, 8), rand_int8(3, 8), torch.rand(3).double())


@pytest.mark.parametrize("device,impl", impl_params("int8_scaled_mm_packed"))
def test_misaligned_views_give_correct_results(device, impl):
    """Tensors that start one element into a buffer (no 16/64-byte alignment) still compute right."""
    import slimkernels
    from slimkernels.backends import reference

    m, n, k = 5, 21, 67
    a = rand_int8(1 + m * k, device=device)[1:].view(m, k)
    b = rand_int8(1 + n * k, device=device)[1:].view(n, k)
    sa = torch.rand(1 + m, device=device)[1:]
    sb = torch.rand(1 + n, device=device)[1:]
    x = torch.randn(1 + m * k, device=device)[1:].view(m, k)
    with slimkernels.use_backend(impl):
        got = ops.int8_scaled_mm_packed(a, sa, ops.int8_prepack(b), sb, None, torch.float32)
        q, s = ops.quantize_per_token_int8(x)
    torch.testing.assert_close(got, reference.int8_scaled_mm(a, sa, b, sb, None, torch.float32), rtol=1.2e-7, atol=1e-6)
    q_ref, s_ref = reference.quantize_rows_int8(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_zero_features_is_a_result_not_a_crash():
    """K == 0: every product is an empty sum, so outputs are the bias (or 0)."""
    x, w, s, bias = torch.randn(3, 0), rand_int8(4, 0), torch.rand(4), torch.randn(4)
    torch.testing.assert_close(ops.dequant_mm_int8(x, w, s, bias), bias.expand(3, 4))
    torch.testing.assert_close(ops.int8_dynamic_linear(x, ops.int8_prepack(w), s, bias), bias.expand(3, 4))
    q, scale = ops.quantize_per_token_int8(torch.randn(2, 3, 0))
    assert q.shape == (6, 0) and torch.equal(scale, torch.ones(6))
