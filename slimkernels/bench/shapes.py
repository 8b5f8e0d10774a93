"""The problem sizes every suite runs: (N, K) of y = x @ W.T with W [N, K], and the M (rows of x)."""
from __future__ import annotations

import os
from typing import Optional

# (N, K) from real models: Llama-2/3 7B/8B (attention, MLP up/gate, MLP down), a Llama-70B layer,
# and BERT-base / MiniLM (attention and MLP).
LLAMA_NK = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]
LLAMA70_NK = [(8192, 8192), (28672, 8192)]
BERT_NK = [(768, 768), (3072, 768), (768, 3072), (384, 384), (1536, 384)]
FULL_NK = LLAMA_NK + LLAMA70_NK + BERT_NK
SMALL_NK = [(4096, 4096), (11008, 4096), (768, 768), (3072, 768)]
SHAPE_SETS = {"small": SMALL_NK, "full": FULL_NK}

CPU_M = (1, 8, 32, 128, 512)
GPU_M = (1, 4, 16, 32, 64, 128, 512, 2048, 8192)
CPU_M_QUICK = (1, 32)
GPU_M_QUICK = (1, 16, 128, 2048)

ENV_SHAPES = "SLIMKERNELS_BENCH_SHAPES"  # small | full | NxK list
ENV_M = "SLIMKERNELS_BENCH_M"  # e.g. "1,8,32"


def default_shapes(device: str) -> str:
    """The short list on CPU (2 cores, minutes per shape), every listed shape on GPU."""
    return os.environ.get(ENV_SHAPES) or ("small" if device == "cpu" else "full")


def shape_list(shapes: str) -> list[tuple[int, int]]:
    """'small', 'full', or an explicit list '4096x4096,768x3072' -> [(N, K), ...]."""
    if shapes in SHAPE_SETS:
        return list(SHAPE_SETS[shapes])
    out = []
    for item in shapes.split(","):
        try:
            n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: expected small, full or a list like 4096x4096,768x3072; got {shapes!r}") from None
        if n < 1 or k < 1:
            raise ValueError(f"--shapes: N and K must be >= 1, got {item!r}")
        out.append((n, k))
    return out


def m_list(device: str, quick: bool = False, override: Optional[str] = None) -> list[int]:
    override = override or os.environ.get(ENV_M)
    if override:
        try:
            ms = [int(v) for v in override.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--m: expected a comma-separated list of integers, got {override!r}") from None
        if not ms or min(ms) < 1:
            raise ValueError(f"--m: every M must be >= 1, got {override!r}")
        return ms
    if device == "cpu":
        return list(CPU_M_QUICK if quick else CPU_M)
    return list(GPU_M_QUICK if quick else GPU_M)
