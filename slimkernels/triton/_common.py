"""What the Triton kernel modules share: the guarded triton import, autotuning (M buckets, configs,
pruning), the split-K policy, launch plumbing, and ``@triton.jit`` building blocks for the tiled
GEMMs of ``int8_mm``, ``dequant_int8`` and ``lowbit`` (tile order, the K loop of one output
tile, the dequantizing and bias-only epilogues, interpreter-only bfloat16 handling) plus their
shared split-K reduction kernel.

``slimkernels.triton`` itself never imports this module (it would import triton); the kernel
modules do. Without triton it still imports: ``HAVE_TRITON`` is False, ``triton`` and ``tl`` are
None, no kernel is defined, and :func:`require_triton` raises.

Under the interpreter (``TRITON_INTERPRET=1``) bfloat16 tensors are numpy uint16 bit patterns: its
casts from bfloat16 mangle subnormals, its float32 -> bfloat16 cast truncates, and its ``tl.dot``
would multiply the bit patterns. Launchers set ``BF16_MANUAL`` (:func:`bf16_manual`) there, and the
helpers below then move the bits by hand (exact), as the GPU's native casts do.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from . import SPLIT_K, interpreting, unavailable_reason

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAVE_TRITON = False

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT32_LIMIT = 2**31 - 1

#: Autotune key of the GEMM kernels (tensor dtypes are part of the key automatically).
AUTOTUNE_KEY = ["M_BUCKET", "N", "K"]
#: Tile of the split-K reduction / epilogue kernel, and its warps.
EPILOGUE_BLOCK_M, EPILOGUE_BLOCK_N, EPILOGUE_WARPS = 16, 128, 4
#: Launch option that switches FMA contraction off, so a float epilogue matches the same
#: expression evaluated in torch bit for bit.
NO_FP_FUSION = {"enable_fp_fusion": False}


# ---------------------------------------------------------------------------------------------
# Launcher plumbing
# ---------------------------------------------------------------------------------------------

def require_triton(what: str) -> None:
    """Raise ``RuntimeError`` naming ``slimkernels.triton.<what>`` when triton is not importable."""
    if not HAVE_TRITON:
        raise RuntimeError(f"slimkernels.triton.{what}: {unavailable_reason()}")


def require_float(x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")


def needs_int64_index(*sizes: int) -> bool:
    """True when an element offset up to ``max(sizes)`` does not fit int32 index arithmetic."""
    return max(sizes) > INT32_LIMIT


def bf16_manual(dtype: torch.dtype) -> bool:
    """The ``BF16_MANUAL`` flag: bfloat16 handled on the bits, which only the interpreter needs."""
    return dtype == torch.bfloat16 and interpreting()


def launch_device(t: torch.Tensor):
    """Context manager making ``t``'s CUDA device current for a launch (a no-op otherwise)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device.index)
    return contextlib.nullcontext()


def tile_grid(M: int, N: int, split_k: bool = False, chosen_split_k: list | None = None):
    """Launch grid over (BLOCK_M, BLOCK_N) output tiles, times ``SPLIT_K`` along axis 1 with
    ``split_k``. ``chosen_split_k`` collects the SPLIT_K of every call: the last one is the real
    launch with the chosen config (earlier ones, if any, are autotuning runs)."""
    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        if not split_k:
            return (tiles,)
        if chosen_split_k is not None:
            chosen_split_k.append(meta["SPLIT_K"])
        return (tiles, meta["SPLIT_K"])

    return grid


