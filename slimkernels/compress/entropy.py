"""Canonical Huffman coding of integer tensors: the storage of slimkernels.save(..., entropy_coding="huffman").

Pure numpy. Every integer tensor of a compressed module (codebook indices, int4 / int8 codes, sparse
row pointers and column indices, N:M positions) is turned into a stream of symbols and Huffman-coded;
`encode_tensor` tries a few representations and keeps the one with the fewest bytes:
  "plain"  the values minus their minimum
  "delta"  the differences of consecutive values (sorted column indices, row pointers), minus their minimum
  "runs"   the most frequent value run-length coded (Deep Compression's relative indices of the nonzeros,
           done on the codes of a pruned codebook layer): a stream of run lengths before each other value
           (RUN_ESCAPE = that many repeats and no value) and a stream of those other values
  "const"  one value repeated (no stream), "empty", and "raw": the tensor's bytes as they are.
Sub-byte packed codes (quant/lowbit.py's layout, e.g. two 4-bit codes per byte) are coded as their codes
(unpacked with lowbit.unpack_codes, packed back with lowbit.pack_codes at load) when that is smaller
than coding their bytes.

A Huffman stream is a canonical code (code lengths <= MAX_CODE_BITS, stored as 4-bit nibbles per symbol
of the alphabet: the code table) and the code words, MSB first, split into lanes of `lane` symbols, each
starting on a byte boundary (their byte lengths stored as uint32 when there is more than one lane).
Decoding reads all lanes at once, one symbol per lane per step, through a table over MAX_CODE_BITS-bit
windows: tens of millions of symbols per second from numpy, without a native decoder. Every loop is
bounded by the declared counts, which the caller checks against the model's tensors first, so a corrupt
stream is a ValueError, never a hang or a huge allocation.

Layout in the file: the bytes of every coded tensor, one after the other, form one uint8 tensor
(BLOB_NAME); the metadata entry "entropy" maps each tensor's name to its description (dtype, shape, how
it is coded, and per stream [symbols, alphabet size, lane symbols, data bytes]).
"""
from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from ..quant import lowbit

MAX_CODE_BITS = 15  # code lengths fit a nibble of the code table; the decoding table has 2^15 entries at most
MAX_ALPHABET = 1 << MAX_CODE_BITS
RUN_ESCAPE = 255  # run symbol: 255 repeats of the run value and no other value after them
MIN_LANE, MAX_LANE = 2048, 8192  # symbols per lane: more lanes decode faster, each costs 4 bytes
BLOB_NAME = "slimkernels:entropy"
INT_DTYPES = {str(d).removeprefix("torch."): d
              for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}


