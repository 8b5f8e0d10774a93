"""The Deep Compression pipeline (slimkernels/deep_compression.py) and its trainable shared-weight layer."""
import pytest
import torch
from torch import nn

from slimkernels.deep_compression import (STAGES, SharedWeightLinear, build_lenet, format_deep_compression,
                                          run_deep_compression)

pytest.importorskip("sklearn")


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(23, 11)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(11, 23, generator=g))
        linear.weight[torch.rand(11, 23, generator=g) < 0.6] = 0
    shared = SharedWeightLinear.from_linear(linear, bits=3)
    zero = shared.zero_entry
    pruned = linear.weight == 0
    assert float(shared.codebook.detach()[zero]) == 0 and bool((shared.weight()[pruned] == 0).all())
    x = torch.randn(7, 23, generator=g)
    shared(x).square().sum().backward()
    # the same loss through a plain weight tensor: its gradient summed over each code
    weight = shared.weight().detach().requires_grad_()
    nn.functional.linear(x, weight, shared.bias.detach()).square().sum().backward()
    expected = torch.zeros(8).index_add_(0, shared.codes.reshape(-1), weight.grad.reshape(-1))
    expected[zero] = 0  # the pruned weights' entry is frozen
    torch.testing.assert_close(shared.codebook.grad, expected)
    opt = torch.optim.Adam(shared.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        shared(x).square().sum().backward()
        opt.step()
    assert float(shared.codebook.detach()[zero]) == 0
    quant = shared.to_quant_linear()
    torch.testing.assert_close(quant(x), shared(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(quant.dequantized_weight(), shared.weight().detach())


def test_pipeline_small_setting():
    from slimkernels.demo import load_digits_split

    rows = run_deep_compression(*load_digits_split(0), epochs=4, prune_epochs=4, share_epochs=1, prune_rounds=2,
                                sparsity=0.9, bits=4, seed=0, progress=False)
    assert [r["stage"] for r in rows] == list(STAGES)
    float_row, pruned, shared, coded = rows
    assert float_row["accuracy"] > 0.85
    assert pruned["zeros"] >= 0.899
    assert coded["accuracy"] == shared["accuracy"]  # Huffman coding is lossless
    assert float_row["file_bytes"] > pruned["file_bytes"] > coded["file_bytes"]
    assert coded["smaller"] >= 20  # 90% pruned, 4-bit codes, Huffman: about 25x with this file's header
    assert shared["accuracy"] > 0.7  # a few epochs only: the full setting's accuracy is in bench/results
    table = format_deep_compression(rows)
    assert all(stage in table for stage in STAGES)


def test_per_layer_sparsity_and_bits():
    from slimkernels.demo import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split(1)
    rows = run_deep_compression(x_train[:500], y_train[:500], x_test, y_test, epochs=3, prune_epochs=3,
                                share_epochs=1, prune_rounds=3, sparsity=[0.7, 0.93, 0.35], bits=(4, 3, 2), seed=3,
                                progress=False)
    pruned, shared, coded = rows[1:]
    for zeros, target, numel in zip(pruned["layer_zeros"], (0.7, 0.93, 0.35), (64 * 300, 300 * 100, 100 * 10)):
        assert abs(zeros - target) <= 1.5 / numel  # each layer at its own fraction (per layer, rounded)
    assert rows[0]["layer_zeros"] == (0.0, 0.0, 0.0)
    assert coded["layer_zeros"] == pruned["layer_zeros"]
    assert "70%/93%/35% (per layer)" in pruned["detail"] and "4/3/2-bit" in shared["detail"]
    assert coded["accuracy"] == shared["accuracy"] > 0.3


def test_bad_arguments():
    x, y = torch.randn(20, 64), torch.randint(0, 10, (20,))
    for kwargs in ({"sparsity": 1.0}, {"bits": 5}, {"epochs": 0}, {"prune_rounds": 0}, {"prune_lr": 0},
                   {"weight_decay": -1e-3}, {"weight_decay": "0.001"}, {"prune_lr": True}):
        with pytest.raises(ValueError):
            run_deep_compression(x, y, x, y, progress=False, **{"epochs": 1, **kwargs})
    for name, value in (("sparsity", (0.9, 0.9)), ("sparsity", (0.9, 1.0, 0.5)), ("sparsity", (0.9, "0.9", 0.5)),
                        ("sparsity", True), ("bits", (4, 4)), ("bits", (4, 5, 4)), ("bits", (4, True, 4))):
        with pytest.raises(ValueError, match=f"{name} must be .*one per linear layer"):
            run_deep_compression(x, y, x, y, progress=False, epochs=1, **{name: value})
    assert [m.out_features for m in build_lenet() if isinstance(m, nn.Linear)] == [300, 100, 10]