def reduce_splitk(ws: torch.Tensor, out: torch.Tensor, split_k: int, col_scale: torch.Tensor | None,
                  row_scale=None, bias=None, int64_idx: bool = False, **opts) -> torch.Tensor:
    """Launch :func:`_splitk_reduce_kernel`: ``out = epilogue(ws[0] + ... + ws[split_k - 1])``.

    ``ws`` is [S, M, N] (S >= split_k) or, for ``split_k == 1``, the [M, N] accumulator itself.
    ``col_scale`` None: bias only (kernels that dequantize inside the K loop); then there is no
    row scale either.
    """
    M, N = out.shape
    slice_stride = ws.stride(0) if ws.dim() == 3 else 0
    bm, bn = EPILOGUE_BLOCK_M, EPILOGUE_BLOCK_N
    # Unused pointer arguments get a valid tensor (the column scales, else the workspace) as a
    # placeholder.
    spare = col_scale if col_scale is not None else ws
    _splitk_reduce_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        ws, out, row_scale if row_scale is not None else spare, spare,
        bias if bias is not None else spare,
        M, N, slice_stride, ws.stride(-2), out.stride(0), out.stride(1),
        SPLIT_K=split_k, HAS_COL_SCALE=col_scale is not None, HAS_ROW_SCALE=row_scale is not None,
        HAS_BIAS=bias is not None,
        INT64_IDX=int64_idx, BF16_MANUAL=bf16_manual(out.dtype),
        BLOCK_M=bm, BLOCK_N=bn, num_warps=EPILOGUE_WARPS, **opts,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Autotuning: M buckets, configs, pruning
# ---------------------------------------------------------------------------------------------

def m_bucket(m: int) -> int:
    """Autotune key for M: powers of two from 16 to 8192 (tuning per exact M would never end)."""
    b = 16
    while b < m and b < 8192:
        b *= 2
    return b


def _config(bm, bn, bk, gm, warps, stages, **extra):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm, **extra},
        num_warps=warps,
        num_stages=stages,
    )


def tile_configs(tiles, split_k: bool = False, interpreter_tile=None):
    """``triton.Config`` s from rows ``(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)``
    (plus ``SPLIT_K`` last with ``split_k``). Under the interpreter one small config instead
    (``interpreter_tile``, a row, when given): no benchmarking, and several tiles (and K steps) on
    small test shapes."""
    if interpreting():
        if interpreter_tile is not None:
            tiles = [interpreter_tile]
        else:
            tiles = [(16, 32, 32, 1, 4, 1, 2)] if split_k else [(16, 32, 32, 2, 4, 1)]
    if split_k:
        return [_config(*t[:6], SPLIT_K=t[6]) for t in tiles]
    return [_config(*t) for t in tiles]


# Which BLOCK_M values are worth timing for each M bucket (the rest are pruned before timing).
_BLOCK_M_FOR_BUCKET = {16: (16,), 32: (16, 32), 64: (32, 64), 128: (64, 128)}


def _block_m_for_bucket(bucket: int):
    if bucket in _BLOCK_M_FOR_BUCKET:
        return _BLOCK_M_FOR_BUCKET[bucket]
    return (64, 128) if bucket < 2048 else (128, 256)


@functools.lru_cache(maxsize=None)
def _max_shared_mem() -> int:
    try:
        dev = torch.cuda.current_device()
        return int(triton.runtime.driver.active.utils.get_device_properties(dev)["max_shared_mem"])
    except Exception:
        return 0  # unknown: let the compiler reject what does not fit


def config_pruner(a_arg: str, a_bytes_default: int = 1, b_converted: bool = False):
    """An ``early_config_prune`` for a GEMM of ``a`` [M, K] (kernel argument ``a_arg``) by an int8
    ``b`` [N, K]: keeps the BLOCK_M values worth timing for the M bucket, and the configs whose
    pipelined tiles fit in shared memory. Per stage that is a's tile in a's dtype (element size
    ``a_bytes_default`` when the argument does not say) plus b's int8 tile; with ``b_converted``,
    plus once b's tile converted to a's dtype (counted to stay on the safe side)."""
    def prune(configs, named_args, **kwargs):
        allowed_m = _block_m_for_bucket(int(named_args.get("M_BUCKET", 16)))
        a = named_args.get(a_arg)
        a_bytes = a.element_size() if hasattr(a, "element_size") else a_bytes_default
        smem = _max_shared_mem()
        kept = []
        for c in configs:
            bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            if bm not in allowed_m:
                continue
            need = (bm * bk * a_bytes + bn * bk) * c.num_stages
            if b_converted:
                need += bn * bk * a_bytes
            if smem and need > smem:
                continue
            kept.append(c)
        return kept or list(configs)

    return prune