# ---- canonical Huffman codes -------------------------------------------------------------------------------------
def huffman_lengths(freqs, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Code length of every symbol from its frequency (0 for an unused symbol), at most `max_bits`.
    Huffman's algorithm; a deeper tree is flattened the JPEG way (Annex K.3: a pair of leaves at the
    deepest level moves up, keeping the code complete), the most frequent symbols taking the shortest
    lengths. A lone used symbol gets length 1."""
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(len(freqs), dtype=np.uint8)
    used = np.flatnonzero(freqs > 0)
    if len(used) <= 1:
        lengths[used] = 1
        return lengths
    if len(used) > 1 << max_bits:
        raise ValueError(f"huffman_lengths: {len(used)} symbols do not fit codes of at most {max_bits} bits")
    heap = [(int(f), i) for i, f in enumerate(freqs[used])]
    heapq.heapify(heap)
    parent = [0] * (2 * len(used) - 1)
    node = len(used)
    while len(heap) > 1:
        f1, a = heapq.heappop(heap)
        f2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (f1 + f2, node))
        node += 1
    depth = [0] * len(parent)
    for i in range(len(parent) - 2, -1, -1):  # parents are created after their children: walk down from the root
        depth[i] = depth[parent[i]] + 1
    leaf_depth = np.array(depth[:len(used)], dtype=np.int64)
    if leaf_depth.max() > max_bits:
        count = np.bincount(leaf_depth).tolist()
        for i in range(len(count) - 1, max_bits, -1):
            while count[i] > 0:
                j = i - 2
                while count[j] == 0:
                    j -= 1
                count[i] -= 2
                count[i - 1] += 1
                count[j + 1] += 2
                count[j] -= 1
        by_freq = np.argsort(-freqs[used], kind="stable")  # most frequent first: shortest codes
        leaf_depth[by_freq] = np.repeat(np.arange(len(count)), count)[:len(used)]
    lengths[used] = leaf_depth
    return lengths


def _check_lengths(lengths: np.ndarray) -> None:
    if lengths.size and int(lengths.max()) > MAX_CODE_BITS:
        raise ValueError(f"code lengths exceed {MAX_CODE_BITS} bits")
    used = lengths[lengths > 0].astype(np.int64)
    if not used.size:
        raise ValueError("the code table has no symbol")
    if int((1 << (MAX_CODE_BITS - used)).sum()) > 1 << MAX_CODE_BITS:
        raise ValueError("the code table is not a prefix code (its Kraft sum exceeds 1)")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code word of every symbol (uint32; as in deflate: shorter codes first, then by symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    used = np.flatnonzero(lengths)
    if not used.size:
        return codes
    top = int(lengths.max())
    count = np.bincount(lengths[used], minlength=top + 1)
    first, code = np.zeros(top + 1, dtype=np.int64), 0
    for bits in range(1, top + 1):
        code = (code + (int(count[bits - 1]) if bits > 1 else 0)) << 1
        first[bits] = code
    order = used[np.lexsort((used, lengths[used]))]  # by length, then symbol
    sorted_len = lengths[order]
    group_start = np.cumsum(count)[sorted_len - 1]  # used symbols with shorter codes (count[0] is 0)
    codes[order] = first[sorted_len] + np.arange(len(order)) - group_start
    return codes


def _decode_table(lengths: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(window bits W, symbol [2^W], code length [2^W]): what the W bits starting at a code word decode to;
    length 0 where no code word starts (an incomplete code)."""
    used = np.flatnonzero(lengths)
    window = int(lengths.max())
    order = used[np.lexsort((used, lengths[used]))]  # canonical order = increasing code words
    span = 1 << (window - lengths[order].astype(np.int64))
    symbols = np.zeros(1 << window, dtype=np.int32)
    code_len = np.zeros(1 << window, dtype=np.int64)
    filled = int(span.sum())
    symbols[:filled] = np.repeat(order, span)
    code_len[:filled] = np.repeat(lengths[order], span)
    return window, symbols, code_len


