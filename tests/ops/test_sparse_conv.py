"""The sparse_conv family (sparse_conv2d: conv2d with a CSR weight over output channels): the native
CPU kernel on every instruction set this CPU has, against the reference (F.conv2d in float32 with the
dense weight unpacked from the CSR), on fresh random sparse weights with fully zero rows.

Tolerance per element, as slimkernels.testing.linear_bound for the native kernels: 1e-5 * S (a float32
sum in another order), S = conv(|x|, |W|), plus one rounding step of the output dtype times |ref|.

Then the contract: channels_last in -> channels_last out, empty batches, opcheck, autograd (x and bias;
the weight is frozen), bad input (dtypes, shapes, conv parameters) and hostile index tensors reaching
the native binding (ValueError, never a bad read).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slimkernels
from slimkernels import _native, ops
from slimkernels.ops.sparse_conv import dense_weight
from slimkernels.quant import sparse as layout
from slimkernels.testing import ABS_FLOOR, OUT_STEP, cases, forced, opcheck

C = _native._C
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VALUE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

SWEEP = cases("sparse_conv2d", reference=False)  # every implementation but the reference, native per ISA
CONTRACT = cases("sparse_conv2d", per_isa=False)

# (Cin, Cout, kernel, stride, padding, dilation, groups, H, W): kernel sizes 1/3/5, strides 1/2,
# paddings 0/1/2, dilations 1/2, groups 1/2/4 and depthwise, odd channel counts and sizes, rectangular
# kernels and images, widths under, at and over one 16-lane vector and one 64-column strip.
GEOMETRIES = [
    (3, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 7, 9),
    (8, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 11),
    (7, 9, (3, 3), (2, 2), (1, 1), (1, 1), 1, 13, 17),
    (6, 4, (5, 5), (1, 1), (2, 2), (1, 1), 2, 11, 10),
    (8, 12, (3, 3), (1, 2), (2, 0), (2, 2), 4, 12, 15),
    (5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 5, 8, 8),  # depthwise
    (9, 7, (1, 3), (2, 1), (0, 1), (1, 2), 1, 6, 70),
    (16, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, 33, 3),  # 1x1 as one row of 99 pixels
    (4, 4, (1, 1), (2, 2), (1, 1), (1, 1), 2, 9, 9),
    (3, 2, (5, 3), (2, 3), (2, 1), (2, 1), 1, 15, 21),
    (2, 3, (3, 3), (1, 1), (0, 0), (1, 1), 1, 3, 3),  # one output pixel
    (10, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1, 4, 130),  # three strips and a tail
]
geom_id = lambda g: "c{}-{}_k{}x{}_s{}{}_p{}{}_d{}{}_g{}_{}x{}".format(g[0], g[1], *g[2], *g[3], *g[4], *g[5], *g[6:])  # noqa: E731


def random_weight(cout, cin_g, kernel, sparsity=0.7, seed=0, zero_rows=True):
    """Random float32 [Cout, Cin/g, kh, kw] with `sparsity` zeros; every third row fully zero."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin_g, *kernel, generator=gen)
    w = w * (torch.rand(w.shape, generator=gen) >= sparsity)
    if zero_rows:
        w[::3] = 0
    return w


