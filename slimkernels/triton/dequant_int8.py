"""W8A16: fused dequantize-matmul in Triton, ``out = x @ (qweight * scales[:, None]).T + bias``.

x float16/bfloat16/float32 [M, K], qweight int8 [N, K] (row-major, the linear layer's weight as
stored), scales float32 [N] (one per output channel), bias [N] (any float dtype) or None; the result
is [M, N] in x.dtype.

Each program loads an int8 weight tile, converts it to x's dtype (every int8 value is exact in
float16 and bfloat16) and feeds it to ``tl.dot`` with the activation tile and a float32 accumulator
(float32 x: ``input_precision="ieee"``, no TF32). The scale is per output channel, so it factors
out of the K sum: the accumulator is multiplied by ``scales[n]`` once, in the epilogue, then the bias
is added (float32) and the result cast to x.dtype.

Two GPU paths, one contract:

* ``_dequant_mm_int8_kernel``: one program per (BLOCK_M, BLOCK_N) output tile, grouped tile order,
  epilogue fused. Autotuned per (M bucket, N, K, dtypes).
* ``_dequant_mm_int8_splitk_kernel``: for decode (M <= 16) when N is too small to give every SM a
  tile, K is split over SPLIT_K programs. Each writes its float32 partial sum to its own slice of a
  [SPLIT_K, M, N] workspace (no atomics: float addition is not associative and atomics would make
  the result depend on timing); ``_dequant_splitk_reduce_kernel`` sums the slices in a fixed order
  and applies the epilogue, so results are deterministic. :data:`SPLIT_K_POLICY` forces or forbids it.

Under the interpreter (``TRITON_INTERPRET=1``) bfloat16 tensors are numpy uint16 bit patterns and
its ``tl.dot`` would multiply the bit patterns, so for bfloat16 x the interpreter path moves the
bits up to float32 (exact) and dots in float32 (each product of a bfloat16 and an int8 is exact in
float32, as on the GPU); the final float32 -> bfloat16 cast is done on the bits (the interpreter's
own cast truncates). On the GPU these flags are off and the native bfloat16 path runs.

Inputs are validated by the caller (2-D, dtypes, shapes, same device). Triton is imported here,
guarded, so importing this module never fails; the launcher raises ``RuntimeError`` without it.
"""

from __future__ import annotations

import functools

import torch

from . import interpreting, unavailable_reason

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _HAVE_TRITON = False

__all__ = ["dequant_mm_int8", "SPLIT_K_POLICY"]

#: "auto" (heuristic, see :func:`_use_split_k`), "always" (whenever M <= 16), or "never".
#: A tuning knob for benchmarks and tests, not a user-facing switch.
SPLIT_K_POLICY = "auto"

_FLOAT_IN = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1
#: Largest SPLIT_K among the split-K configs: the workspace is sized for it.
_MAX_SPLIT_K = 8


def _m_bucket(m: int) -> int:
    """Autotune key for M: powers of two from 16 to 8192 (tuning per exact M would never end)."""
    b = 16
    while b < m and b < 8192:
        b *= 2
    return b


# ---------------------------------------------------------------------------------------------
# Autotune configurations
# ---------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, gm, warps, stages, **extra):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm, **extra},
        num_warps=warps,
        num_stages=stages,
    )


