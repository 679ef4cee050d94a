"""The raw im2col / col2im / max-pool kernels against naive nested loops.

Every CPU kernel module runs the same test bodies; the CuPy kernels are
compared with the CPU ones when a GPU is present (marked ``gpu``).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl import backend
from minidl.kernels import cpu_numpy

MODULES = [pytest.param(cpu_numpy, id="numpy")]
if backend.numba_available():
    from minidl.kernels import cpu_numba
    MODULES.append(pytest.param(cpu_numba, id="numba"))

FAST = settings(max_examples=20, deadline=None)


# ------------------------------------------------------------ references

def ref_im2col(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad_value):
    N, C, H, W = x.shape
    col = np.full((N, C, KH, KW, OH, OW), pad_value, dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    for oh in range(OH):
                        for ow in range(OW):
                            h, w = oh * SH - PH + i * DH, ow * SW - PW + j * DW
                            if 0 <= h < H and 0 <= w < W:
                                col[n, c, i, j, oh, ow] = x[n, c, h, w]
    return col


def ref_col2im(col, H, W, SH, SW, PH, PW, DH, DW):
    N, C, KH, KW, OH, OW = col.shape
    img = np.zeros((N, C, H, W), dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    for oh in range(OH):
                        for ow in range(OW):
                            h, w = oh * SH - PH + i * DH, ow * SW - PW + j * DW
                            if 0 <= h < H and 0 <= w < W:
                                img[n, c, h, w] += col[n, c, i, j, oh, ow]
    return img


def ref_maxpool(x, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    """PyTorch's rule: scan the window row-major, keep the first maximum."""
    N, C, H, W = x.shape
    y = np.full((N, C, OH, OW), -np.inf, dtype=x.dtype)
    idx = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    # PyTorch's default: the window's first tap at or past row/col 0,
                    # which lies outside the plane when the window has no real pixel
                    first_i = next(i for i in range(KH + PH + 1) if oh * SH - PH + i * DH >= 0)
                    first_j = next(j for j in range(KW + PW + 1) if ow * SW - PW + j * DW >= 0)
                    idx[n, c, oh, ow] = (oh * SH - PH + first_i * DH) * W + (ow * SW - PW +
                                                                            first_j * DW)
                    for i in range(KH):
                        for j in range(KW):
                            h, w = oh * SH - PH + i * DH, ow * SW - PW + j * DW
                            if 0 <= h < H and 0 <= w < W and x[n, c, h, w] > y[n, c, oh, ow]:
                                y[n, c, oh, ow] = x[n, c, h, w]
                                idx[n, c, oh, ow] = h * W + w
    return y, idx


# ----------------------------------------------------------- geometries

def out_size(size, K, S, P, D, ceil_mode):
    """PyTorch's pooling output size (ceil_mode: the last window must start
    inside the input or the left padding)."""
    span = size + 2 * P - D * (K - 1) - 1
    out = (span + (S - 1 if ceil_mode else 0)) // S + 1
    if ceil_mode and (out - 1) * S >= size + P:
        out -= 1
    return out