def lane_symbols(n: int) -> int:
    """Symbols per lane for a stream of n symbols: n / 1024 clamped to [MIN_LANE, MAX_LANE] (a lane costs
    4 bytes and decoding takes one numpy step per symbol of a lane, so big streams get many lanes)."""
    return int(min(MAX_LANE, max(MIN_LANE, -(-n // 1024))))


def _table_bytes(alphabet: int) -> int:
    return (alphabet + 1) // 2


def _stream_bytes(freqs: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Bytes of a coded stream (table, lane lengths, data; the lanes' padding estimated as half a byte each)."""
    lanes = -(-n // lane_symbols(n))
    data = (int((freqs * lengths).sum()) + 4 * lanes) // 8
    return _table_bytes(len(lengths)) + (4 * lanes if lanes > 1 else 0) + data


def encode_stream(symbols: np.ndarray, alphabet: int) -> tuple[list, bytes]:
    """Huffman-code symbols in [0, alphabet) -> ([n, alphabet, lane, data bytes], table + lane lengths + data)."""
    n = len(symbols)
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    lane = lane_symbols(n)
    lanes = []
    for start in range(0, n, lane):
        s = symbols[start:start + lane]
        size, word = lengths[s].astype(np.int64), codes[s]
        ends = np.cumsum(size)
        owner = np.repeat(np.arange(len(s)), size)
        bits = (word[owner] >> (ends[owner] - 1 - np.arange(int(ends[-1])))) & 1
        lanes.append(np.packbits(bits.astype(np.uint8)).tobytes())
    nibbles = np.zeros(2 * _table_bytes(alphabet), dtype=np.uint8)
    nibbles[:alphabet] = lengths
    table = (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()
    sizes = np.array([len(b) for b in lanes], dtype="<u4").tobytes() if len(lanes) > 1 else b""
    data = b"".join(lanes)
    return [n, alphabet, lane, len(data)], table + sizes + data


def _check_int(value, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} is {value!r}, expected an int in [{low}, {high}]")
    return value


def decode_stream(desc, blob: np.ndarray, offset: int, max_symbols: int) -> tuple[np.ndarray, int]:
    """Decode one stream described by `desc` ([n, alphabet, lane, data bytes]) from blob[offset:] ->
    (int32 symbols [n], offset after the stream). n may not exceed max_symbols. ValueError on any corruption."""
    if not isinstance(desc, list) or len(desc) != 4:
        raise ValueError(f"stream description {desc!r} is not [symbols, alphabet, lane, bytes]")
    n = _check_int(desc[0], "symbol count", 0, max_symbols)
    alphabet = _check_int(desc[1], "alphabet size", 1, MAX_ALPHABET)
    lane = _check_int(desc[2], "lane size", 1, 1 << 30)
    nbytes = _check_int(desc[3], "data size", 0, len(blob))
    lanes = -(-n // lane)
    sizes_len = 4 * lanes if lanes > 1 else 0
    end = offset + _table_bytes(alphabet) + sizes_len + nbytes
    if end > len(blob):
        raise ValueError(f"truncated stream: needs {end - offset} bytes, {len(blob) - offset} left")
    table = blob[offset:offset + _table_bytes(alphabet)]
    if n == 0:
        return np.zeros(0, dtype=np.int32), end
    lengths = np.stack([table & 15, table >> 4], 1).reshape(-1)[:alphabet]
    _check_lengths(lengths)
    if n > 8 * nbytes:  # every code word has at least one bit
        raise ValueError(f"{n} symbols cannot fit in {nbytes} bytes")
    if lanes > 1:
        lane_bytes = blob[offset + _table_bytes(alphabet):offset + _table_bytes(alphabet) + sizes_len].view("<u4")
        lane_bytes = lane_bytes.astype(np.int64)
        if int(lane_bytes.sum()) != nbytes:
            raise ValueError(f"lane sizes add up to {int(lane_bytes.sum())} bytes, the stream has {nbytes}")
    else:
        lane_bytes = np.array([nbytes], dtype=np.int64)
    data = blob[end - nbytes:end]
    window, table_symbol, table_len = _decode_table(lengths)
    table = (table_symbol << 4) | table_len.astype(np.int32)  # one gather per step: symbol and code length
    padded = np.concatenate([data, np.zeros(4, dtype=np.uint8)]).astype(np.int64)
    words = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]  # big-endian at every byte
    mask, top = (1 << window) - 1, 32 - window
    lane_start = np.concatenate([[0], np.cumsum(lane_bytes)[:-1]])
    pos = lane_start * 8
    out = np.zeros((lane, lanes), dtype=np.int32)  # step-major: each step writes one contiguous row
    last = n - (lanes - 1) * lane  # symbols of the last lane
    for active, steps in ((lanes, range(last)), (lanes - 1, range(last, lane))):
        p, rows = pos[:active], out[:, :active]  # views: the last lane stops after its `last` symbols
        for i in steps:
            entry = table.take((words.take(p >> 3, mode="clip") >> (top - (p & 7))) & mask)
            rows[i] = entry
            p += entry & 15
    out = out.T.reshape(-1)[:n]
    if not (out & 15).all():
        raise ValueError("a code word that the code table does not decode")
    out >>= 4
    used_bytes = (pos - lane_start * 8 + 7) // 8
    if not np.array_equal(used_bytes, lane_bytes):
        raise ValueError("the code words do not fill their lanes exactly (truncated or corrupt data)")
    return out, end


# ---- representations of an integer tensor --------------------------------------------------------------------------
def _runs(symbols: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    """(run symbols, other values): before each value != `value`, the count of `value`s since the last one,
    split into RUN_ESCAPE pieces; `value`s at the end are implied by the length."""
    where = np.flatnonzero(symbols != value)
    gaps = np.diff(where, prepend=-1) - 1
    pieces = gaps // RUN_ESCAPE + 1
    runs = np.full(int(pieces.sum()), RUN_ESCAPE, dtype=np.int64)
    runs[np.cumsum(pieces) - 1] = gaps % RUN_ESCAPE
    return runs, symbols[where]


def _unruns(runs: np.ndarray, literals: np.ndarray, value: int, n: int) -> np.ndarray:
    is_literal = runs != RUN_ESCAPE
    if int(is_literal.sum()) != len(literals):
        raise ValueError(f"the run stream announces {int(is_literal.sum())} values, the value stream has "
                         f"{len(literals)}")
    advance = runs.astype(np.int64) + is_literal
    if int(advance.sum()) > n:
        raise ValueError(f"the runs cover {int(advance.sum())} symbols, the tensor has {n}")
    out = np.full(n, value, dtype=np.int64)
    out[np.cumsum(advance)[is_literal] - 1] = literals
    return out


def _candidates(values: np.ndarray) -> list[tuple[int, str, dict, list]]:
    """(estimated bytes, transform, fields, [(symbols, alphabet)]) for every representation that fits."""
    found = []
    for transform, v in (("plain", values), ("delta", np.diff(values, prepend=0))):
        lo = int(v.min())
        s = v - lo
        alphabet = int(s.max()) + 1
        if alphabet > MAX_ALPHABET:
            continue
        freqs = np.bincount(s, minlength=alphabet)
        offset = {"lo": lo} if lo else {}  # 0 by default: the header counts in the file size
        found.append((_stream_bytes(freqs, huffman_lengths(freqs), len(s)), transform, offset, [(s, alphabet)]))
        if transform == "plain":
            value = int(freqs.argmax())
            runs, literals = _runs(s, value)
            run_freqs = np.bincount(runs, minlength=RUN_ESCAPE + 1)
            run_alphabet = int(runs.max()) + 1 if len(runs) else 1
            lit_freqs = np.bincount(literals, minlength=alphabet)
            size = (_stream_bytes(run_freqs[:run_alphabet], huffman_lengths(run_freqs[:run_alphabet]), len(runs))
                    + _stream_bytes(lit_freqs, huffman_lengths(lit_freqs), len(literals)))
            found.append((size, "runs", {**offset, "run": value}, [(runs, run_alphabet), (literals, alphabet)]))
    return found


def _as_values(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).to(torch.int64).numpy()


def encode_tensor(t: torch.Tensor, packed_bits: int | None = None,
                  codes_per_row: int | None = None) -> tuple[dict, bytes]:
    """The description and bytes of integer tensor t, in its smallest representation. packed_bits /
    codes_per_row: t is uint8 [rows, bytes] of `packed_bits`-bit codes, `codes_per_row` a row (lowbit layout)."""
    if t.dtype not in INT_DTYPES.values():
        raise TypeError(f"encode_tensor: expected an integer tensor ({list(INT_DTYPES)}), got {t.dtype}")
    entry = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    if not t.numel():
        return {**entry, "t": "empty"}, b""
    raw = t.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
    sources = [({}, _as_values(t))]  # (fields, values) of each way to see the tensor as symbols
    if packed_bits is not None and t.dim() == 2:
        codes = lowbit.unpack_codes(t.detach().cpu(), packed_bits, codes_per_row)
        if torch.equal(lowbit.pack_codes(codes, packed_bits), t.detach().cpu()):  # padding bits clear: lossless
            sources.append(({"packed": [packed_bits, codes_per_row]}, _as_values(codes)))
    best = (len(raw), "raw", {"n": len(raw)}, [])
    for fields, values in sources:
        if int(values.min()) == int(values.max()):
            return {**entry, **fields, "t": "const", "v": int(values[0])}, b""
        for size, transform, extra, streams in _candidates(values):
            if size < best[0]:
                best = (size, transform, {**fields, **extra}, streams)
    _, transform, fields, streams = best
    if transform == "raw":
        return {**entry, "t": "raw", **fields}, raw
    descs, parts = [], []
    for symbols, alphabet in streams:
        desc, data = encode_stream(symbols, alphabet)
        descs.append(desc)
        parts.append(data)
    return {**entry, **fields, "t": transform, "s": descs}, b"".join(parts)


def decode_tensor(entry: dict, blob: np.ndarray, offset: int, dtype: torch.dtype,
                  shape: tuple) -> tuple[torch.Tensor, int]:
    """The tensor described by `entry` (from encode_tensor) at blob[offset:] -> (tensor, next offset). The
    caller has checked that entry's dtype and shape are `dtype` and `shape` (the model's)."""
    numel = math.prod(shape)
    transform = entry.get("t")
    if transform == "raw":
        nbytes = _check_int(entry.get("n"), "raw size", 0, len(blob) - offset)
        if nbytes != numel * dtype.itemsize:
            raise ValueError(f"raw data of {nbytes} bytes for {numel} {dtype} values")
        data = blob[offset:offset + nbytes].copy()
        return torch.from_numpy(data).view(dtype).reshape(shape), offset + nbytes
    packed = entry.get("packed")
    count, out_shape = numel, shape
    if packed is not None:
        if not (isinstance(packed, list) and len(packed) == 2 and packed[0] in lowbit.CODE_BITS and len(shape) == 2
                and isinstance(packed[1], int) and lowbit.packed_row_bytes(packed[1], packed[0]) == shape[1]
                and packed[1] > 0):
            raise ValueError(f"packed codes {packed!r} do not fit a packed tensor of shape {list(shape)}")
        count, out_shape = shape[0] * packed[1], (shape[0], packed[1])
    target = torch.uint8 if packed is not None else dtype
    low, high = (0, (1 << packed[0]) - 1) if packed is not None else (
        (0, 1) if target == torch.bool else (torch.iinfo(target).min, torch.iinfo(target).max))
    lo = _check_int(entry.get("lo", 0), "offset", -(1 << 62), 1 << 62)
    if transform == "empty":
        if count:
            raise ValueError(f"marked empty but has {count} values")
        values = np.zeros(0, dtype=np.int64)
    elif transform == "const":
        values = np.full(count, _check_int(entry.get("v"), "constant", low, high), dtype=np.int64)
    elif transform in ("plain", "delta", "runs"):
        descs = entry.get("s")
        if not isinstance(descs, list) or len(descs) != (2 if transform == "runs" else 1):
            raise ValueError(f"{transform} coding with streams {descs!r}")
        if transform == "runs":
            runs, offset = decode_stream(descs[0], blob, offset, count + count // RUN_ESCAPE + 1)
            literals, offset = decode_stream(descs[1], blob, offset, count)
            run_value = _check_int(entry.get("run"), "run value", 0, MAX_ALPHABET)
            values = _unruns(runs, literals.astype(np.int64), run_value, count) + lo
        else:
            symbols, offset = decode_stream(descs[0], blob, offset, count)
            if len(symbols) != count:
                raise ValueError(f"{len(symbols)} symbols for {count} values")
            values = symbols.astype(np.int64) + lo
            if transform == "delta":
                values = np.cumsum(values)
    else:
        raise ValueError(f"unknown coding {transform!r}")
    if len(values) and (int(values.min()) < low or int(values.max()) > high):
        raise ValueError(f"decoded values [{int(values.min())}, {int(values.max())}] do not fit "
                         f"{'%d-bit codes' % packed[0] if packed is not None else dtype}")
    result = torch.from_numpy(values).to(target).reshape(out_shape)
    if packed is not None:
        result = lowbit.pack_codes(result, packed[0])
    return result, offset


def packed_code_layouts(module) -> dict[str, tuple[int, int]]:
    """{buffer name: (code bits, codes per row)} of the sub-byte packed code buffers of a compressed module
    (QuantLinear w4a16 / codebook qweight, SparseLinear N:M indices), which coding as codes may shrink."""
    from ..nn import QuantLinear, SparseLinear
    from ..quant import sparse as layout

    if isinstance(module, QuantLinear) and module.bits is not None:
        return {"qweight": (module.bits, module.in_features)}
    if isinstance(module, QuantLinear) and module.mode in ("w4a16", "w4a8"):
        return {"qweight": (4, module.in_features)}
    if isinstance(module, SparseLinear) and module.format in ("2:4", "4:8"):
        m = 4 if module.format == "2:4" else 8
        return {"indices": (layout.nm_bits(m), module.in_features // 2)}
    return {}