def _gemm_configs():
    if interpreting():
        # One small config: no benchmarking, and several tiles (and K steps) on small test shapes.
        return [_cfg(16, 32, 32, 2, 4, 1)]
    return [
        # M <= 16 (decode): the time is reading the int8 weights (N*K bytes, half of bf16's), so
        # narrow N tiles give many CTAs to stream them and deep K tiles give few, long loads per
        # CTA with several stages in flight. BLOCK_N = 16 doubles the CTA count of 32 for N ~ 4096.
        _cfg(16, 16, 256, 1, 2, 4),
        _cfg(16, 16, 512, 1, 4, 3),
        _cfg(16, 32, 256, 1, 4, 4),
        _cfg(16, 32, 512, 1, 4, 3),
        _cfg(16, 64, 128, 1, 4, 4),
        _cfg(16, 64, 256, 1, 4, 3),
        _cfg(16, 128, 128, 1, 4, 4),
        # 17 <= M <= 128: still mostly weight bytes; taller tiles reuse each weight tile more.
        # Activation tiles are 16-bit here (twice int8's bytes), so K tiles are shallower than the
        # int8 GEMM's.
        _cfg(32, 64, 128, 8, 4, 4),
        _cfg(32, 128, 64, 8, 4, 4),
        _cfg(32, 128, 128, 8, 4, 3),
        _cfg(64, 64, 128, 8, 4, 4),
        _cfg(64, 128, 64, 8, 4, 4),
        _cfg(64, 128, 128, 8, 4, 3),
        _cfg(64, 256, 64, 8, 8, 3),
        # M >= 256 up to compute-bound M >= 2048: big tensor-core tiles, deep pipelines,
        # grouped tile order for L2 reuse of both operands.
        _cfg(128, 128, 64, 8, 4, 4),
        _cfg(128, 128, 64, 8, 8, 4),
        _cfg(128, 256, 64, 8, 8, 3),
        _cfg(256, 128, 64, 8, 8, 3),
        _cfg(128, 128, 32, 8, 4, 5),
    ]


def _splitk_configs():
    if interpreting():
        return [_cfg(16, 32, 32, 1, 4, 1, SPLIT_K=2)]
    return [
        _cfg(16, 32, 256, 1, 4, 4, SPLIT_K=2),
        _cfg(16, 32, 256, 1, 4, 4, SPLIT_K=4),
        _cfg(16, 64, 128, 1, 4, 4, SPLIT_K=4),
        _cfg(16, 64, 256, 1, 4, 3, SPLIT_K=4),
        _cfg(16, 64, 128, 1, 4, 4, SPLIT_K=8),
        _cfg(16, 128, 128, 1, 4, 4, SPLIT_K=8),
    ]


# Which BLOCK_M values are worth timing for each M bucket (the rest are pruned before timing).
_BLOCK_M_FOR_BUCKET = {16: (16,), 32: (16, 32), 64: (32, 64), 128: (64, 128)}


@functools.lru_cache(maxsize=None)
def _max_shared_mem() -> int:
    try:
        dev = torch.cuda.current_device()
        return int(triton.runtime.driver.active.utils.get_device_properties(dev)["max_shared_mem"])
    except Exception:
        return 0  # unknown: let the compiler reject what does not fit


def _prune_configs(configs, named_args, **kwargs):
    bucket = int(named_args.get("M_BUCKET", 16))
    if bucket in _BLOCK_M_FOR_BUCKET:
        allowed_m = _BLOCK_M_FOR_BUCKET[bucket]
    elif bucket < 2048:
        allowed_m = (64, 128)
    else:
        allowed_m = (128, 256)
    x = named_args.get("x_ptr")
    x_bytes = x.element_size() if hasattr(x, "element_size") else 2
    smem = _max_shared_mem()
    kept = []
    for c in configs:
        kw = c.kwargs
        if kw["BLOCK_M"] not in allowed_m:
            continue
        # Shared memory per stage: the activation tile in x's dtype plus the int8 weight tile
        # (plus, on some paths, its converted copy: counted as x's dtype to stay on the safe side).
        per_stage = kw["BLOCK_M"] * kw["BLOCK_K"] * x_bytes + kw["BLOCK_N"] * kw["BLOCK_K"]
        convert = kw["BLOCK_N"] * kw["BLOCK_K"] * x_bytes
        if smem and per_stage * c.num_stages + convert > smem:
            continue
        kept.append(c)
    return kept or list(configs)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