@st.composite
def geometries(draw, pool=False):
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    DH, DW = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    limit_h, limit_w = (KH // 2, KW // 2) if pool else (2, 2)
    PH, PW = draw(st.integers(0, limit_h)), draw(st.integers(0, limit_w))
    ceil_mode = draw(st.booleans())
    OH, OW = out_size(H, KH, SH, PH, DH, ceil_mode), out_size(W, KW, SW, PW, DW, ceil_mode)
    if OH < 1 or OW < 1:   # kernel larger than the padded input: shrink it
        KH = KW = DH = DW = 1
        PH = PW = 0
        OH, OW = out_size(H, 1, SH, 0, 1, ceil_mode), out_size(W, 1, SW, 0, 1, ceil_mode)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    return dict(N=N, C=C, H=H, W=W, KH=KH, KW=KW, SH=SH, SW=SW, PH=PH, PW=PW, DH=DH, DW=DW,
                OH=OH, OW=OW, layout=layout)


def make_input(g, rng, dtype=np.float64, values=None):
    """An (N, C, H, W) input, possibly a non-contiguous view."""
    N, C, H, W = g["N"], g["C"], g["H"], g["W"]
    if values is None:
        values = rng.standard_normal((N, C, H, W))
    values = values.astype(dtype)
    if g["layout"] == "transposed":
        x = np.ascontiguousarray(values.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    elif g["layout"] == "sliced":
        big = np.zeros((N, C, H, 2 * W), dtype=dtype)
        big[..., ::2] = values
        x = big[..., ::2]
    else:
        x = values
    assert np.array_equal(x, values)
    return x


def pool_forward(kernels, x, *args):
    """(y, PyTorch's int64 indices, the kernel's own argmax for its backward)."""
    y, argmax = kernels.maxpool2d_forward(x, *args)
    H, W = x.shape[2:]
    return y, kernels.maxpool2d_indices(argmax, H, W, *args[:8]), argmax


def geometry_args(g):
    return tuple(g[k] for k in ("KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW", "OH", "OW"))


def conv_args(g):
    return tuple(g[k] for k in ("SH", "SW", "PH", "PW", "DH", "DW"))


def pool_bwd_args(g):
    return tuple(g[k] for k in ("KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW"))


# ----------------------------------------------------------------- tests

@pytest.mark.parametrize("kernels", MODULES)
@FAST
@given(g=geometries(), seed=st.integers(0, 2**16))
def test_im2col_col2im_match_naive_loops(kernels, g, seed):
    rng = np.random.default_rng(seed)
    x = make_input(g, rng)
    before = x.copy()
    col = kernels.im2col(x, *geometry_args(g), pad_value=0.0)
    assert col.flags.c_contiguous and col.dtype == np.float64
    np.testing.assert_array_equal(col, ref_im2col(x, *geometry_args(g), 0.0))
    np.testing.assert_array_equal(x, before)  # the input is never written

    gcol = rng.standard_normal(col.shape)
    img = kernels.col2im(gcol, g["H"], g["W"], *conv_args(g))
    assert img.shape == x.shape and img.dtype == np.float64
    expected = ref_col2im(gcol, g["H"], g["W"], *conv_args(g))
    np.testing.assert_allclose(img, expected, rtol=1e-12, atol=1e-12)

    # the channels-first layout (C, KH, KW, N, OH, OW) the conv op uses
    col_cf = kernels.im2col(x, *geometry_args(g), pad_value=0.0, channels_first=True)
    assert col_cf.flags.c_contiguous
    np.testing.assert_array_equal(col_cf, col.transpose(1, 2, 3, 0, 4, 5))
    gcol_cf = np.ascontiguousarray(gcol.transpose(1, 2, 3, 0, 4, 5))
    np.testing.assert_allclose(kernels.col2im(gcol_cf, g["H"], g["W"], *conv_args(g),
                                              channels_first=True),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", MODULES)
@FAST
@given(g=geometries(pool=True), seed=st.integers(0, 2**16))
def test_maxpool_matches_naive_loops(kernels, g, seed):
    rng = np.random.default_rng(seed)
    n = g["N"] * g["C"] * g["H"] * g["W"]
    # tie-free, and all negative so -inf padding (not 0) is what is checked
    values = -1.0 - rng.permutation(np.linspace(0.0, 1.0, n)).reshape(g["N"], g["C"], g["H"],
                                                                       g["W"])
    x = make_input(g, rng, values=values)
    y, idx, argmax = pool_forward(kernels, x, *geometry_args(g))
    y_ref, idx_ref = ref_maxpool(x, *geometry_args(g))
    assert idx.dtype == np.int64 and y.dtype == np.float64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    y_only, none = kernels.maxpool2d_forward(x, *geometry_args(g), indices=False)
    assert none is None
    np.testing.assert_array_equal(y_only, y_ref)

    gy = rng.standard_normal(y.shape)
    gx = kernels.maxpool2d_backward(gy, argmax, g["H"], g["W"], *pool_bwd_args(g))
    expected = np.zeros(x.shape)
    for (n_, c_, oh, ow), k in np.ndenumerate(idx_ref):
        if 0 <= k < g["H"] * g["W"]:   # a window with no real pixel sends nothing
            expected[n_, c_, k // g["W"], k % g["W"]] += gy[n_, c_, oh, ow]
    np.testing.assert_allclose(gx, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", MODULES)
@FAST
@given(g=geometries(), seed=st.integers(0, 2**16), data=st.data())
def test_im2col_col2im_c_major_and_batch_ranges(kernels, g, seed, data):
    """A C-major input (conv's own output layout) unfolds, and a C-major
    ``out`` receives col2im, without a copy; ``batch`` picks images n0..n1-1."""
    rng = np.random.default_rng(seed)
    N, C, H, W = g["N"], g["C"], g["H"], g["W"]
    values = rng.standard_normal((N, C, H, W))
    x = np.ascontiguousarray(values.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    n0 = data.draw(st.integers(0, N - 1))
    n1 = data.draw(st.integers(n0 + 1, N))
    col = kernels.im2col(x, *geometry_args(g), channels_first=True, batch=(n0, n1))
    ref = ref_im2col(values[n0:n1], *geometry_args(g), 0.0)
    np.testing.assert_array_equal(col, ref.transpose(1, 2, 3, 0, 4, 5))

    gcol = rng.standard_normal(col.shape)
    out = np.full((C, N, H, W), 7.0).transpose(1, 0, 2, 3)   # C-major, as conv's dx
    got = kernels.col2im(gcol, H, W, *conv_args(g), channels_first=True, out=out,
                         batch=(n0, n1))
    assert got is out
    expected = ref_col2im(np.ascontiguousarray(gcol.transpose(3, 0, 1, 2, 4, 5)), H, W,
                          *conv_args(g))
    np.testing.assert_allclose(out[n0:n1], expected, rtol=1e-12, atol=1e-12)
    untouched = np.ones(N, bool)
    untouched[n0:n1] = False
    assert np.all(out[untouched] == 7.0)   # only the named images are written


@pytest.mark.parametrize("kernels", MODULES)
def test_col2im_refuses_bad_out_and_batch(kernels):
    gcol = np.zeros((2, 1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        kernels.col2im(gcol, 4, 4, 1, 1, 0, 0, 1, 1, channels_first=True, batch=(0, 3))
    with pytest.raises(ValueError, match="out"):
        kernels.col2im(gcol, 4, 4, 1, 1, 0, 0, 1, 1, channels_first=True,
                       out=np.zeros((4, 2, 4, 4)), batch=(0, 4))
    with pytest.raises(ValueError, match="batch range"):
        kernels.im2col(np.zeros((3, 2, 4, 4)), 1, 1, 1, 1, 0, 0, 1, 1, 4, 4, batch=(2, 5))


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("KH, KW, PH, PW, DH, DW", [(3, 3, 1, 1, 1, 1), (3, 5, 2, 2, 2, 1),
                                                    (1, 3, 0, 2, 1, 2), (5, 3, 0, 1, 1, 1)])
def test_same_width_stride_one(kernels, KH, KW, PH, PW, DH, DW):
    """'Same'-width stride-1 windows take the Numba kernels' one-long-run path."""
    rng = np.random.default_rng(KH * 10 + KW)
    x = rng.standard_normal((2, 3, 7, 6))
    OH, OW = 7 + 2 * PH - DH * (KH - 1), 6 + 2 * PW - DW * (KW - 1)
    assert OW == 6
    args = (KH, KW, 1, 1, PH, PW, DH, DW, OH, OW)
    col = kernels.im2col(x, *args)
    np.testing.assert_array_equal(col, ref_im2col(x, *args, 0.0))
    gcol = rng.standard_normal(col.shape)
    np.testing.assert_allclose(kernels.col2im(gcol, 7, 6, 1, 1, PH, PW, DH, DW),
                               ref_col2im(gcol, 7, 6, 1, 1, PH, PW, DH, DW),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("KH, KW, PH, PW, DH, DW", [(3, 3, 1, 1, 1, 1), (3, 5, 2, 2, 2, 1),
                                                    (1, 3, 0, 2, 1, 2), (5, 3, 0, 1, 1, 1)])
@pytest.mark.parametrize("N, n0, n1", [(4, 0, 4), (5, 1, 4), (3, 2, 3)])
def test_same_size_c_major(kernels, KH, KW, PH, PW, DH, DW, N, n0, n1):
    """Stride-1 'same' windows over a C-major input take the Numba kernels'
    whole-channel runs (each tap one shifted copy across images, the padding
    zeroed after); col2im zeroes only col's padding taps, which feed nothing."""
    rng = np.random.default_rng(KH * 100 + KW * 10 + N)
    H, W = 6, 5
    values = rng.standard_normal((N, 3, H, W))
    x = np.ascontiguousarray(values.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    OH, OW = H + 2 * PH - DH * (KH - 1), W + 2 * PW - DW * (KW - 1)
    args = (KH, KW, 1, 1, PH, PW, DH, DW, OH, OW)
    col = kernels.im2col(x, *args, channels_first=True, batch=(n0, n1))
    ref = ref_im2col(values[n0:n1], *args, 0.0).transpose(1, 2, 3, 0, 4, 5)
    np.testing.assert_array_equal(col, ref)
    gcol = rng.standard_normal(col.shape)
    expected = ref_col2im(np.ascontiguousarray(gcol.transpose(3, 0, 1, 2, 4, 5)), H, W,
                          1, 1, PH, PW, DH, DW)
    out = np.full((3, N, H, W), 5.0).transpose(1, 0, 2, 3)
    kernels.col2im(gcol, H, W, 1, 1, PH, PW, DH, DW, channels_first=True, out=out,
                   batch=(n0, n1))
    np.testing.assert_allclose(out[n0:n1], expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.delete(out, np.s_[n0:n1], axis=0) == 5.0)
    # what col2im may have zeroed is exactly what no pixel reads
    np.testing.assert_array_equal(ref_col2im(np.ascontiguousarray(gcol.transpose(
        3, 0, 1, 2, 4, 5)), H, W, 1, 1, PH, PW, DH, DW), expected)


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(kernels, dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(dtype)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 5, 5)
    col = kernels.im2col(x, *args)
    assert col.dtype == dtype
    assert kernels.col2im(col, 5, 5, 1, 1, 1, 1, 1, 1).dtype == dtype
    y, idx, argmax = pool_forward(kernels, x, *args)
    assert y.dtype == dtype and idx.dtype == np.int64
    gx = kernels.maxpool2d_backward(y, argmax, 5, 5, *args[:8])
    assert gx.dtype == dtype


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("KH, KW, SH, SW, ceil", [(2, 2, 2, 2, False), (2, 2, 1, 1, False),
                                                   (3, 3, 2, 2, False), (2, 2, 2, 2, True)])
def test_maxpool_fast_paths(kernels, KH, KW, SH, SW, ceil):
    """The Numba kernel's unrolled 2x2 and in-bounds paths, ties and NaN included."""
    rng = np.random.default_rng(KH + SH)
    x = np.round(rng.standard_normal((2, 3, 7, 8)), 1)   # rounding makes ties
    x[0, 0, 1, 1] = np.nan
    g = dict(N=2, C=3, H=7, W=8, KH=KH, KW=KW, SH=SH, SW=SW, PH=0, PW=0, DH=1, DW=1,
             OH=out_size(7, KH, SH, 0, 1, ceil), OW=out_size(8, KW, SW, 0, 1, ceil))
    y, idx, argmax = pool_forward(kernels, x, *geometry_args(g))
    with np.errstate(invalid="ignore"):
        y_ref, idx_ref = ref_maxpool(np.nan_to_num(x, nan=np.inf), *geometry_args(g))
    nan_windows = np.isinf(y_ref)
    np.testing.assert_array_equal(np.isnan(y), nan_windows)   # NaN propagates, as PyTorch
    np.testing.assert_array_equal(y[~nan_windows], y_ref[~nan_windows])
    np.testing.assert_array_equal(idx, idx_ref)
    y_only, _ = kernels.maxpool2d_forward(x, *geometry_args(g), indices=False)
    np.testing.assert_array_equal(y_only, y)
    # the backward sends each window's gradient to that pixel, nothing elsewhere
    gy = rng.standard_normal(y.shape)
    gx = kernels.maxpool2d_backward(gy, argmax, 7, 8, *pool_bwd_args(g))
    expected = np.zeros(x.shape)
    for (n_, c_, oh, ow), k in np.ndenumerate(idx):
        expected[n_, c_, k // 8, k % 8] += gy[n_, c_, oh, ow]
    np.testing.assert_allclose(gx, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", MODULES)
@FAST
@given(g=geometries(pool=True), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_maxpool_fused_relu_is_relu_of_the_pool(kernels, g, seed, dtype):
    """``relu=True``: y = relu(maxpool(x)), and a window whose pick is <= 0 (or a
    window of padding only) sends no gradient; a NaN pick stays NaN and does
    (PyTorch's ReLU backward). Values rounded so ties, zeros and signs all occur."""
    rng = np.random.default_rng(seed)
    x = make_input(g, rng, dtype=dtype, values=np.round(rng.standard_normal(
        (g["N"], g["C"], g["H"], g["W"])), 0))
    if x.size > 1:
        x[(0,) * 4] = np.nan
    y, idx, argmax = pool_forward(kernels, x, *geometry_args(g))
    y_relu, argmax_relu = kernels.maxpool2d_forward(x, *geometry_args(g), relu=True)
    assert y_relu.dtype == dtype
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y_relu, np.maximum(y, 0))   # NaN stays NaN
    y_only, none = kernels.maxpool2d_forward(x, *geometry_args(g), indices=False, relu=True)
    assert none is None
    np.testing.assert_array_equal(y_only, y_relu)

    gy = rng.standard_normal(y.shape).astype(dtype)
    with np.errstate(invalid="ignore"):
        passes = ~(y <= 0)
    gx = kernels.maxpool2d_backward(gy, argmax_relu, g["H"], g["W"], *pool_bwd_args(g))
    expected = kernels.maxpool2d_backward(np.where(passes, gy, 0), argmax, g["H"], g["W"],
                                          *pool_bwd_args(g))
    np.testing.assert_allclose(gx, expected, rtol=1e-6, atol=1e-6)
    # an infinite gradient of a zeroed window stays out (no 0 * inf = NaN)
    if (~passes).any():
        gy_inf = np.where(passes, gy, np.inf).astype(dtype)
        gx = kernels.maxpool2d_backward(gy_inf, argmax_relu, g["H"], g["W"],
                                        *pool_bwd_args(g))
        np.testing.assert_allclose(gx, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("KH, KW, SH, SW, ceil", [(2, 2, 2, 2, False), (2, 2, 2, 2, True),
                                                   (3, 3, 2, 2, False)])
def test_maxpool_fused_relu_fast_paths(kernels, KH, KW, SH, SW, ceil):
    """The Numba 2x2 path's fused ReLU (codes | 4) on float32 planes with ties,
    zeros, a NaN and all-negative windows, against pool then ReLU."""
    rng = np.random.default_rng(KH + SH + ceil)
    x = np.round(rng.standard_normal((3, 4, 7, 8)), 0).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[1, 1, :4, :4] = -1.0
    g = dict(N=3, C=4, H=7, W=8, KH=KH, KW=KW, SH=SH, SW=SW, PH=0, PW=0, DH=1, DW=1,
             OH=out_size(7, KH, SH, 0, 1, ceil), OW=out_size(8, KW, SW, 0, 1, ceil))
    y, _, argmax = pool_forward(kernels, x, *geometry_args(g))
    y_relu, argmax_relu = kernels.maxpool2d_forward(x, *geometry_args(g), relu=True)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y_relu, np.maximum(y, 0))
        passes = ~(y <= 0)
    assert not passes.all() and passes.any()
    gy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(
        kernels.maxpool2d_backward(gy, argmax_relu, 7, 8, *pool_bwd_args(g)),
        kernels.maxpool2d_backward(np.where(passes, gy, 0), argmax, 7, 8, *pool_bwd_args(g)))


@pytest.mark.parametrize("kernels", MODULES)
def test_maxpool_ties_go_to_the_first_maximum(kernels):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 2] = x[0, 0, 2, 1] = 5.0   # two tied maxima; zeros tie elsewhere
    # 2x2 windows, stride 1: row-major scan meets (1, 2) before (2, 1)
    y, idx, _ = pool_forward(kernels, x, 2, 2, 1, 1, 0, 0, 1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0], [[0, 5, 5], [5, 5, 5], [5, 5, 0]])
    np.testing.assert_array_equal(idx[0, 0], [[0, 6, 6], [9, 6, 6], [9, 9, 10]])
    # all equal: each window's first pixel, padding never chosen
    y, idx, argmax = pool_forward(kernels, np.ones((1, 1, 3, 3)), 2, 2, 2, 2, 1, 1, 1, 1, 2, 2)
    np.testing.assert_array_equal(idx, [[[[0, 1], [3, 4]]]])
    gx = kernels.maxpool2d_backward(np.ones((1, 1, 2, 2)), argmax, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1)
    np.testing.assert_array_equal(gx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("kernels", MODULES)
def test_maxpool_all_negative_and_infinite_inputs(kernels):
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y, idx, _ = pool_forward(kernels, x, 2, 2, 2, 2, 1, 1, 1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])
    # a window of only -inf real pixels reports its first in-bounds pixel (as PyTorch)
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx, _ = pool_forward(kernels, x, 3, 3, 2, 2, 1, 1, 1, 1, 2, 2)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx, [[[[0, 1], [3, 4]]]])


@pytest.mark.skipif(len(MODULES) < 2, reason="numba is not installed")
@pytest.mark.parametrize("H, W", [(6, 8), (7, 9), (28, 28)])
def test_maxpool_2x2_stride_2_ties_nans_and_signed_zeros(H, W):
    """The Numba 2x2/stride-2 path (branch-free) against the naive loops:
    many ties, several NaNs in one window, -0.0 against 0.0, odd sizes.
    (Numba only: with several NaNs in a window the NumPy path's argmax
    reports the first NaN, PyTorch's loop the last.)"""
    kernels = cpu_numba
    rng = np.random.default_rng(H * W)
    x = rng.choice(np.array([-1.0, -0.0, 0.0, 1.0, np.nan, 2.0]), size=(3, 5, H, W),
                   p=[.2, .2, .2, .2, .1, .1]).astype(np.float32)
    g = dict(N=3, C=5, H=H, W=W, KH=2, KW=2, SH=2, SW=2, PH=0, PW=0, DH=1, DW=1,
             OH=H // 2, OW=W // 2)
    y, idx, argmax = pool_forward(kernels, x, *geometry_args(g))
    assert y.dtype == np.float32 and idx.dtype == np.int64
    assert argmax.dtype == np.uint8   # the compact window codes (1/8 of int64)
    # the reference with NaN as +inf is PyTorch's loop except that the last NaN wins there
    for n, c, oh, ow in np.ndindex(y.shape):
        win = [(2 * oh + i) * W + 2 * ow + j for i in range(2) for j in range(2)]
        vals = x[n, c].reshape(-1)[win]
        if np.isnan(vals).any():
            k = win[np.flatnonzero(np.isnan(vals))[-1]]
        else:
            k = win[int(np.argmax(vals))]   # the first maximum
        assert idx[n, c, oh, ow] == k
        ref = x[n, c].reshape(-1)[k]
        assert (np.isnan(ref) and np.isnan(y[n, c, oh, ow])) or \
            (y[n, c, oh, ow] == ref and np.signbit(y[n, c, oh, ow]) == np.signbit(ref))


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_layout_kernels_match_naive_loops(kernels, dtype, bias):
    rng = np.random.default_rng(3)
    N, Co, OH, OW = 3, 5, 4, 7
    y_t = rng.standard_normal((Co, N * OH * OW)).astype(dtype)
    b = rng.standard_normal(Co).astype(dtype) if bias else None
    before = y_t.copy()
    y = kernels.gemm_to_nchw(y_t, b, N, OH, OW)
    assert y.shape == (N, Co, OH, OW) and y.dtype == dtype
    ref = np.empty((N, Co, OH, OW), dtype)
    for n, c in np.ndindex(N, Co):
        ref[n, c] = y_t[c, n * OH * OW:(n + 1) * OH * OW].reshape(OH, OW) + (b[c] if bias else 0)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y_t, before)   # the input is never written
    # the reverse, from a non-contiguous gy, with and without the bias gradient
    gy = rng.standard_normal((N, Co, OW, OH)).astype(dtype).transpose(0, 1, 3, 2)
    g_t, gb = kernels.nchw_to_gemm(gy, bias_grad=bias)
    assert g_t.shape == (Co, N * OH * OW) and g_t.dtype == dtype
    for n, c in np.ndindex(N, Co):
        np.testing.assert_array_equal(g_t[c, n * OH * OW:(n + 1) * OH * OW], gy[n, c].ravel())
    if bias:
        assert gb.dtype == dtype
        np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
    else:
        assert gb is None
    out = np.empty((Co, N, OH * OW), dtype)
    g2, _ = kernels.nchw_to_gemm(gy, out=out)
    assert np.shares_memory(g2, out)
    np.testing.assert_array_equal(g2, g_t)


@pytest.mark.skipif(len(MODULES) < 2, reason="numba is not installed")
def test_numba_and_numpy_agree_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)[:, :, ::-1]   # negative strides
    args = (3, 2, 2, 1, 1, 1, 2, 1, 4, 8)
    a, b = cpu_numpy.im2col(x, *args), cpu_numba.im2col(x, *args)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(cpu_numpy.col2im(a, 9, 8, *args[2:8]),
                               cpu_numba.col2im(b, 9, 8, *args[2:8]), rtol=1e-6, atol=1e-6)
    pool = (3, 2, 2, 1, 1, 1, 1, 2, 5, 7)
    ya, ia, _ = pool_forward(cpu_numpy, x, *pool)
    yb, ib, _ = pool_forward(cpu_numba, x, *pool)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ia, ib)


def test_all_backends_share_one_interface():
    import inspect
    names = ["im2col", "col2im", "maxpool2d_forward", "maxpool2d_backward", "maxpool2d_indices",
             "gemm_to_nchw", "nchw_to_gemm", "relu", "threshold_backward", "dropout_apply"]
    import sys

    from minidl.kernels import cuda_cupy   # imports without CuPy: it is loaded lazily
    mods = [p.values[0] for p in MODULES] + [cuda_cupy]
    if not backend.cuda_is_available():
        assert "cupy" not in sys.modules
    for name in names:
        sigs = {str(inspect.signature(getattr(m, name))) for m in mods}
        assert len(sigs) == 1, (name, sigs)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_is_available(), reason="no CUDA GPU")
@settings(max_examples=10, deadline=None)
@given(g=geometries(pool=True), seed=st.integers(0, 2**16))
def test_cupy_kernels_match_cpu(g, seed):
    import cupy as cp

    from minidl.kernels import cuda_cupy
    rng = np.random.default_rng(seed)
    n = g["N"] * g["C"] * g["H"] * g["W"]
    x = rng.permutation(np.linspace(-1.0, 1.0, n)).reshape(g["N"], g["C"], g["H"], g["W"])
    xg = cp.asarray(x)
    col = cpu_numpy.im2col(x, *geometry_args(g))
    colg = cuda_cupy.im2col(xg, *geometry_args(g))
    np.testing.assert_array_equal(cp.asnumpy(colg), col)
    gcol = rng.standard_normal(col.shape)
    np.testing.assert_allclose(cp.asnumpy(cuda_cupy.col2im(cp.asarray(gcol), g["H"], g["W"],
                                                           *conv_args(g))),
                               cpu_numpy.col2im(gcol, g["H"], g["W"], *conv_args(g)),
                               rtol=1e-12, atol=1e-12)
    col_cf = cuda_cupy.im2col(xg, *geometry_args(g), channels_first=True)
    np.testing.assert_array_equal(cp.asnumpy(col_cf), col.transpose(1, 2, 3, 0, 4, 5))
    gcol_cf = np.ascontiguousarray(gcol.transpose(1, 2, 3, 0, 4, 5))
    np.testing.assert_allclose(
        cp.asnumpy(cuda_cupy.col2im(cp.asarray(gcol_cf), g["H"], g["W"], *conv_args(g),
                                    channels_first=True)),
        cpu_numpy.col2im(gcol, g["H"], g["W"], *conv_args(g)), rtol=1e-12, atol=1e-12)
    y, idx = cpu_numpy.maxpool2d_forward(x, *geometry_args(g))
    yg, idxg = cuda_cupy.maxpool2d_forward(xg, *geometry_args(g))
    np.testing.assert_array_equal(cp.asnumpy(yg), y)
    np.testing.assert_array_equal(cp.asnumpy(idxg), idx)
    gy = rng.standard_normal(y.shape)
    args = (g["H"], g["W"], *pool_bwd_args(g))
    np.testing.assert_allclose(cp.asnumpy(cuda_cupy.maxpool2d_backward(cp.asarray(gy), idxg,
                                                                       *args)),
                               cpu_numpy.maxpool2d_backward(gy, idx, *args),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- matmul

def _layouts(x):
    """x as a row-major matrix, the transpose of one, and a strided view."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
    wide[:, ::2] = x
    return [x, np.asfortranarray(x), wide[:, ::2]]


MATMUL_SHAPES = [(64, 784, 128), (8, 10, 50176), (10, 50176, 8), (16, 73, 12544),
                 (73, 12544, 16), (300, 40, 3), (3, 5, 2), (1, 784, 128), (128, 1, 784)]


@pytest.mark.parametrize("kernels", MODULES)
@pytest.mark.parametrize("M, K, N", MATMUL_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_matches_numpy(kernels, M, K, N, dtype):
    """Every split (row blocks, column blocks, slices of a long inner dimension
    summed, narrow column blocks for a tiny first operand, the serial small
    case) on every operand layout, against a float64 product."""
    rng = np.random.default_rng(M + K + N)
    a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(K)) if dtype == np.float32 else \
        dict(rtol=1e-10, atol=1e-10)
    for x in _layouts(a)[:2 if M * K > 100_000 else 3]:
        for y in _layouts(b)[:2 if K * N > 100_000 else 3]:
            c = kernels.matmul(x, y)
            assert c.shape == (M, N) and c.dtype == dtype
            np.testing.assert_allclose(c, expected, **tol)
    out = np.full((M, 2 * N), np.nan, dtype)   # rows of unit stride, not contiguous
    assert kernels.matmul(a, b, out=out[:, :N]) is not None
    np.testing.assert_allclose(out[:, :N], expected, **tol)
    assert np.isnan(out[:, N:]).all()


@pytest.mark.skipif(not backend.numba_available(), reason="needs Numba")
def test_threaded_matmul_falls_back_to_numpy():
    from minidl.kernels import cpu_blas
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 300)).astype(np.float32)
    b = rng.standard_normal((300, 64)).astype(np.float32)
    # batched, integer, mixed dtypes, empty: NumPy's results exactly
    for x, y in [(np.stack([a, a]), b), (a.astype(np.int64), b.astype(np.int64)),
                 (a, b.astype(np.float64)), (a[:, :0], b[:0])]:
        np.testing.assert_array_equal(cpu_blas.matmul(x, y), np.matmul(x, y))
    # an output overlapping an operand: NumPy copies first, so must we
    square = rng.standard_normal((300, 300)).astype(np.float32)
    expected = square @ square
    np.testing.assert_allclose(cpu_blas.matmul(square, square, out=square), expected,
                               rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError):
        cpu_blas.matmul(a, b, out=np.empty((3, 3), np.float32))
    # a read-only out is refused as NumPy refuses it, never written through
    frozen = np.zeros((64, 64), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        cpu_blas.matmul(a, b, out=frozen)
    assert not frozen.any()
    # byte-swapped and misaligned operands: the right values all the same
    swapped = a.astype(a.dtype.newbyteorder())
    np.testing.assert_allclose(cpu_blas.matmul(swapped, b.astype(swapped.dtype)), a @ b,
                               rtol=1e-5, atol=1e-4)
    raw = np.zeros(a.nbytes + 1, np.uint8)
    misaligned = raw[1:].view(np.float32).reshape(a.shape)
    misaligned[...] = a
    assert not misaligned.flags.aligned
    np.testing.assert_allclose(cpu_blas.matmul(misaligned, b), a @ b, rtol=1e-5, atol=1e-4)
