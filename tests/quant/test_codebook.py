"""Codebook quantization (slimkernels.quant.codebook): k-means, NF4 and power-of-two codebooks,
nearest-entry assignment, and the canonical codebook layout of slimkernels.quant.lowbit."""
from __future__ import annotations

import functools

import pytest
import torch

from slimkernels.quant import codebook as cbk
from slimkernels.quant import lowbit
from slimkernels.testing import DEVICES

# QLoRA's NF4 levels as printed in bitsandbytes (functional.py) and the QLoRA paper, appendix E.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def _sse(w, codes, codebook):
    return float(((_decode(codes, codebook) - w.float()) ** 2).sum())


def _decode(codes, codebook):
    return torch.gather(codebook.expand(codes.shape[0], -1), 1, codes.long())


def _brute_nearest(w, codebook):
    """Nearest entry by full distance table; the smallest value among equally near entries."""
    cb = codebook.expand(w.shape[0], -1)
    dist = (w.float()[:, :, None] - cb[:, None, :]).abs()
    best = dist.min(-1, keepdim=True).values
    value = torch.where(dist == best, cb[:, None, :], torch.inf).min(-1).values
    return value


def _check_result(w, codes, codebook, bits, per):
    n, k = w.shape
    assert codes.dtype == torch.uint8 and codes.shape == (n, k)
    assert codebook.dtype == torch.float32 and codebook.shape == ((n if per == "row" else 1), 1 << bits)
    assert bool(torch.isfinite(codebook).all())
    if codes.numel():
        assert int(codes.max()) < 1 << bits
    # the canonical layout decodes to the same weights
    torch.testing.assert_close(lowbit.dequantize_codebook(lowbit.pack_codes(codes, bits), codebook, k),
                               _decode(codes, codebook), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per", ["row", "layer"])
def test_assign_codes_is_nearest_entry(device, per):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(9, 77, generator=gen)
    cb = torch.randn(9 if per == "row" else 1, 16, generator=gen)
    cb[:, 3] = cb[:, 7]  # duplicate entries
    w[0, :16] = cb[0 if per == "layer" else 0]  # weights exactly on entries
    codes = cbk.assign_codes(w.to(device), cb.to(device)).cpu()
    torch.testing.assert_close(_decode(codes, cb), _brute_nearest(w, cb), rtol=0, atol=0)


def test_assign_codes_ties_go_to_the_smaller_entry():
    cb = torch.tensor([[2.0, -1.0, 1.0, 0.0]])
    w = torch.tensor([[0.5, -0.5, 1.5, 5.0, -5.0]])
    assert cbk.assign_codes(w, cb).tolist() == [[3, 1, 2, 0, 1]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per", ["row", "layer"])
def test_kmeans_beats_uniform_levels_and_is_deterministic(device, bits, per):
    gen = torch.Generator().manual_seed(bits)
    w = (torch.randn(24, 200, generator=gen) * torch.rand(24, 1, generator=gen)).to(device)
    codes, cb = cbk.kmeans_codebook(w, bits, per=per)
    _check_result(w.cpu(), codes.cpu(), cb.cpu(), bits, per)
    again = cbk.kmeans_codebook(w, bits, per=per)
    assert torch.equal(codes, again[0]) and torch.equal(cb, again[1])
    assert bool((cb[:, 1:] >= cb[:, :-1]).all())  # ascending
    # codes are the nearest entries of the returned codebook
    torch.testing.assert_close(_decode(codes, cb).cpu(), _brute_nearest(w.cpu(), cb.cpu()), rtol=0, atol=0)
    # RTN-like baseline: 2^bits evenly spaced levels over [min, max] of the row / layer
    data = w if per == "row" else w.reshape(1, -1)
    lo, hi = data.amin(1, keepdim=True), data.amax(1, keepdim=True)
    uniform = lo + (hi - lo) * torch.linspace(0, 1, 1 << bits, device=device)
    uni_sse = _sse(w, cbk.assign_codes(w, uniform), uniform)
    assert _sse(w, codes, cb) < 0.9 * uni_sse


def test_kmeans_finds_well_separated_clusters():
    gen = torch.Generator().manual_seed(7)
    centers = torch.tensor([-5.0, -1.0, 2.0, 9.0])
    w = (centers[torch.randint(0, 4, (6, 300), generator=gen)] + torch.randn(6, 300, generator=gen) * 0.01)
    w[:, :4] = centers  # every cluster present in every row
    codes, cb = cbk.kmeans_codebook(w, 2, per="row")
    torch.testing.assert_close(cb, centers.expand(6, 4), atol=0.01, rtol=0)


def test_kmeans_seed_changes_only_restarts():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    a = cbk.kmeans_codebook(w, 3, seed=0)
    b = cbk.kmeans_codebook(w, 3, seed=1)
    assert abs(_sse(w, *a) - _sse(w, *b)) < 0.05 * _sse(w, *a)


@pytest.mark.parametrize("per", ["row", "layer"])
def test_kmeans_degenerate_rows(per):
    w = torch.randn(6, 40)
    w[0] = 0.0  # constant zero row
    w[1] = 3.5  # constant row
    w[2] = torch.tensor([1.0, -2.0]).repeat(20)  # fewer distinct values than entries
    w[3, :] = 1e-3
    w[3, 7] = -1e30  # an outlier far beyond the rest of the row
    w[4] = torch.linspace(-1, 1, 40) * 3e38  # float32 sums overflow
    codes, cb = cbk.kmeans_codebook(w, 4, per=per)
    _check_result(w, codes, cb, 4, per)
    deq = _decode(codes, cb)
    assert bool(torch.isfinite(deq).all())
    if per == "row":
        assert bool((deq[:3] == w[:3]).all())  # at most 16 distinct values: exact
        assert deq[3, 7] == -1e30 and bool(((deq[3] - w[3]).abs() < 1e-6).all())


def test_kmeans_tiny_and_empty_inputs():
    for n, k in [(1, 1), (1, 3), (5, 2)]:
        w = torch.randn(n, k)
        codes, cb = cbk.kmeans_codebook(w, 3)
        _check_result(w, codes, cb, 3, "row")
        torch.testing.assert_close(_decode(codes, cb), w, rtol=0, atol=0)
    codes, cb = cbk.kmeans_codebook(torch.randn(0, 8), 2)
    assert codes.shape == (0, 8) and cb.shape == (0, 4)


def test_kmeans_layer_subsample(monkeypatch):
    monkeypatch.setattr(cbk, "KMEANS_MAX_SAMPLES", 1000)
    w = torch.randn(40, 100, generator=torch.Generator().manual_seed(9))
    codes, cb = cbk.kmeans_codebook(w, 3, per="layer", seed=4)
    _check_result(w, codes, cb, 3, "layer")
    assert torch.equal(cb, cbk.kmeans_codebook(w, 3, per="layer", seed=4)[1])


def test_nf4_levels_match_qlora():
    levels = cbk.NF4_LEVELS
    torch.testing.assert_close(levels, torch.tensor(NF4_PUBLISHED), rtol=0, atol=1e-6)
    assert levels.dtype == torch.float32 and levels[7].item() == 0.0
    assert levels[0].item() == -1.0 and levels[-1].item() == 1.0


@pytest.mark.parametrize("per", ["row", "layer"])
def test_nf4_codebook(per):
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(10, 64, generator=gen) * torch.rand(10, 1, generator=gen)
    w[3] = 0
    codes, cb = cbk.nf4_codebook(w, per=per)
    _check_result(w, codes, cb, 4, per)
    data = w if per == "row" else w.reshape(1, -1)
    amax = data.abs().amax(1, keepdim=True)
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    torch.testing.assert_close(cb, amax * cbk.NF4_LEVELS, rtol=0, atol=0)
    torch.testing.assert_close(_decode(codes, cb), _brute_nearest(w, cb), rtol=0, atol=0)
    assert bool((_decode(codes, cb)[3] == 0).all())


def test_pow2_levels_as_documented():
    assert cbk.pow2_levels(2).tolist() == [-1.0, 0.0, 0.5, 1.0]
    assert cbk.pow2_levels(3).tolist() == [-1.0, -0.5, -0.25, 0.0, 0.125, 0.25, 0.5, 1.0]
    mags = [2.0 ** -i for i in range(7)]
    assert cbk.pow2_levels(4).tolist() == sorted([-m for m in mags] + [0.0, 2.0 ** -7] + mags)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per", ["row", "layer"])
def test_pow2_codebook(bits, per):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(7, 33, generator=gen).to(torch.float16)
    codes, cb = cbk.pow2_codebook(w, bits, per=per)
    _check_result(w, codes, cb, bits, per)
    data = w.float() if per == "row" else w.float().reshape(1, -1)
    torch.testing.assert_close(cb, data.abs().amax(1, keepdim=True) * cbk.pow2_levels(bits), rtol=0, atol=0)
    torch.testing.assert_close(_decode(codes, cb), _brute_nearest(w, cb), rtol=0, atol=0)


def test_fit_codebook_dispatch_and_errors():
    w = torch.randn(4, 32)
    for kind, bits in [("kmeans", 2), ("nf4", 4), ("pow2", 3)]:
        codes, cb = cbk.fit_codebook(w, bits, kind, per="layer")
        _check_result(w, codes, cb, bits, "layer")
    assert torch.equal(cbk.fit_codebook(w, 4, "nf4")[1], cbk.nf4_codebook(w)[1])
    with pytest.raises(ValueError, match="bits=4"):
        cbk.fit_codebook(w, 3, "nf4")
    with pytest.raises(ValueError, match="kind must be one of"):
        cbk.fit_codebook(w, 4, "lloyd-max")
    with pytest.raises(ValueError, match="bits must be one of"):
        cbk.fit_codebook(w, 8, "kmeans")
    with pytest.raises(ValueError, match="per must be"):
        cbk.kmeans_codebook(w, 2, per="column")
    with pytest.raises(ValueError, match="NaN or Inf"):
        cbk.pow2_codebook(w.masked_fill(w > 0, float("nan")), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cbk.kmeans_codebook(w.masked_fill(w > 1, float("inf")), 2)
    with pytest.raises(ValueError, match="codebook must be"):
        cbk.assign_codes(w, torch.randn(3, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        cbk.assign_codes(w, torch.tensor([[0.0, float("nan")]]))


# ---- the prefix-sum k-means (issue 13: one 4096x4096 layer in about a second) ----

def _dense_kmeans_sse(rows: torch.Tensor, entries: int, restarts: int = 3, iters: int = 60, seed: int = 123) -> torch.Tensor:
    """Reference: per row, the best of plain Lloyd runs (full distance table, no prefix sums) from the
    quantile init and `restarts` k-means++ seedings over the weights -> the squared error per row."""
    gen = torch.Generator().manual_seed(seed)
    best = []
    for row in rows.double():
        inits = [torch.quantile(row, (torch.arange(entries, dtype=torch.float64) + 0.5) / entries)]
        for _ in range(restarts):
            cent = row[torch.randint(len(row), (1,), generator=gen)]
            for _ in range(entries - 1):
                dist = ((row[:, None] - cent[None]) ** 2).min(1).values
                pick = torch.multinomial(dist + 1e-300, 1, generator=gen) if dist.sum() > 0 else torch.zeros(1, dtype=torch.long)
                cent = torch.cat([cent, row[pick]])
            inits.append(cent)
        errors = []
        for cent in inits:
            for _ in range(iters):
                code = ((row[:, None] - cent[None]) ** 2).argmin(1)
                sums = torch.zeros(entries, dtype=torch.float64).index_add_(0, code, row)
                count = torch.bincount(code, minlength=entries)
                cent = torch.where(count > 0, sums / count.clamp(min=1), cent)
            errors.append(float(((row[:, None] - cent[None]) ** 2).min(1).values.sum()))
        best.append(min(errors))
    return torch.tensor(best)


def _row_sse(w, codes, codebook):
    return ((_decode(codes, codebook) - w.float()).double() ** 2).sum(1)


@pytest.mark.parametrize("kind", ["normal", "heavy"])
def test_kmeans_error_matches_a_dense_reference(kind):
    """The prefix-sum Lloyd with its inits reaches the error of plain dense k-means from the quantile init
    and three k-means++ seedings (what the earlier pass-per-draw version did), averaged over four seeds of
    its draws (one seed moves it by ~5% on heavy tails, and its draws differ across torch versions), within
    3% over the rows and
    35% on any single row (1-D k-means has many local optima; which one a row lands in is luck)."""
    w = _reference_rows(kind)
    for bits in (3, 4):
        ours = _row_sse(w, *cbk.kmeans_codebook(w, bits))
        reference = _reference_sse(kind, bits)
        assert float(ours.sum()) <= 1.03 * float(reference.sum())
        assert bool((ours <= 1.35 * reference + 1e-12).all())  # single rows: local optima differ


def _reference_rows(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11 if kind == "normal" else 12)
    w = torch.randn(12, 257, generator=gen)
    if kind == "heavy":  # Student-t with 2 degrees of freedom: a few weights tens of sigmas out
        w = w / ((torch.randn(12, 257, 2, generator=gen) ** 2).mean(2)).sqrt()
    return w


@functools.lru_cache(maxsize=None)
def _reference_sse(kind: str, bits: int) -> torch.Tensor:
    """The dense reference's squared error per row, averaged over four seeds (computed once per case)."""
    w = _reference_rows(kind)
    return torch.stack([_dense_kmeans_sse(w, 1 << bits, seed=seed) for seed in range(4)]).mean(0)


@pytest.mark.parametrize("per", ["row", "layer"])
def test_kmeans_codes_are_those_of_assign_codes(per):
    """The codes read off the sort equal assign_codes' nearest entries, ties at midpoints included."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randint(-6, 7, (9, 70), generator=gen).float() / 2  # many equal weights and exact midpoints
    w[3] = torch.randn(70, generator=gen)
    w[4] = 1.25  # a constant row: repeated entries
    for bits in (2, 3, 4):
        codes, cb = cbk.kmeans_codebook(w, bits, per=per)
        assert torch.equal(codes, cbk.assign_codes(w, cb))


@pytest.mark.parametrize("per", ["row", "layer"])
def test_kmeans_keep_zero(per):
    """keep_zero: an exact 0 entry that every zero weight maps to; the other entries fitted to the nonzero
    weights (rows without any, with one, and with fewer than 2^bits nonzero weights included)."""
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(7, 90, generator=gen) * (torch.rand(7, 90, generator=gen) > 0.8)
    w[0] = 0.0
    w[1] = 0.0
    w[1, 17] = -0.75  # one nonzero weight
    w[2, 5:] = 0.0  # five
    for bits in (2, 4):
        codes, cb = cbk.kmeans_codebook(w, bits, per=per, keep_zero=True)
        _check_result(w, codes, cb, bits, per)
        deq = _decode(codes, cb)
        assert bool((deq[w == 0] == 0).all()) and bool((cb == 0).any(1).all())
        assert torch.equal(codes, cbk.assign_codes(w, cb))
        if per == "row":
            assert deq[1, 17] == -0.75 and bool((deq[2, :5] == w[2, :5]).all())  # few values: exact
            assert bool((cb[0] == 0).all())
        # not worse than k-means on the nonzero weights alone (the zero entry is free)
        if bits == 4:
            nz = w[w != 0][None]
            plain = _sse(nz, *cbk.kmeans_codebook(nz, bits - 1, per="row"))
            if per == "layer":
                assert _sse(w, codes, cb) <= 1.01 * plain + 1e-9


def test_kmeans_is_deterministic_per_seed_on_awkward_shapes():
    gen = torch.Generator().manual_seed(2)
    for n, k in [(3, 5), (2, 15), (4, 16), (1, 17), (5, 1), (6, 300)]:  # rows shorter than 2^bits and longer
        w = torch.randn(n, k, generator=gen)
        for per in ("row", "layer"):
            for keep_zero in (False, True):
                a = cbk.kmeans_codebook(w, 4, per=per, seed=3, keep_zero=keep_zero)
                b = cbk.kmeans_codebook(w, 4, per=per, seed=3, keep_zero=keep_zero)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                _check_result(w, a[0], a[1], 4, per)
                if per == "row" and k <= 15:  # fewer weights than entries: reproduced exactly
                    torch.testing.assert_close(_decode(*a), w, rtol=0, atol=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cbk.kmeans_codebook(torch.tensor([[1.0, float("nan")]]), 2, keep_zero=True)


def test_quantize_report_has_seconds_per_layer():
    from torch import nn

    from slimkernels import CodebookConfig, quantize_

    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8))
    report = quantize_(model, CodebookConfig(bits=3), progress=False)
    assert len(report.converted) == 2
    assert all(r.seconds > 0 for r in report.converted)
    assert all("seconds" in r for r in report.to_dict()["layers"])
    assert str(report).count(" s") >= 2


# ---- the native k-means (csrc/cpu/kmeans.cpp) against the torch reference ----

needs_native = pytest.mark.skipif(cbk._native_kmeans() is None, reason="slimkernels._C without kmeans_codebook")


def _fit(w, bits, native, threads=None, **kwargs):
    """kmeans_codebook on the native (True) or the torch path (False), on `threads` torch threads."""
    before_native, before_threads = cbk.KMEANS_NATIVE, torch.get_num_threads()
    cbk.KMEANS_NATIVE = native
    try:
        if threads:
            torch.set_num_threads(threads)
        return cbk.kmeans_codebook(w, bits, **kwargs)
    finally:
        cbk.KMEANS_NATIVE = before_native
        torch.set_num_threads(before_threads)


def _assert_native_matches_reference(w, bits, **kwargs):
    """The native fit equals the reference up to the rounding of float64 sums: the squared error per row
    within 1e-9 relative, and the same codebooks and codes (the sums decide a fit only in near-ties, which
    these inputs do not have); the same result on 1 and 2 threads."""
    ref_codes, ref_cb = _fit(w, bits, native=False, **kwargs)
    one = _fit(w, bits, native=True, threads=1, **kwargs)
    two = _fit(w, bits, native=True, threads=2, **kwargs)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    codes, cb = one
    _check_result(w, codes, cb, bits, kwargs.get("per", "row"))
    rows = (lambda t: t) if kwargs.get("per", "row") == "row" else (lambda t: t.reshape(1, -1))
    sse, ref_sse = _row_sse(rows(w), rows(codes), cb), _row_sse(rows(w), rows(ref_codes), ref_cb)
    torch.testing.assert_close(sse, ref_sse, rtol=1e-9, atol=1e-30)
    assert torch.equal(cb, ref_cb)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(codes, cbk.assign_codes(w, cb))


def _awkward_rows(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Normal rows, then (where there are rows enough) heavy tails, few distinct values, repeated values,
    a constant row, exact midpoints and large magnitudes."""
    w = torch.randn(n, k, generator=gen)
    specials = [
        lambda: w[0] / ((torch.randn(k, 2, generator=gen) ** 2).mean(1)).sqrt(),  # Student-t, 2 degrees of freedom
        lambda: torch.tensor([1.0, -2.0, 0.5])[torch.randint(0, 3, (k,), generator=gen)],  # 3 distinct values
        lambda: torch.randint(-6, 7, (k,), generator=gen).float() / 2,  # repeats and midpoints
        lambda: torch.full((k,), 0.75),
        lambda: torch.randn(k, generator=gen) * 1e30,
    ]
    for row, make in zip(range(1, n), specials):
        w[row] = make()
    return w


@needs_native
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 33), (6, 300)])
def test_native_kmeans_matches_reference(bits, shape):
    w = _awkward_rows(*shape, torch.Generator().manual_seed(bits * 100 + shape[1]))
    _assert_native_matches_reference(w, bits)
    _assert_native_matches_reference(w, bits, seed=7, iters=3)


@needs_native
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 33)])
def test_native_kmeans_matches_reference_per_layer_and_keep_zero(bits, shape):
    gen = torch.Generator().manual_seed(bits + shape[0])
    w = _awkward_rows(*shape, gen)
    _assert_native_matches_reference(w, bits, per="layer")
    w = w * (torch.rand(shape, generator=gen) > 0.6)
    if shape[0] > 2:
        w[2] = 0.0  # a row without nonzero weights
    for per in ("row", "layer"):
        _assert_native_matches_reference(w, bits, per=per, keep_zero=True)