if _HAVE_TRITON:

    @triton.jit
    def _to_bf16_rne(x):
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
    def _load_x(ptrs, mask, MASKED: tl.constexpr, BF16_MANUAL: tl.constexpr):
        if BF16_MANUAL:
            # Interpreter only: bfloat16 -> float32 by moving the bits up (exact).
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
    def _mainloop(acc, x_ptrs, w_ptrs, K, k_first, k_step, stride_xk, stride_wk,
                  EVEN_K: tl.constexpr, BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
                  BLOCK_K: tl.constexpr):
        # acc += x[:, kb] @ float(w[kb, :]) over K blocks kb = k_first, k_first + k_step, ...
        # x_ptrs / w_ptrs point at block k_first. Masks only in the K tail (rows/columns past M/N
        # wrap onto valid ones in the caller, so their loads stay in bounds without masks).
        offs_k = tl.arange(0, BLOCK_K)
        for kb in range(k_first, tl.cdiv(K, BLOCK_K), k_step):
            if EVEN_K:
                x = _load_x(x_ptrs, None, False, BF16_MANUAL)
                w = tl.load(w_ptrs)
            else:
                k_left = K - kb * BLOCK_K
                x = _load_x(x_ptrs, offs_k[None, :] < k_left, True, BF16_MANUAL)
                w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
            # int8 -> x's dtype is exact (|w| <= 128 fits every float format's mantissa).
            acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PREC, out_dtype=tl.float32)
            x_ptrs += k_step * BLOCK_K * stride_xk
            w_ptrs += k_step * BLOCK_K * stride_wk
        return acc

    @triton.jit
    def _epilogue_store(acc, out_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                        HAS_BIAS: tl.constexpr, BF16_MANUAL: tl.constexpr):
        # out[m, n] = acc[m, n] * scales[n] + bias[n], in float32, then cast to out's dtype.
        mask_m = offs_m < M
        mask_n = offs_n < N
        s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0)
        out = acc * s[None, :]
        if HAS_BIAS:
            b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            out = out + b[None, :]
        if BF16_MANUAL:
            out = _to_bf16_rne(out)
        else:
            out = out.to(out_ptr.dtype.element_ty)
        o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, out, mask=mask_m[:, None] & mask_n[None, :])

    @triton.autotune(
        configs=_gemm_configs(),
        key=["M_BUCKET", "N", "K"],  # tensor dtypes are part of the key automatically
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def _dequant_mm_int8_kernel(
        x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        DOT_PREC: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M tile-rows share each weight tile while it is in L2.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Rows/columns past the edge wrap onto valid ones: loads stay in bounds without masks,
        # and those results are never stored.
        offs_xm = offs_m % M
        offs_wn = offs_n % N
        if INT64_IDX:
            offs_xm = offs_xm.to(tl.int64)
            offs_wn = offs_wn.to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_xm[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_wn[None, :] * stride_wn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _mainloop(acc, x_ptrs, w_ptrs, K, 0, 1, stride_xk, stride_wk,
                        EVEN_K, BF16_MANUAL, DOT_PREC, BLOCK_K)

        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        _epilogue_store(acc, out_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                        HAS_BIAS, BF16_MANUAL)

    @triton.autotune(configs=_splitk_configs(), key=["M_BUCKET", "N", "K"])
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def _dequant_mm_int8_splitk_kernel(
        x_ptr, w_ptr, ws_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_ws_s, stride_ws_m,
        INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
        EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        # ws[pid_k] = the unscaled float32 partial product over K blocks pid_k, pid_k + SPLIT_K,
        # ... (every element of slices 0..SPLIT_K-1 inside [M, N] is written, so no zeroing).
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        pid_m = pid // num_pid_n
        pid_n = pid % num_pid_n

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_xm = offs_m % M
        offs_wn = offs_n % N
        if INT64_IDX:
            offs_xm = offs_xm.to(tl.int64)
            offs_wn = offs_wn.to(tl.int64)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_xm[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_wn[None, :] * stride_wn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _mainloop(acc, x_ptrs, w_ptrs, K, pid_k, SPLIT_K, stride_xk, stride_wk,
                        EVEN_K, BF16_MANUAL, DOT_PREC, BLOCK_K)

        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        ws_ptrs = ws_ptr + pid_k * stride_ws_s + offs_m[:, None] * stride_ws_m + offs_n[None, :]
        tl.store(ws_ptrs, acc, mask=mask)

    @triton.jit
    def _dequant_splitk_reduce_kernel(
        ws_ptr, out_ptr, s_ptr, bias_ptr,
        M, N, stride_ws_s, stride_ws_m, stride_om, stride_on,
        SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr,
        BF16_MANUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # out = (ws[0] + ws[1] + ... + ws[SPLIT_K - 1]) * scales + bias, summed in this fixed order.
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        ptrs = ws_ptr + offs_m[:, None] * stride_ws_m + offs_n[None, :]
        acc = tl.load(ptrs, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLIT_K):
            acc += tl.load(ptrs + s * stride_ws_s, mask=mask, other=0.0)
        _epilogue_store(acc, out_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                        HAS_BIAS, BF16_MANUAL)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _use_split_k(M: int, N: int, K: int, device: torch.device) -> bool:
    """Split K only where the plain kernel cannot fill the GPU: few rows and even 32-wide N tiles
    give fewer CTAs than there are SMs, with enough K to share out.
    Not yet tuned on hardware: benchmark against SPLIT_K_POLICY = "never"."""
    if M > 16 or SPLIT_K_POLICY == "never":
        return False
    if SPLIT_K_POLICY == "always":
        return True
    if device.type != "cuda":
        return False
    return K >= 1024 and triton.cdiv(N, 32) < _sm_count(device.index or 0)


def _device_ctx(t: torch.Tensor):
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device.index)
    return _NullCtx()


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def dequant_mm_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (qweight * scales[:, None]).T + bias`` -> [M, N] in x.dtype.

    x float16/bfloat16/float32 [M, K] (any strides), qweight int8 [N, K] (any strides),
    scales float32 [N] contiguous, bias [N] contiguous float (any float dtype) or None.
    Accumulates in float32; the scale and bias are applied in float32 once per output element.
    """
    if not _HAVE_TRITON:
        raise RuntimeError(f"slimkernels.triton.dequant_mm_int8: {unavailable_reason()}")
    if x.dtype not in _FLOAT_IN:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    M, K = x.shape
    N = qweight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        # Empty sum: a zero accumulator through the same epilogue, no launch.
        res = torch.zeros((M, N), dtype=torch.float32, device=x.device) * scales[None, :]
        if bias is not None:
            res = res + bias.float()[None, :]
        return out.copy_(res)

    int64_idx = max(x.numel(), qweight.numel(), M * N * _MAX_SPLIT_K) > _INT32_LIMIT
    bucket = _m_bucket(M)
    bf16_manual = x.dtype == torch.bfloat16 and interpreting()
    # float32 x: exact float32 products (no TF32). 16-bit x: the precision flag does not apply.
    # (bfloat16 under the interpreter is dotted in float32: "ieee" too.)
    dot_prec = "ieee" if (x.dtype == torch.float32 or bf16_manual) else "tf32"
    has_bias = bias is not None
    bias_arg = bias if has_bias else scales  # placeholder pointer, never read
    with _device_ctx(x):
        if _use_split_k(M, N, K, x.device):
            ws = torch.empty((_MAX_SPLIT_K, M, N), dtype=torch.float32, device=x.device)
            chosen = []

            def grid_split(meta):
                # The last call is the real launch with the chosen config (earlier ones, if any,
                # are autotuning runs): remember its SPLIT_K for the reduction.
                chosen.append(meta["SPLIT_K"])
                return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),
                        meta["SPLIT_K"])

            _dequant_mm_int8_splitk_kernel[grid_split](
                x, qweight, ws, M, N, K, bucket,
                x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
                ws.stride(0), ws.stride(1),
                INT64_IDX=int64_idx, BF16_MANUAL=bf16_manual, DOT_PREC=dot_prec,
            )
            bm, bn = 16, 128
            _dequant_splitk_reduce_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
                ws, out, scales, bias_arg,
                M, N, ws.stride(0), ws.stride(1), out.stride(0), out.stride(1),
                SPLIT_K=chosen[-1], HAS_BIAS=has_bias, INT64_IDX=int64_idx,
                BF16_MANUAL=bf16_manual, BLOCK_M=bm, BLOCK_N=bn, num_warps=4,
            )
            return out

        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        _dequant_mm_int8_kernel[grid](
            x, qweight, scales, bias_arg, out,
            M, N, K, bucket,
            x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
            out.stride(0), out.stride(1),
            HAS_BIAS=has_bias, INT64_IDX=int64_idx, BF16_MANUAL=bf16_manual, DOT_PREC=dot_prec,
        )
    return out
