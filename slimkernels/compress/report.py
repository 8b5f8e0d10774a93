"""What a pass did, layer by layer: converted or skipped (with the reason), bytes before and after."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what a checkpoint stores)."""
    seen, total = set(), 0
    for t in module.state_dict().values():
        if t.numel() and t.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


@dataclass
class LayerRecord:
    name: str
    kind: str
    action: str  # "converted" | "skipped"
    detail: str  # the mode, or why it was skipped
    bytes_before: int
    bytes_after: int
    seconds: float = 0.0  # wall time of the layer's conversion (the handler's call), 0.0 when skipped early


@dataclass
class CompressionReport:
    method: str
    layers: list[LayerRecord] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    note: str = ""  # why nothing was converted, when nothing was (the pass also warns it)

    @property
    def converted(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.action == "converted"]

    @property
    def skipped(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.action == "skipped"]

    @property
    def compression_ratio(self) -> float:
        return self.model_bytes_before / self.model_bytes_after if self.model_bytes_after else float("nan")

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "model_bytes_before": self.model_bytes_before,
            "model_bytes_after": self.model_bytes_after,
            "note": self.note,
            "layers": [vars(r) for r in self.layers],
        }

    def __str__(self) -> str:
        lines = [
            f"{self.method}: {len(self.converted)} layers converted, {len(self.skipped)} skipped; "
            f"model {self.model_bytes_before / 1e6:.2f} MB -> {self.model_bytes_after / 1e6:.2f} MB "
            f"({self.compression_ratio:.2f}x smaller)"
        ]
        if self.note:
            lines.append(f"  {self.note}")
        width = max([len(r.name) for r in self.layers] + [5])
        for r in self.layers:
            lines.append(f"  {r.name:<{width}}  {r.action:<9}  {r.detail:<24} {r.bytes_before:>12,} -> {r.bytes_after:>12,} B"
                         f"  {r.seconds:8.3f} s")
        return "\n".join(lines)