@needs_native
def test_native_kmeans_long_layer_row():
    """A layer of more than 2^16 weights: sorted on several threads, codes by search instead of the sort."""
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(300, 256, generator=gen) / ((torch.randn(300, 256, 2, generator=gen) ** 2).mean(2)).sqrt()
    w[:, :7] = 0.0
    _assert_native_matches_reference(w, 4, per="layer")
    _assert_native_matches_reference(w, 3, per="layer", keep_zero=True)


@needs_native
def test_native_kmeans_sampled_layer_and_seeds(monkeypatch):
    gen = torch.Generator().manual_seed(21)
    w = torch.randn(40, 100, generator=gen) / ((torch.randn(40, 100, 2, generator=gen) ** 2).mean(2)).sqrt()
    monkeypatch.setattr(cbk, "KMEANS_MAX_SAMPLES", 1000)  # a sampled per-layer fit: codes by assign_codes
    _assert_native_matches_reference(w, 3, per="layer", seed=4)
    monkeypatch.undo()
    a, b = cbk.kmeans_codebook(w, 4, seed=1), cbk.kmeans_codebook(w, 4, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], cbk.kmeans_codebook(w, 4, seed=2)[1])  # the seed reaches the k-means++ draws


@needs_native
def test_native_kmeans_rejects_bad_arguments():
    lib = cbk._native_kmeans()
    data, z = torch.randn(2, 8), torch.zeros(4, dtype=torch.float64)
    u, book = torch.rand(2, 3, 7, dtype=torch.float64), torch.empty(2, 4)

    def call(**changes):
        args = dict(data=data.data_ptr(), rows=2, cols=8, entries=4, iters=5, restarts=3, uniforms=u.data_ptr(),
                    normal_z=z.data_ptr(), keep_zero=False, codebook=book.data_ptr(), codes=0, num_threads=1)
        args.update(changes)
        lib.kmeans_codebook(**args)

    call()
    for changes, message in [({"entries": 0}, "entries must be in 1..256"), ({"entries": 1, "keep_zero": True}, "2..256"),
                             ({"cols": 0}, "cols must be"), ({"rows": -1}, "rows must be"), ({"iters": -1}, "iters"),
                             ({"num_threads": 0}, "num_threads"), ({"uniforms": 0}, "uniforms must not be null"),
                             ({"codebook": 0}, "codebook must not be null")]:
        with pytest.raises(ValueError, match=message):
            call(**changes)