def make_args(geom, batch=2, x_dtype=torch.float32, value_dtype=torch.float32, bias=True, channels_last=False,
              seed=0, sparsity=0.7):
    cin, cout, kernel, stride, padding, dilation, groups, h, w = geom
    weight = random_weight(cout, cin // groups, kernel, sparsity, seed)
    csr = layout.pack_csr(weight.reshape(cout, -1), value_dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, cin, h, w, generator=gen).to(x_dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, generator=gen) if bias else None
    return (x, csr.row_ptr, csr.col_idx, csr.values, csr.scales, b, list(kernel), list(stride), list(padding),
            list(dilation), groups)


def reference(args):
    with slimkernels.use_backend("reference"):
        return ops.sparse_conv2d(*args)


def assert_close_conv(got, ref, args, what=""):
    x, row_ptr, col_idx, values, scales, bias, kernel, stride, padding, dilation, groups = args
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {got.dtype} {tuple(got.shape)}"
    w = dense_weight(row_ptr, col_idx, values, scales, x.shape[1] // groups, kernel).double()
    s = F.conv2d(x.double().abs(), w.abs(), None, stride, padding, dilation, groups)
    r = ref.double().abs()
    bound = 1e-5 * s + OUT_STEP[ref.dtype] * r + ABS_FLOOR[ref.dtype]
    err = (got.double() - ref.double()).abs()
    ok = err <= bound
    if not ok.all():
        worst = torch.nan_to_num(err / bound, nan=float("inf")).max().item()
        raise AssertionError(f"{what}: {int((~ok).sum())} elements outside the bound, worst ratio {worst:.3g}")


def run(case, args, threads=None):
    with forced(case):
        if threads is None:
            return ops.sparse_conv2d(*args)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return ops.sparse_conv2d(*args)
        finally:
            torch.set_num_threads(old)


# ---- numerics against the reference -----------------------------------------------------------------
@pytest.mark.parametrize("geom", GEOMETRIES, ids=geom_id)
@pytest.mark.parametrize("case", SWEEP)
def test_geometries(case, geom):
    for batch, bias, threads in ((1, True, 1), (3, False, 2)):
        args = make_args(geom, batch=batch, bias=bias, seed=batch)
        assert_close_conv(run(case, args, threads), reference(args), args, f"{geom_id(geom)} B={batch}")


@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SWEEP)
def test_dtypes(case, x_dtype, value_dtype):
    for geom in (GEOMETRIES[2], GEOMETRIES[7], GEOMETRIES[11]):
        args = make_args(geom, batch=2, x_dtype=x_dtype, value_dtype=value_dtype)
        y = run(case, args)
        assert y.dtype == x_dtype
        assert_close_conv(y, reference(args), args, f"{geom_id(geom)} x {x_dtype} values {value_dtype}")


@pytest.mark.parametrize("case", SWEEP)
def test_channels_last(case):
    for geom in (GEOMETRIES[1], GEOMETRIES[4], GEOMETRIES[7]):
        args = make_args(geom, batch=3, channels_last=True)
        y = run(case, args)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        assert_close_conv(y, reference(args), args, geom_id(geom))
        plain = run(case, (args[0].contiguous(),) + args[1:])
        assert torch.equal(y, plain)  # same numbers whatever the layout
    for x_dtype in X_DTYPES:  # strided columns, padding, halves: read and written NHWC
        args = make_args(GEOMETRIES[2], batch=2, x_dtype=x_dtype, value_dtype=torch.int8, channels_last=True)
        y = run(case, args, 2)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close_conv(y, reference(args), args, f"{geom_id(GEOMETRIES[2])} {x_dtype}")


@pytest.mark.parametrize("case", SWEEP)
def test_all_zero_weight_and_dense_weight(case):
    geom = GEOMETRIES[1]
    for sparsity in (1.0, 0.0):  # no nonzero at all (y = bias), then every entry stored
        args = make_args(geom, sparsity=sparsity)
        y = run(case, args)
        assert_close_conv(y, reference(args), args, f"sparsity {sparsity}")
    args = make_args(geom, sparsity=1.0)
    assert torch.equal(run(case, args), args[5][None, :, None, None].expand(2, -1, 9, 11))


@pytest.mark.parametrize("case", SWEEP)
def test_large_values_and_resnet_shape(case):
    # 3x3 64->64 at 28x28 (a ResNet shape, smaller): many taps per row, strips of 8 rows.
    geom = (64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, 28, 28)
    args = make_args(geom, batch=2, sparsity=0.9)
    x = args[0] * 1e3
    args = (x,) + args[1:]
    assert_close_conv(run(case, args, 2), reference(args), args, "resnet 3x3")


@pytest.mark.parametrize("case", CONTRACT)
def test_empty_batch(case):
    args = make_args(GEOMETRIES[1], batch=0)
    y = run(case, args)
    assert y.shape == (0, 6, 9, 11)


@pytest.mark.parametrize("case", CONTRACT)
def test_opcheck(case):
    opcheck(case, torch.ops.slimkernels.sparse_conv2d.default, make_args(GEOMETRIES[2], batch=2))
    opcheck(case, torch.ops.slimkernels.sparse_conv2d.default,
            make_args(GEOMETRIES[4], batch=1, value_dtype=torch.int8, bias=False, channels_last=True))


@pytest.mark.parametrize("case", CONTRACT)
def test_autograd_x_and_bias(case):
    geom = GEOMETRIES[4]
    args = make_args(geom, batch=2)
    x = args[0].clone().requires_grad_()
    bias = args[5].clone().requires_grad_()
    with forced(case):
        y = ops.sparse_conv2d(x, *args[1:5], bias, *args[6:])
    grad = torch.randn_like(y)
    y.backward(grad)
    xd, bd = args[0].clone().requires_grad_(), args[5].clone().requires_grad_()
    w = dense_weight(*args[1:5], geom[0] // geom[6], args[6])
    F.conv2d(xd, w, bd, args[7], args[8], args[9], args[10]).backward(grad)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, bd.grad, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gradient_is_an_error():
    args = make_args(GEOMETRIES[1])
    values = args[3].clone().requires_grad_()
    y = ops.sparse_conv2d(args[0], args[1], args[2], values, *args[4:])
    with pytest.raises(RuntimeError, match="no gradient for values"):
        y.sum().backward()


def test_compile_fullgraph():
    args = make_args(GEOMETRIES[2], batch=2)
    fn = torch.compile(lambda *a: ops.sparse_conv2d(*a), fullgraph=True)
    torch.testing.assert_close(fn(*args), ops.sparse_conv2d(*args))


# ---- bad input ----------------------------------------------------------------------------------------
def _replace(args, **changes):
    names = ("x", "row_ptr", "col_idx", "values", "scales", "bias", "kernel_size", "stride", "padding", "dilation",
             "groups")
    return tuple(changes.get(n, a) for n, a in zip(names, args))


BAD = [
    ("x int", lambda a: _replace(a, x=a[0].to(torch.int32)), TypeError, "x"),
    ("x 3-D", lambda a: _replace(a, x=a[0][0]), ValueError, "x must be 4-D"),
    ("row_ptr int64", lambda a: _replace(a, row_ptr=a[1].long()), TypeError, "row_ptr"),
    ("col_idx float", lambda a: _replace(a, col_idx=a[2].float()), TypeError, "col_idx"),
    ("values int32", lambda a: _replace(a, values=a[3].int()), TypeError, "values"),
    ("values length", lambda a: _replace(a, values=a[3][1:]), ValueError, "values"),
    ("int8 without scales", lambda a: _replace(a, values=a[3].to(torch.int8)), ValueError, "scales"),
    ("scales with floats", lambda a: _replace(a, scales=torch.ones(6)), ValueError, "scales"),
    ("bias length", lambda a: _replace(a, bias=torch.zeros(5)), ValueError, "bias"),
    ("kernel_size 1 entry", lambda a: _replace(a, kernel_size=[3]), ValueError, "kernel_size"),
    ("stride 3 entries", lambda a: _replace(a, stride=[1, 1, 1]), ValueError, "stride"),
    ("stride 0", lambda a: _replace(a, stride=[0, 1]), ValueError, "stride"),
    ("negative padding", lambda a: _replace(a, padding=[-1, 1]), ValueError, "padding"),
    ("dilation 0", lambda a: _replace(a, dilation=[1, 0]), ValueError, "dilation"),
    ("groups 0", lambda a: _replace(a, groups=0), ValueError, "groups"),
    ("groups not dividing", lambda a: _replace(a, groups=3), ValueError, "groups=3 must divide"),
    ("input smaller than kernel", lambda a: _replace(a, x=a[0][:, :, :1, :1], padding=[0, 0]), ValueError, "smaller"),
    ("mismatched channels", lambda a: _replace(a, x=a[0][:, :4]), ValueError, "col_idx"),
]


@pytest.mark.parametrize("name,change,exc,match", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("case", CONTRACT)
def test_bad_input(case, name, change, exc, match):
    args = change(make_args(GEOMETRIES[1]))
    if name == "mismatched channels" and case.impl == "reference":
        pytest.skip("column contents are re-checked by the native kernel (and at load), not by the contract")
    with forced(case), pytest.raises(exc, match=match):
        ops.sparse_conv2d(*args)


@pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
def test_hostile_index_tensors_through_the_op():
    """Index contents the contract does not scan (O(nnz)) are re-checked by the native kernel."""
    args = make_args(GEOMETRIES[1])
    bad_col = args[2].clone()
    bad_col[3] = 30000
    neg_col = args[2].clone()
    neg_col[0] = -1
    bad_ptr = args[1].clone()
    bad_ptr[2] = bad_ptr[3] + 1  # not monotone
    end_ptr = args[1].clone()
    end_ptr[-1] -= 1
    with slimkernels.use_backend("native"):
        for changed, match in ((dict(col_idx=bad_col), "col_idx"), (dict(col_idx=neg_col), "col_idx"),
                               (dict(row_ptr=bad_ptr), "row_ptr"), (dict(row_ptr=end_ptr), "row_ptr")):
            with pytest.raises(ValueError, match=match):
                ops.sparse_conv2d(*_replace(args, **changed))


@pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
def test_native_binding_checks():
    args = make_args(GEOMETRIES[1], batch=1)
    x, row_ptr, col_idx, values = args[:4]
    y = torch.empty(1, 6, 9, 11)

    def call(**kw):
        a = dict(x=x.data_ptr(), x_kind="float32", channels_last=False, B=1, Cin=8, H=9, W=11, row_ptr=row_ptr.data_ptr(),
                 col_idx=col_idx.data_ptr(), index_kind="int16", values=values.data_ptr(), value_kind="float32",
                 scales=0, bias=0, Cout=6, nnz=col_idx.numel(), kernel_size=[3, 3], stride=[1, 1], padding=[1, 1],
                 dilation=[1, 1], groups=1, y=y.data_ptr(), OH=9, OW=11, num_threads=1)
        a.update(kw)
        C.sparse_conv2d(**a)

    call()
    hostile = torch.tensor([0, 5, 2, 9, 9, 9, col_idx.numel()], dtype=torch.int32)
    for kw, match in ((dict(row_ptr=hostile.data_ptr()), "non-decreasing"), (dict(nnz=col_idx.numel() + 1), "nnz"),
                      (dict(OH=10), "does not match"), (dict(groups=4), "groups"), (dict(Cin=0), "Cin"),
                      (dict(kernel_size=[3]), "kernel_size"), (dict(padding=[-1, 0]), "padding"),
                      (dict(value_kind="int8"), "scales"), (dict(index_kind="int64"), "index_kind"),
                      (dict(x_kind="float64"), "x_kind"), (dict(num_threads=0), "num_threads"),
                      (dict(row_ptr=0), "row_ptr"), (dict(y=0), "null")):
        with pytest.raises(ValueError, match=match):
            call(**kw)
    for isa in C.supported_isas():
        call(isa=isa)