# ---------------------------------------------------------------------------------------------
# Split-K policy
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def use_split_k(M: int, N: int, K: int, device: torch.device) -> bool:
    """Split K only where the plain kernel cannot fill the GPU: few rows (M <= 16) and even the
    narrowest N tiles (32 wide) give fewer CTAs than there are SMs, with enough K to share out.
    The switch ``slimkernels.triton.set_split_k`` / ``use_split_k``: "auto" (this heuristic),
    "always" (whenever M <= 16) or "never". Not yet tuned on hardware: benchmark against "never"."""
    policy = SPLIT_K.get()
    if M > 16 or policy == "never":
        return False
    if policy == "always":
        return True
    if device.type != "cuda":
        return False
    return K >= 1024 and triton.cdiv(N, 32) < _sm_count(device.index or 0)


# ---------------------------------------------------------------------------------------------
# Kernel building blocks
# ---------------------------------------------------------------------------------------------

if HAVE_TRITON:

    def _even_k(args):
        return args["K"] % args["BLOCK_K"] == 0

    #: Decorator: the ``EVEN_K`` constexpr (no K-tail masks) from K and BLOCK_K.
    even_k_heuristic = triton.heuristics({"EVEN_K": _even_k})

    @triton.jit
    def widen(offs, INT64_IDX: tl.constexpr):
        # Offsets to int64 when element offsets may pass 2**31 - 1 (see needs_int64_index).
        if INT64_IDX:
            offs = offs.to(tl.int64)
        return offs

    @triton.jit
    def tile_offsets(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUP_M: tl.constexpr):
        # Row and column offsets of output tile `pid`. With GROUP_M > 1 the tile order is grouped
        # ("swizzled"): GROUP_M tile-rows share each b tile while it is in L2. GROUP_M == 1 is
        # plain row-major order.
        num_pid_n = tl.cdiv(N, BLOCK_N)
        if GROUP_M == 1:
            pid_m = pid // num_pid_n
            pid_n = pid % num_pid_n
        else:
            num_pid_m = tl.cdiv(M, BLOCK_M)
            num_pid_in_group = GROUP_M * num_pid_n
            group_id = pid // num_pid_in_group
            first_pid_m = group_id * GROUP_M
            group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
            pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
            pid_n = (pid % num_pid_in_group) // group_size_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        return offs_m, offs_n

    @triton.jit
    def load_maybe_bf16(ptrs, mask, MASKED: tl.constexpr, BF16_MANUAL: tl.constexpr):
        # tl.load (0 where masked); with BF16_MANUAL (interpreter only), bfloat16 -> float32 by
        # moving the bits up: exact, subnormals included.
        if BF16_MANUAL:
            bptrs = ptrs.to(tl.pointer_type(tl.uint16))
            if MASKED:
                bits = tl.load(bptrs, mask=mask, other=0)
            else:
                bits = tl.load(bptrs)
            x = (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            if MASKED:
                x = tl.load(ptrs, mask=mask, other=0.0)
            else:
                x = tl.load(ptrs)
        return x

    @triton.jit
    def to_bf16_rne(x):
        # float32 -> bfloat16, round to nearest even, by integer arithmetic on the bits. Used only
        # under the interpreter, whose own float32 -> bfloat16 cast truncates; on the GPU the
        # native cast (cvt.rn) is already round-to-nearest-even.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        hi = (rounded >> 16).to(tl.uint16)
        qnan = ((bits >> 16) | 0x40).to(tl.uint16)
        hi = tl.where(x != x, qnan, hi)
        return hi.to(tl.bfloat16, bitcast=True)

    @triton.jit
    def tile_product(a_ptr, b_ptr, pid, k_first, k_step, M, N, K,
                     stride_am, stride_ak, stride_bn, stride_bk, ACC_TYPE: tl.constexpr,
                     INT64_IDX: tl.constexpr, EVEN_K: tl.constexpr, BF16_MANUAL: tl.constexpr,
                     DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # The (BLOCK_M, BLOCK_N) tile `pid` of a [M, K] @ b[N, K].T, summed in ACC_TYPE over the K
        # blocks kb = k_first, k_first + k_step, ... (split-K programs stride by k_step). Returns
        # it with its row and column offsets (int64 with INT64_IDX) for the caller's store.
        offs_m, offs_n = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        # Rows/columns past the edge wrap onto valid ones: loads stay in bounds without masks,
        # and those results are never stored. Masks only in the K tail.
        offs_am = widen(offs_m % M, INT64_IDX)
        offs_bn = widen(offs_n % N, INT64_IDX)
        offs_k = tl.arange(0, BLOCK_K)
        offs_k0 = k_first * BLOCK_K + offs_k
        a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k0[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k0[:, None] * stride_bk + offs_bn[None, :] * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
        for kb in range(k_first, tl.cdiv(K, BLOCK_K), k_step):
            if EVEN_K:
                a = load_maybe_bf16(a_ptrs, None, False, BF16_MANUAL)
                b = tl.load(b_ptrs)
            else:
                k_left = K - kb * BLOCK_K
                a = load_maybe_bf16(a_ptrs, offs_k[None, :] < k_left, True, BF16_MANUAL)
                b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
            # b (int8) to a's dtype: exact (|b| <= 128 fits every float format's mantissa), and a
            # no-op for int8 a, whose dot accumulates exactly in int32 (mod 2**32).
            acc = tl.dot(a, b.to(a.dtype), acc, input_precision=DOT_PREC, out_dtype=ACC_TYPE)
            a_ptrs += k_step * BLOCK_K * stride_ak
            b_ptrs += k_step * BLOCK_K * stride_bk
        return acc, widen(offs_m, INT64_IDX), widen(offs_n, INT64_IDX)

    @triton.jit
    def store_tile(out_ptr, val, offs_m, offs_n, M, N, stride_om, stride_on):
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, val,
                 mask=mask)

    @triton.jit
    def dequant_epilogue_store(acc, out_ptr, row_scale_ptr, col_scale_ptr, bias_ptr, offs_m,
                               offs_n, M, N, stride_om, stride_on, HAS_ROW_SCALE: tl.constexpr,
                               HAS_BIAS: tl.constexpr, BF16_MANUAL: tl.constexpr):
        # out[m, n] = ((float(acc[m, n]) * row_scale[m]) * col_scale[n]) + float(bias[n]), in
        # float32 in this order, then cast to out's dtype.
        out = acc.to(tl.float32)
        if HAS_ROW_SCALE:
            out = out * tl.load(row_scale_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
        out = out * tl.load(col_scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
        bias_epilogue_store(out, out_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                            HAS_BIAS, BF16_MANUAL)

    @triton.jit
    def bias_epilogue_store(acc, out_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                            HAS_BIAS: tl.constexpr, BF16_MANUAL: tl.constexpr):
        # out[m, n] = float(acc[m, n]) + float(bias[n]) in float32, then cast to out's dtype.
        out = acc.to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            out = out + bias[None, :]
        if BF16_MANUAL:
            out = to_bf16_rne(out)
        else:
            out = out.to(out_ptr.dtype.element_ty)
        store_tile(out_ptr, out, offs_m, offs_n, M, N, stride_om, stride_on)

    @triton.jit
    def _splitk_reduce_kernel(
        ws_ptr, out_ptr, rs_ptr, cs_ptr, bias_ptr,
        M, N, stride_ws_s, stride_ws_m, stride_om, stride_on,
        SPLIT_K: tl.constexpr, HAS_COL_SCALE: tl.constexpr, HAS_ROW_SCALE: tl.constexpr,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # out = epilogue(ws[0] + ws[1] + ... + ws[SPLIT_K - 1]), summed in this fixed order
        # (rows of each slice contiguous). Without HAS_COL_SCALE the epilogue only adds the bias.
        offs_m = widen(tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), INT64_IDX)
        offs_n = widen(tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N), INT64_IDX)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        ptrs = ws_ptr + offs_m[:, None] * stride_ws_m + offs_n[None, :]
        acc = tl.load(ptrs, mask=mask, other=0)
        for s in tl.static_range(1, SPLIT_K):
            acc += tl.load(ptrs + s * stride_ws_s, mask=mask, other=0)
        if HAS_COL_SCALE:
            dequant_epilogue_store(acc, out_ptr, rs_ptr, cs_ptr, bias_ptr, offs_m, offs_n, M, N,
                                   stride_om, stride_on, HAS_ROW_SCALE, HAS_BIAS, BF16_MANUAL)
        else:
            bias_epilogue_store(acc, out_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                                HAS_BIAS, BF16_MANUAL)
