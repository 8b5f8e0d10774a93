"""int8 x int8 -> int32 GEMM in Triton, with an optional fused dequantizing epilogue.

``out = a @ b.T`` for a int8 [M, K] and b int8 [N, K] (both row-major, so the weight of a linear
layer is used as stored). The accumulator is int32 and exact: ``tl.dot`` on int8 operands with an
int32 accumulator gives the int64 result taken mod 2**32 for every input in [-128, 127].

With a float ``out_dtype`` the epilogue computes, per element and in float32,
``((acc * a_scale[m]) * b_scale[n]) + bias[n]`` and then casts. FMA contraction is switched off for
these kernels (``enable_fp_fusion=False``) so the float32 result is bit-identical to the same
expression evaluated in torch. The float32 -> bfloat16 cast is round-to-nearest-even (native on the
GPU; done on the bits under the interpreter, whose own cast truncates).

Two GPU paths, one contract:

* ``_int8_gemm_kernel``: one program per (BLOCK_M, BLOCK_N) output tile, grouped ("swizzled")
  tile order for L2 reuse, epilogue fused. Autotuned per (M bucket, N, K, dtypes).
* ``_int8_gemm_splitk_kernel``: for small M (decode, M <= 16) and an N too small to give every SM a
  tile, K is split over SPLIT_K programs that ``atomic_add`` their int32 partial sums into a zeroed
  int32 buffer (integer addition is associative, so the result stays exact and deterministic); a
  small epilogue kernel then applies the scales. :data:`SPLIT_K_POLICY` forces or forbids it.

Inputs are validated by the caller (2-D, contiguous, dtypes, same device). Triton is imported here,
guarded, so importing this module never fails; the launchers raise ``RuntimeError`` without it.
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

__all__ = ["int8_gemm", "SPLIT_K_POLICY"]

#: "auto" (heuristic, see :func:`_use_split_k`), "always" (whenever M <= 16), or "never".
#: A tuning knob for benchmarks and tests, not a user-facing switch.
SPLIT_K_POLICY = "auto"

_FLOAT_OUT = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1


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
        # M <= 16 (decode; torch._int_mm refuses M <= 16). Weight streaming: the time is reading
        # b, so narrow N tiles give many CTAs and deep K tiles give long, few loads per CTA.
        _cfg(16, 32, 256, 1, 4, 4),
        _cfg(16, 64, 128, 1, 4, 4),
        _cfg(16, 64, 256, 1, 4, 3),
        _cfg(16, 128, 128, 1, 4, 4),
        _cfg(16, 128, 256, 1, 8, 3),
        # 17 <= M <= 128: still mostly weight bytes; taller tiles reuse each b tile more.
        _cfg(32, 64, 128, 8, 4, 4),
        _cfg(32, 128, 128, 8, 4, 4),
        _cfg(64, 64, 128, 8, 4, 4),
        _cfg(64, 128, 128, 8, 4, 4),
        _cfg(64, 256, 128, 8, 8, 3),
        # M >= 256 up to compute-bound M >= 2048: big tensor-core tiles, deep pipelines,
        # grouped tile order for L2 reuse of both operands.
        _cfg(128, 128, 64, 8, 4, 4),
        _cfg(128, 128, 128, 8, 4, 4),
        _cfg(128, 128, 128, 8, 8, 3),
        _cfg(128, 256, 64, 8, 8, 4),
        _cfg(128, 256, 128, 8, 8, 3),
        _cfg(256, 128, 128, 8, 8, 3),
    ]


def _splitk_configs():
    if interpreting():
        return [_cfg(16, 32, 32, 1, 4, 1, SPLIT_K=2)]
    return [
        _cfg(16, 32, 256, 1, 4, 4, SPLIT_K=2),
        _cfg(16, 64, 128, 1, 4, 4, SPLIT_K=2),
        _cfg(16, 64, 128, 1, 4, 4, SPLIT_K=4),
        _cfg(16, 64, 256, 1, 4, 3, SPLIT_K=4),
        _cfg(16, 64, 128, 1, 4, 4, SPLIT_K=8),
        _cfg(16, 128, 128, 1, 4, 4, SPLIT_K=4),
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
    smem = _max_shared_mem()
    kept = []
    for c in configs:
        kw = c.kwargs
        if kw["BLOCK_M"] not in allowed_m:
            continue
        if smem and (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * c.num_stages > smem:
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

    @triton.autotune(
        configs=_gemm_configs(),
        key=["M_BUCKET", "N", "K"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def _int8_gemm_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr,
        M, N, K, M_BUCKET,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr,
        BF16_MANUAL: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M tile-rows share each b tile while it is in L2.
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
        offs_am = offs_m % M
        offs_bn = offs_n % N
        if INT64_IDX:
            offs_am = offs_am.to(tl.int64)
            offs_bn = offs_bn.to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_left = K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
                b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask_m = offs_m < M
        mask_n = offs_n < N
        if HAS_SCALE:
            a_s = tl.load(as_ptr + offs_m, mask=mask_m, other=0.0)
            b_s = tl.load(bs_ptr + offs_n, mask=mask_n, other=0.0)
            out = (acc.to(tl.float32) * a_s[:, None]) * b_s[None, :]
            if HAS_BIAS:
                bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
                out = out + bias[None, :]
            if BF16_MANUAL:
                out = _to_bf16_rne(out)
            else:
                out = out.to(c_ptr.dtype.element_ty)
        else:
            out = acc
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, out, mask=mask_m[:, None] & mask_n[None, :])

    @triton.autotune(
        configs=_splitk_configs(),
        key=["M_BUCKET", "N", "K"],
        reset_to_zero=["c_ptr"],  # partial sums are atomically added: zero between timing runs
    )
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def _int8_gemm_splitk_kernel(
        a_ptr, b_ptr, c_ptr,
        M, N, K, M_BUCKET,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        INT64_IDX: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        # c (int32, zeroed by the caller) += the partial product over K blocks pid_k, pid_k +
        # SPLIT_K, pid_k + 2 * SPLIT_K, ...
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        pid_m = pid // num_pid_n
        pid_n = pid % num_pid_n

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_am = offs_m % M
        offs_bn = offs_n % N
        if INT64_IDX:
            offs_am = offs_am.to(tl.int64)
            offs_bn = offs_bn.to(tl.int64)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_left = K - k * BLOCK_K
                kk = tl.arange(0, BLOCK_K)
                a = tl.load(a_ptrs, mask=kk[None, :] < k_left, other=0)
                b = tl.load(b_ptrs, mask=kk[:, None] < k_left, other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            a_ptrs += SPLIT_K * BLOCK_K * stride_ak
            b_ptrs += SPLIT_K * BLOCK_K * stride_bk

        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.atomic_add(c_ptrs, acc, mask=mask, sem="relaxed")

    @triton.jit
    def _int8_scale_epilogue_kernel(
        acc_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr,
        M, N, stride_am, stride_cm,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # c[m, n] = ((float(acc[m, n]) * a_scale[m]) * b_scale[n]) + bias[n], same order as the
        # fused epilogue.
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        if INT64_IDX:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)
        mask_m = offs_m < M
        mask_n = offs_n < N
        mask = mask_m[:, None] & mask_n[None, :]
        acc = tl.load(acc_ptr + offs_m[:, None] * stride_am + offs_n[None, :], mask=mask, other=0)
        a_s = tl.load(as_ptr + offs_m, mask=mask_m, other=0.0)
        b_s = tl.load(bs_ptr + offs_n, mask=mask_n, other=0.0)
        out = (acc.to(tl.float32) * a_s[:, None]) * b_s[None, :]
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
            out = out + bias[None, :]
        if BF16_MANUAL:
            out = _to_bf16_rne(out)
        else:
            out = out.to(c_ptr.dtype.element_ty)
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], out, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _use_split_k(M: int, N: int, K: int, device: torch.device) -> bool:
    """Split K only where the plain kernel cannot fill the GPU: few rows and even the narrowest
    N tiles (32 wide) give fewer CTAs than there are SMs, with enough K to share out.
    Not yet tuned on hardware: benchmark against SPLIT_K_POLICY = "never"."""
    if M > 16 or SPLIT_K_POLICY == "never":
        return False
    if SPLIT_K_POLICY == "always":
        return True
    if device.type != "cuda":
        return False
    return K >= 1024 and triton.cdiv(N, 32) < _sm_count(device.index or 0)


def _launch_opts(device: torch.device):
    # No FMA contraction: the float epilogue then matches torch's ((acc*as)*bs)+bias bit for bit.
    return {"enable_fp_fusion": False}


def _device_ctx(t: torch.Tensor):
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device.index)
    return _NullCtx()


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def int8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None = None,
              b_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              out_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``a @ b.T`` for int8 a [M, K] and int8 b [N, K].

    out_dtype torch.int32: the raw int32 accumulator (exact, mod 2**32).
    out_dtype float32/float16/bfloat16: ``((acc * a_scale[:, None]) * b_scale[None, :]) + bias``
    in float32, then cast; a_scale float32 [M], b_scale float32 [N], bias float32 [N] or None.
    """
    if not _HAVE_TRITON:
        raise RuntimeError(f"slimkernels.triton.int8_gemm: {unavailable_reason()}")
    fused = out_dtype != torch.int32
    if fused:
        if out_dtype not in _FLOAT_OUT:
            raise TypeError(f"out_dtype must be torch.int32, float32, float16 or bfloat16, "
                            f"got {out_dtype}")
        if a_scale is None or b_scale is None:
            raise ValueError("a_scale and b_scale are required for a float out_dtype")
    M, K = a.shape
    N = b.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        # Empty sum: a zero accumulator through the same epilogue, no launch.
        if not fused:
            return out.zero_()
        acc = torch.zeros((M, N), dtype=torch.float32, device=a.device)
        res = (acc * a_scale[:, None]) * b_scale[None, :]
        if bias is not None:
            res = res + bias[None, :]
        return out.copy_(res)

    int64_idx = max(a.numel(), b.numel(), M * N) > _INT32_LIMIT
    bucket = _m_bucket(M)
    opts = _launch_opts(a.device)
    bf16_manual = out_dtype == torch.bfloat16 and interpreting()
    with _device_ctx(a):
        if _use_split_k(M, N, K, a.device):
            acc = out.zero_() if not fused else torch.zeros((M, N), dtype=torch.int32,
                                                            device=a.device)

            def grid(meta):
                return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),
                        meta["SPLIT_K"])

            _int8_gemm_splitk_kernel[grid](
                a, b, acc, M, N, K, bucket,
                a.stride(0), a.stride(1), b.stride(0), b.stride(1), acc.stride(0), acc.stride(1),
                INT64_IDX=int64_idx, **opts,
            )
            if fused:
                bm, bn = 16, 128
                _int8_scale_epilogue_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
                    acc, out, a_scale, b_scale, bias if bias is not None else b_scale,
                    M, N, acc.stride(0), out.stride(0),
                    HAS_BIAS=bias is not None, INT64_IDX=int64_idx, BF16_MANUAL=bf16_manual,
                    BLOCK_M=bm, BLOCK_N=bn, num_warps=4, **opts,
                )
            return out

        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        # Unused pointer arguments get a valid tensor (the output) as a placeholder.
        _int8_gemm_kernel[grid](
            a, b, out,
            a_scale if fused else out, b_scale if fused else out,
            bias if (fused and bias is not None) else out,
            M, N, K, bucket,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            HAS_SCALE=fused, HAS_BIAS=fused and bias is not None, INT64_IDX=int64_idx,
            BF16_MANUAL=bf16_manual, **opts,
        )
    return out
