"""Small helpers the implementations share: dtype names for the native bindings, pointers, threads."""
from typing import Optional

import torch
import torch.nn.functional as F

from . import CPU_AMX, CPU_ISA

KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int32: "int32"}


def pad_k(a: torch.Tensor, kp: int) -> torch.Tensor:
    """Zero-pad the reduction dim to kp (zeros add nothing to a dot product)."""
    return a if a.shape[1] == kp else F.pad(a, (0, kp - a.shape[1]))


def f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def threads() -> int:
    """CPU threads follow torch.get_num_threads()."""
    return max(1, torch.get_num_threads())


def cpu_isa() -> str:
    """The forced CPU ISA for the native bindings ("" = the best this CPU has)."""
    return CPU_ISA.get() or ""


def cpu_amx() -> str:
    return CPU_AMX.get()


def cuda_stream(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def linear_f32(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x @ w.T + bias in float32, returned in x.dtype: the arithmetic of the weight-format references
    (w is the format's dequantized float32 weight)."""
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
