"""Packed weight layouts. Pure torch: this file is the spec of every layout a kernel reads.

CPU int8 layout (``pack_int8_cpu``), read by csrc/cpu/int8_mm*.cpp. For b of shape [N, K]:
  Np = N rounded up to 16, Kp = K rounded up to 4.
  bytes [0, Np*Kp): panels of 16 output channels; inside a panel, groups of 4 consecutive k;
    byte ((nb * (Kp/4) + kg) * 16 + c) * 4 + j  holds  b[nb*16 + c, kg*4 + j]  (0 past N or K).
    A 64-byte group is one VNNI operand: 16 int32 lanes, each the dot of 4 k.
  bytes [Np*Kp, Np*Kp + 4*Np): int32 (little endian) column sums sum_k b[n, k], 0 for padding.
    Kernels that feed unsigned activations (a + 128) subtract 128 * colsum[n].
The packed tensor is one flat int8 tensor so that it is a single buffer for modules and ops.
"""
from __future__ import annotations

import torch

CPU_PANEL = 16  # output channels per panel
CPU_KGROUP = 4  # consecutive k per 32-bit lane


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def int8_cpu_packed_numel(n: int, k: int) -> int:
    np_, kp = _round_up(n, CPU_PANEL), _round_up(k, CPU_KGROUP)
    return np_ * kp + 4 * np_


def pack_int8_cpu(b: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 -> flat int8 tensor in the CPU layout described above."""
    if b.dtype != torch.int8 or b.dim() != 2:
        raise TypeError(f"pack_int8_cpu: expected a 2-D int8 tensor, got {b.dtype} of shape {tuple(b.shape)}")
    n, k = b.shape
    np_, kp = _round_up(n, CPU_PANEL), _round_up(k, CPU_KGROUP)
    padded = torch.zeros(np_, kp, dtype=torch.int8, device=b.device)
    padded[:n, :k] = b
    panels = padded.view(np_ // CPU_PANEL, CPU_PANEL, kp // CPU_KGROUP, CPU_KGROUP).permute(0, 2, 1, 3)
    colsum = padded.to(torch.int32).sum(dim=1, dtype=torch.int32)
    return torch.cat([panels.reshape(-1), colsum.view(torch.int8)])


def unpack_int8_cpu(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of pack_int8_cpu: flat packed tensor -> [N, K] int8."""
    expected = int8_cpu_packed_numel(n, k)
    if packed.dtype != torch.int8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed int8 CPU weight for N={n}, K={k} must be a flat int8 tensor of {expected} elements, "
            f"got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    np_, kp = _round_up(n, CPU_PANEL), _round_up(k, CPU_KGROUP)
    panels = packed[: np_ * kp].view(np_ // CPU_PANEL, kp // CPU_KGROUP, CPU_PANEL, CPU_KGROUP)
    return panels.permute(0, 2, 1, 3).reshape(np_, kp)[:n, :k].contiguous()


# Plain int8 layout (every device but the CPU): [N, Kp] row-major with K zero-padded to a multiple
# of 16, so that GPU kernels can use 16-byte loads on every weight row. The padding contributes 0.
PLAIN_KALIGN = 16


def pack_int8_plain(b: torch.Tensor) -> torch.Tensor:
    n, k = b.shape
    kp = _round_up(k, PLAIN_KALIGN)
    if kp == k:
        return b.clone(memory_format=torch.contiguous_format)  # never alias: ops return new tensors
    out = torch.zeros(n, kp, dtype=torch.int8, device=b.device)
    out[:, :k] = b
    return out


def pack_int8(b: torch.Tensor) -> torch.Tensor:
    """The packed layout for b's device. It depends on the device only, not on which
    implementation runs, so a module packed once works under every backend the switch selects."""
    return pack_int8_cpu(b) if b.device.type == "cpu" else pack_int8_plain(b)


def int8_packed_shape(device_type: str, n: int, k: int) -> tuple[int, ...]:
    """Shape of int8_prepack's output for a weight [n, k] on a device of this type."""
    if device_type == "cpu":
        return (int8_cpu_packed_numel(n, k),)
    return (n, _round_up(k, PLAIN_KALIGN))


def unpack_int8(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Any device's packed int8 weight -> [N, K] int8 (the layout is a function of the device)."""
    if packed.device.type == "cpu":
        return unpack_int8_cpu(packed, n, k)
    return packed[:, :k]
