"""Huffman coding of integer tensors (compress/entropy.py) and save(..., entropy_coding="huffman")."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import slimkernels
from slimkernels.compress import entropy
from slimkernels.quant.codebook import kmeans_codebook


def _round_trip(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, int]:
    desc, data = entropy.encode_stream(symbols, alphabet)
    out, end = entropy.decode_stream(desc, np.frombuffer(data, dtype=np.uint8), 0, len(symbols))
    assert end == len(data)
    return out, len(data)


@pytest.mark.parametrize("n, alphabet, skew", [(1, 2, 0.0), (37, 3, 1.0), (2047, 16, 0.0), (2049, 16, 4.0),
                                               (9001, 256, 2.0), (20000, 16, 8.0), (5000, 1000, 1.0)])
def test_stream_round_trip_skewed_and_uniform(n, alphabet, skew):
    rng = np.random.default_rng(n + alphabet)
    p = np.exp(-skew * np.arange(alphabet) / alphabet * 4)
    p /= p.sum()
    symbols = rng.choice(alphabet, size=n, p=p)
    out, nbytes = _round_trip(symbols, alphabet)
    np.testing.assert_array_equal(out, symbols)
    if n > 1000:  # the data is near the entropy (tables and lanes aside)
        counts = np.bincount(symbols, minlength=alphabet)
        q = counts[counts > 0] / n
        entropy_bytes = -(q * np.log2(q)).sum() * n / 8
        assert nbytes <= entropy_bytes + n / 8 + alphabet / 2 + 4 * (n // 2048 + 1) + 8


def test_stream_edge_cases():
    for symbols, alphabet in [(np.zeros(0, dtype=np.int64), 1), (np.full(100, 3), 4), (np.full(5000, 0), 1),
                              (np.arange(256), 256), (np.random.default_rng(0).permutation(np.repeat(np.arange(256), 40)), 256)]:
        out, _ = _round_trip(symbols, alphabet)
        np.testing.assert_array_equal(out, symbols)


def test_code_lengths_optimal_within_one_bit_of_entropy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        alphabet = int(rng.integers(2, 300))
        freqs = rng.integers(0, 1000, size=alphabet) * (rng.random(alphabet) < 0.8)
        freqs[:2] += 1
        lengths = entropy.huffman_lengths(freqs).astype(np.int64)
        assert ((lengths > 0) == (freqs > 0)).all()
        assert (2.0 ** -lengths[lengths > 0]).sum() <= 1 + 1e-12
        p = freqs[freqs > 0] / freqs.sum()
        h = -(p * np.log2(p)).sum()
        average = (freqs * lengths).sum() / freqs.sum()
        assert h - 1e-9 <= average < h + 1


def test_code_lengths_limited_to_fifteen_bits():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib, dtype=np.int64)  # an unlimited Huffman tree 29 deep
    lengths = entropy.huffman_lengths(freqs)
    assert lengths.max() == entropy.MAX_CODE_BITS
    assert (2.0 ** -lengths.astype(np.int64)).sum() == 1.0
    symbols = np.random.default_rng(2).choice(30, size=3000, p=freqs / freqs.sum())
    symbols[:30] = np.arange(30)
    out, _ = _round_trip(symbols, 30)
    np.testing.assert_array_equal(out, symbols)


def _tensor_round_trip(t, *packed):
    entry, data = entropy.encode_tensor(t, *packed)
    json.dumps(entry)
    out, end = entropy.decode_tensor(entry, np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8), 0,
                                     t.dtype, tuple(t.shape))
    assert end == len(data)
    assert out.dtype == t.dtype and torch.equal(out, t)
    return entry, data


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_tensor_round_trip_every_dtype(dtype):
    g = torch.Generator().manual_seed(3)
    if dtype == torch.bool:
        t = torch.rand(33, 17, generator=g) < 0.2
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000), (33, 17), generator=g).to(dtype)
        t[0, 0], t[-1, -1] = info.min, info.max  # the extremes of the type
    _tensor_round_trip(t)


def test_tensor_representations():
    g = torch.Generator().manual_seed(4)
    cols = torch.sort(torch.randperm(30000, generator=g)[:4000]).values.to(torch.int32)  # CSR-like indices
    assert _tensor_round_trip(cols)[0]["t"] == "delta"
    codes = torch.randint(0, 16, (60, 90), generator=g, dtype=torch.uint8)
    codes[torch.rand(60, 90, generator=g) < 0.9] = 7  # pruned weights: one code
    entry, _ = _tensor_round_trip(slimkernels.quant.lowbit.pack_codes(codes, 4), 4, 90)
    assert entry["t"] == "runs" and entry["packed"] == [4, 90]
    assert _tensor_round_trip(torch.full((5, 7), -3, dtype=torch.int16))[0]["t"] == "const"
    assert _tensor_round_trip(torch.zeros(0, 4, dtype=torch.int32))[0]["t"] == "empty"
    uniform = torch.randint(-128, 128, (50, 50), generator=g, dtype=torch.int8)
    entry, data = _tensor_round_trip(uniform)
    assert len(data) <= uniform.numel()  # never more than the raw bytes


# ---- save / load --------------------------------------------------------------------------------------------------
def _mlp():
    return nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 33), nn.ReLU(), nn.Linear(33, 32), nn.Linear(32, 5))


def _trained_like(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # bell-shaped, like trained weights
    return model


CONFIGS = [slimkernels.Int8DynamicConfig(), slimkernels.Int8WeightOnlyConfig(), slimkernels.Int4WeightOnlyConfig(group_size=32),
           slimkernels.Int4WeightOnlyConfig(group_size=-1, symmetric=True), slimkernels.CodebookConfig(bits=4),
           slimkernels.CodebookConfig(bits=3, per="layer"), slimkernels.CodebookConfig(bits=2, codebook="pow2"),
           slimkernels.SparsityConfig(0.7), slimkernels.SparsityConfig(0.8, values="int8"),
           slimkernels.SparsityConfig(pattern="2:4"), slimkernels.SparsityConfig(pattern="4:8", values="int8"),
           slimkernels.SparsityConfig(0.75, pattern="block", block=(4, 8))]  # layers a config cannot take stay float


def _compress(model, config):
    if isinstance(config, slimkernels.SparsityConfig):
        slimkernels.sparsify_(model, config, progress=False)
    else:
        slimkernels.quantize_(model, config, progress=False)
    return model


def _check_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    x = torch.randn(3, 96)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
def test_save_load_round_trip(config, tmp_path):
    model = _compress(_trained_like(_mlp()), config)
    assert any(isinstance(m, slimkernels.nn.base.CompressedModule) for m in model.modules())
    slimkernels.save(model, tmp_path / "plain.safetensors")
    slimkernels.save(model, tmp_path / "huff.safetensors", entropy_coding="huffman")
    with safe_open(tmp_path / "plain.safetensors", framework="pt") as f:
        assert "entropy" not in f.metadata()  # plain stays the default
    _check_same(model, slimkernels.load(tmp_path / "huff.safetensors", _mlp()))
    _check_same(model, slimkernels.load(tmp_path / "huff.safetensors", copy.deepcopy(model)))  # already converted


def _keep_zero_codebook(linear: nn.Linear) -> slimkernels.QuantLinear:
    """A 4-bit per-layer k-means codebook layer whose zero weights stay exactly 0."""
    codes, codebook = kmeans_codebook(linear.weight.detach(), 4, per="layer", keep_zero=True)
    return slimkernels.QuantLinear.from_codebook(codes, codebook, linear.bias.detach())


def test_mixed_model_and_size(tmp_path):
    model = _trained_like(_mlp())
    slimkernels.sparsify_(model, slimkernels.SparsityConfig(0.8), filter_fn=lambda m, name: name == "0", progress=False)
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(), filter_fn=lambda m, name: name == "2", progress=False)
    model[4] = _keep_zero_codebook(model[4])
    types = [type(m).__name__ for m in model]
    assert types[0] == "SparseLinear" and types[2] == types[4] == "QuantLinear" and types[5] == "Linear"
    slimkernels.save(model, tmp_path / "plain.safetensors")
    slimkernels.save(model, tmp_path / "huff.safetensors", entropy_coding="huffman")
    assert (tmp_path / "huff.safetensors").stat().st_size < (tmp_path / "plain.safetensors").stat().st_size
    _check_same(model, slimkernels.load(tmp_path / "huff.safetensors", _mlp()))


def test_pruned_codebook_file_is_much_smaller(tmp_path):
    linear = _trained_like(nn.Linear(256, 128))
    with torch.no_grad():
        linear.weight[linear.weight.abs() < linear.weight.abs().quantile(0.9)] = 0
    model = nn.Sequential(_keep_zero_codebook(linear))
    assert torch.equal(model[0].dequantized_weight() == 0, linear.weight == 0)  # the zeros kept exactly
    slimkernels.save(model, tmp_path / "plain.safetensors")
    slimkernels.save(model, tmp_path / "huff.safetensors", entropy_coding="huffman")
    plain, huff = (tmp_path / "plain.safetensors").stat().st_size, (tmp_path / "huff.safetensors").stat().st_size
    assert huff * 3 < plain  # 4 bits a weight -> about 1 bit (10% kept: run lengths + codes)
    reloaded = slimkernels.load(tmp_path / "huff.safetensors", nn.Sequential(nn.Linear(256, 128)))
    assert torch.equal(reloaded[0].qweight, model[0].qweight)


def test_bad_entropy_coding_argument(tmp_path):
    with pytest.raises(ValueError, match="entropy_coding"):
        slimkernels.save(_mlp(), tmp_path / "x.safetensors", entropy_coding="zstd")


# ---- corrupt files ----------------------------------------------------------------------------------------------------
@pytest.fixture
def coded(tmp_path):
    model = _trained_like(_mlp())
    slimkernels.quantize_(model, slimkernels.CodebookConfig(bits=4, per="layer"), progress=False)
    path = tmp_path / "good.safetensors"
    slimkernels.save(model, path, entropy_coding="huffman")
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    return load_file(path), meta, tmp_path


def _rewrite(coded, tensors=None, meta=None, edit=None):
    tensors0, meta0, tmp = coded
    tensors, meta = dict(tensors or tensors0), dict(meta or meta0)
    if edit is not None:
        record = json.loads(meta["entropy"])
        edit(record["tensors"])
        meta["entropy"] = json.dumps(record)
    path = tmp / "bad.safetensors"
    save_file(tensors, path, metadata=meta)
    return path


def _first(entries):
    return next(iter(entries.values()))


def _blob_edit(coded, fn):
    tensors = dict(coded[0])
    blob = tensors[entropy.BLOB_NAME].clone()
    tensors[entropy.BLOB_NAME] = fn(blob)
    return tensors


CORRUPTIONS = {
    "truncated blob": lambda c: _rewrite(c, tensors=_blob_edit(c, lambda b: b[:-9])),
    "extra bytes": lambda c: _rewrite(c, tensors=_blob_edit(c, lambda b: torch.cat([b, torch.zeros(3, dtype=torch.uint8)]))),
    "no blob": lambda c: _rewrite(c, tensors={k: v for k, v in c[0].items() if k != entropy.BLOB_NAME}),
    "bad code table": lambda c: _rewrite(c, tensors=_blob_edit(c, lambda b: torch.cat([torch.full((8,), 0x11, dtype=torch.uint8), b[8:]]))),
    "flipped data": lambda c: _rewrite(c, tensors=_blob_edit(c, lambda b: torch.cat([b[:40], b[40:] ^ 0x5A]))),
    "wrong symbol count": lambda c: _rewrite(c, edit=lambda e: _first(e)["s"][-1].__setitem__(0, _first(e)["s"][-1][0] - 1)),
    "huge symbol count": lambda c: _rewrite(c, edit=lambda e: _first(e)["s"][-1].__setitem__(0, 10 ** 15)),
    "wrong shape": lambda c: _rewrite(c, edit=lambda e: _first(e).__setitem__("shape", [3, 3])),
    "unknown coding": lambda c: _rewrite(c, edit=lambda e: _first(e).__setitem__("t", "lzma")),
    "unknown tensor": lambda c: _rewrite(c, edit=lambda e: e.__setitem__("9.qweight", _first(e))),
    "not json": lambda c: _rewrite(c, meta={**c[1], "entropy": "{oops"}),
    "bad stream list": lambda c: _rewrite(c, edit=lambda e: _first(e).__setitem__("s", [[1, 2]])),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_files_raise_value_error(coded, case):
    path = CORRUPTIONS[case](coded)
    with pytest.raises(ValueError):
        slimkernels.load(path, _mlp())


def test_undecodable_code_word():
    # An incomplete code (one symbol of length 1: code word "0"): data with a 1 bit does not decode.
    desc = [8, 2, 2048, 1]
    table = np.array([0x01], dtype=np.uint8)  # symbol 0: length 1, symbol 1: unused
    blob = np.concatenate([table, np.array([0b00010000], dtype=np.uint8)])
    with pytest.raises(ValueError, match="does not decode"):
        entropy.decode_stream(desc, blob, 0, 8)
    blob[-1] = 0
    out, _ = entropy.decode_stream(desc, blob, 0, 8)
    assert (out == 0).all()


# ---- the zero entry of k-means codebooks -----------------------------------------------------------------------------
@pytest.mark.parametrize("per", ["row", "layer"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_keep_zero(per, bits):
    g = torch.Generator().manual_seed(6)
    w = torch.randn(13, 37, generator=g)
    w[torch.rand(13, 37, generator=g) < 0.7] = 0
    w[3] = 0  # a row with no kept weight
    codes, codebook = kmeans_codebook(w, bits, per=per, keep_zero=True)
    assert codebook.shape == (13 if per == "row" else 1, 1 << bits)
    assert (codebook == 0).any(dim=1).all()
    values = torch.gather(codebook.expand(13, -1), 1, codes.long())
    assert torch.equal(values[w == 0], torch.zeros(int((w == 0).sum())))
    plain_error = (w - torch.gather(codebook.expand(13, -1), 1, codes.long())).abs()[w != 0].mean()
    assert plain_error < w[w != 0].abs().mean() / 2  # the other entries fit the kept weights
