"""Canonical layouts of the low-bit weight formats (int4 group-wise, 2/3/4-bit codebooks).

These are what checkpoints store and what every op takes; a backend may repack them for its kernel
when a module is created or moved, never in a checkpoint. Pure torch: this file is the spec.

Codes (both formats). An [N, K] matrix of b-bit unsigned codes (b in {2, 3, 4}) is stored as uint8
[N, ceil(K * b / 8)]: each row is a little-endian bit stream, code k occupies bits
[k*b, k*b + b) of its row, where bit i of the row is bit (i % 8) of byte i // 8. Every row starts
on a byte boundary; padding bits at the end of a row are 0. For b = 4 this is "byte j holds k = 2j
in its low nibble and k = 2j + 1 in its high nibble"; for b = 2, byte j holds k = 4j .. 4j + 3 from
the low bits up.

int4 group-wise (dequant_mm_int4), group size g dividing K, G = K / g groups per row:
  qweight  uint8 [N, ceil(K / 2)]  4-bit codes q in 0..15
  scales   float32 [N, G]
  zeros    uint8 [N, G] with values in 0..15 (asymmetric), or None (symmetric: zero point 8)
  w[n, k] = (q[n, k] - z[n, k // g]) * s[n, k // g], evaluated in float32.

Codebook (lut_mm), 2^b entries, one codebook per layer (R = 1) or per output row (R = N):
  indices  uint8 [N, ceil(K * b / 8)]  b-bit codes
  codebook float32 [R, 2^b]
  w[n, k] = codebook[n if R == N else 0, idx[n, k]].
Every b-bit code indexes a 2^b-entry codebook, so an index can't be out of range once packed;
pack_codes refuses codes that don't fit in b bits.
"""
from __future__ import annotations

import torch

CODE_BITS = (2, 3, 4)
INT4_ZERO_SYMMETRIC = 8  # the zero point of symmetric int4 (codes 0..15 hold -8..7)


def packed_row_bytes(k: int, bits: int) -> int:
    return (k * bits + 7) // 8


def bits_from_codebook(entries: int) -> int:
    """Code width of a codebook with `entries` entries (4, 8 or 16); ValueError otherwise."""
    for bits in CODE_BITS:
        if entries == 1 << bits:
            return bits
    raise ValueError(f"a codebook must have 4, 8 or 16 entries (2-, 3- or 4-bit codes), got {entries}")


def _check_bits(bits: int) -> None:
    if bits not in CODE_BITS:
        raise ValueError(f"code width must be one of {CODE_BITS} bits, got {bits!r}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[N, K] integer codes in [0, 2^bits) -> uint8 [N, ceil(K * bits / 8)] (layout above)."""
    _check_bits(bits)
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"pack_codes: expected a 2-D integer tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    n, k = codes.shape
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"pack_codes: codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, got [{lo}, {hi}]")
    row_bytes = packed_row_bytes(k, bits)
    # Spread each code over its bits, pad the bit stream to whole bytes, then weigh bits into bytes.
    shifts = torch.arange(bits, device=codes.device)
    bitstream = ((codes.to(torch.int32)[..., None] >> shifts) & 1).reshape(n, k * bits)
    bitstream = torch.nn.functional.pad(bitstream, (0, row_bytes * 8 - k * bits))
    weights = (1 << torch.arange(8, device=codes.device, dtype=torch.int32))
    return (bitstream.view(n, row_bytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K * bits / 8)] -> uint8 [N, K] codes (inverse of pack_codes)."""
    _check_bits(bits)
    n = packed.shape[0]
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != packed_row_bytes(k, bits):
        raise ValueError(
            f"unpack_codes: expected uint8 [N, {packed_row_bytes(k, bits)}] for K={k} {bits}-bit codes, "
            f"got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    byte_bits = (packed[..., None].to(torch.int32) >> torch.arange(8, device=packed.device)) & 1
    bitstream = byte_bits.reshape(n, packed.shape[1] * 8)[:, : k * bits].reshape(n, k, bits)
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (bitstream * weights).sum(-1).to(torch.uint8)


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                    k: int) -> torch.Tensor:
    """Canonical int4 -> float32 [N, K]: (q - z) * s per group (z = 8 when zeros is None)."""
    q = unpack_codes(qweight, 4, k).to(torch.float32)
    z = torch.full_like(scales, INT4_ZERO_SYMMETRIC) if zeros is None else zeros.to(torch.float32)
    z = z.repeat_interleave(group_size, dim=1)
    s = scales.to(torch.float32).repeat_interleave(group_size, dim=1)
    return (q - z) * s


def dequantize_codebook(indices: torch.Tensor, codebook: torch.Tensor, k: int) -> torch.Tensor:
    """Canonical codebook weight -> float32 [N, K]."""
    bits = bits_from_codebook(codebook.shape[1])
    idx = unpack_codes(indices, bits, k).long()
    cb = codebook.to(torch.float32).expand(indices.shape[0], -1)
    return torch.gather(cb, 1, idx)
