"""Jagged matmuls (cujagged.interaction): the Numba kernels against plain float64 NumPy loops,
their backward functions against the directional derivative, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import FLOAT_DTYPES, OFFSET_DTYPES, TOL, lengths, make_offsets, rel_error

import cujagged as cj
from cujagged import JaggedArray, bfloat16
from cujagged.interaction import (
    array_jagged_bmm_jagged_out,
    array_jagged_bmm_jagged_out_backward,
    dense_jagged_cat,
    dense_jagged_cat_backward,
    jagged2_offsets,
    jagged2_softmax,
    jagged2_softmax_backward,
    jagged2_to_padded,
    jagged_dense_bmm,
    jagged_dense_bmm_backward,
    jagged_jagged_bmm,
    jagged_jagged_bmm_backward,
    jagged_jagged_bmm_jagged_out,
    jagged_jagged_bmm_jagged_out_backward,
    jagged_self_subtraction,
    jagged_self_subtraction_backward,
)


def _rows(x):
    off = np.asarray(x.offsets, dtype=np.int64)
    return [np.asarray(x.values[s:e], dtype=np.float64) for s, e in zip(off[:-1], off[1:])]


def ref_dense_bmm(x, y):
    y = np.asarray(y, dtype=np.float64)
    parts = [r @ y[b] for b, r in enumerate(_rows(x))]
    return np.concatenate(parts) if parts else np.zeros((0, y.shape[2]))


def ref_jj_bmm(x, y):
    return np.stack([a.T @ b for a, b in zip(_rows(x), _rows(y))]) if x.nrows else np.zeros(
        (0, x.inner_shape[0], y.inner_shape[0]))


@st.composite
def problems(draw):
    lens = draw(lengths(max_rows=8, max_len=12))
    dims = st.integers(1, 9)
    return dict(lens=lens, K=draw(dims), N=draw(dims), dtype=draw(st.sampled_from(FLOAT_DTYPES)),
                off_dtype=draw(st.sampled_from(OFFSET_DTYPES)), seed=draw(st.integers(0, 2**16)))


def _make(p, cols, rng, dtype=None):
    T = sum(p["lens"])
    v = rng.standard_normal((T, cols)).astype(np.float32).astype(dtype or p["dtype"])
    return JaggedArray(v, make_offsets(p["lens"], p["off_dtype"]))


@given(problems())
def test_jagged_dense_bmm_matches_numpy(p):
    rng = np.random.default_rng(p["seed"])
    x = _make(p, p["K"], rng)
    y = rng.standard_normal((len(p["lens"]), p["K"], p["N"])).astype(np.float32).astype(
        p["dtype"])
    out = jagged_dense_bmm(x, y)
    assert isinstance(out, JaggedArray) and out.same_structure(x)
    assert out.dtype == x.dtype and out.shape == (x.nrows, None, p["N"])
    assert rel_error(out.values, ref_dense_bmm(x, y)) <= TOL[np.dtype(p["dtype"])]


@given(problems())
def test_jagged_jagged_bmm_matches_numpy(p):
    rng = np.random.default_rng(p["seed"])
    x, y = _make(p, p["K"], rng), _make(p, p["N"], rng)
    out = jagged_jagged_bmm(x, y)
    assert out.dtype == x.dtype and out.shape == (x.nrows, p["K"], p["N"])
    assert rel_error(out, ref_jj_bmm(x, y)) <= TOL[np.dtype(p["dtype"])]
    empty = np.asarray(p["lens"]) == 0
    assert not out[empty].any()  # an empty row gives zeros


def _dot(a, b):
    a = a.values if isinstance(a, JaggedArray) else a
    b = b.values if isinstance(b, JaggedArray) else b
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


@given(problems())
def test_backward_is_the_directional_derivative(p):
    """For out = f(x, y) and any direction d: <grad, f(x + e d, y) - f(x - e d, y)> / (2 e) =
    <grad_x, d> (exact up to rounding: f is bilinear), in float64; likewise for y."""
    p["dtype"] = np.dtype(np.float64)
    rng = np.random.default_rng(p["seed"])
    B, K, N, e = len(p["lens"]), p["K"], p["N"], 0.5
    x, dx = _make(p, K, rng), _make(p, K, rng)
    y, dy = rng.standard_normal((B, K, N)), rng.standard_normal((B, K, N))
    g = _make(p, N, rng)
    gx, gy = jagged_dense_bmm_backward(g, x, y)
    fd_x = _dot(g, jagged_dense_bmm(x._with_values(x.values + e * dx.values), y).values
                - jagged_dense_bmm(x._with_values(x.values - e * dx.values), y).values) / (2 * e)
    fd_y = _dot(g, jagged_dense_bmm(x, y + e * dy).values
                - jagged_dense_bmm(x, y - e * dy).values) / (2 * e)
    assert np.isclose(_dot(gx, dx), fd_x, rtol=1e-9, atol=1e-9)
    assert np.isclose(_dot(gy, dy), fd_y, rtol=1e-9, atol=1e-9)

    z, dz = _make(p, N, rng), _make(p, N, rng)
    G = rng.standard_normal((B, K, N))
    hx, hz = jagged_jagged_bmm_backward(G, x, z)
    assert hx.same_structure(x) and hz.same_structure(z)
    fd_x = _dot(G, jagged_jagged_bmm(x._with_values(x.values + e * dx.values), z)
                - jagged_jagged_bmm(x._with_values(x.values - e * dx.values), z)) / (2 * e)
    fd_z = _dot(G, jagged_jagged_bmm(x, z._with_values(z.values + e * dz.values))
                - jagged_jagged_bmm(x, z._with_values(z.values - e * dz.values))) / (2 * e)
    assert np.isclose(_dot(hx, dx), fd_x, rtol=1e-9, atol=1e-9)
    assert np.isclose(_dot(hz, dz), fd_z, rtol=1e-9, atol=1e-9)


# ---- jagged2 -------------------------------------------------------------------------------------
def _j2(p, rng, x, dtype=None, inner=()):
    """A random jagged2 array of x's structure."""
    n = int(sum(L * L for L in p["lens"]))
    v = rng.standard_normal((n, *inner)).astype(np.float32).astype(dtype or p["dtype"])
    return JaggedArray(v, jagged2_offsets(x))


def _mats(m, x):
    """The L_b x L_b matrices of a jagged2 array (float64), row by row."""
    off2 = np.asarray(m.offsets, dtype=np.int64)
    lens = np.diff(np.asarray(x.offsets, dtype=np.int64))
    return [np.asarray(m.values[s:s + L * L], dtype=np.float64).reshape(L, L, *m.inner_shape)
            for s, L in zip(off2[:-1], lens)]


@given(problems())
def test_jagged2_matmuls_match_numpy(p):
    rng = np.random.default_rng(p["seed"])
    x, y = _make(p, p["K"], rng), _make(p, p["K"], rng)
    m = jagged_jagged_bmm_jagged_out(x, y)
    assert m.dtype == x.dtype and m.nrows == x.nrows and m.values.shape[1:] == ()
    lens = np.asarray(p["lens"], dtype=np.int64)
    np.testing.assert_array_equal(m.offsets, np.concatenate([[0], np.cumsum(lens * lens)]))
    tol = TOL[np.dtype(p["dtype"])]
    ref = [a @ b.T for a, b in zip(_rows(x), _rows(y))]
    for got, want in zip(_mats(m, x), ref):
        assert rel_error(got, want) <= tol
    z = _make(p, p["N"], rng)
    a = _j2(p, rng, x)
    out = array_jagged_bmm_jagged_out(a, z)
    assert out.same_structure(z) and out.shape == z.shape
    want = [mm @ r for mm, r in zip(_mats(a, x), _rows(z))]
    got = _rows(out)
    for g, w in zip(got, want):
        assert rel_error(g, w) <= tol


@given(problems(), st.sampled_from([None, 0, 1, 3, 50]), st.sampled_from([(), (2,)]))
def test_jagged2_to_padded(p, max_length, inner):
    rng = np.random.default_rng(p["seed"])
    x = _make(p, 1, rng)
    m = _j2(p, rng, x, inner=inner)
    dense = jagged2_to_padded(m, x, max_length=max_length, padding_value=-7)
    M = x.max_length if max_length is None else max_length
    assert dense.shape == (x.nrows, M, M, *inner) and dense.dtype == m.dtype
    for b, mat in enumerate(_mats(m, x)):
        n = min(mat.shape[0], M)
        np.testing.assert_array_equal(dense[b, :n, :n].astype(np.float64), mat[:n, :n])
        assert (dense[b, n:] == -7).all() and (dense[b, :, n:] == -7).all()


@given(problems(), st.sampled_from([np.dtype(np.int64), np.dtype(np.int32), bfloat16,
                                    np.dtype(np.float32)]), st.sampled_from([(), (3,)]))
def test_self_subtraction(p, dtype, inner):
    rng = np.random.default_rng(p["seed"])
    T = sum(p["lens"])
    v = (rng.integers(-1000, 1000, size=(T, *inner)) if dtype.kind == "i"
         else rng.standard_normal((T, *inner))).astype(dtype)
    x = JaggedArray(v, make_offsets(p["lens"], p["off_dtype"]))
    m = jagged_self_subtraction(x)
    assert m.dtype == x.dtype and m.values.shape[1:] == tuple(inner)
    for mat, r in zip(_mats(m, x), _rows(x)):
        want = r[:, None] - r[None, :]
        if dtype.kind == "i":
            np.testing.assert_array_equal(mat, want)
        else:
            assert rel_error(mat, want) <= TOL[dtype]


@given(problems(), st.sampled_from([(), (2,)]))
def test_dense_jagged_cat(p, inner):
    rng = np.random.default_rng(p["seed"])
    T, B = sum(p["lens"]), len(p["lens"])
    x = JaggedArray(rng.standard_normal((T, *inner)), make_offsets(p["lens"], p["off_dtype"]))
    d = rng.standard_normal((B, *inner))
    out = dense_jagged_cat(d, x)
    assert out.tolist() == [[d[b].tolist()] + r for b, r in enumerate(x.tolist())]
    assert out.max_length == (max(p["lens"]) + 1 if B else 0)
    gd, gx = dense_jagged_cat_backward(out, x)  # the backward of the identity-like split
    np.testing.assert_array_equal(gd, d)
    assert gx.same_structure(x) and np.array_equal(gx.values, x.values)


@given(problems())
def test_jagged2_backward_is_the_directional_derivative(p):
    p["dtype"] = np.dtype(np.float64)
    rng = np.random.default_rng(p["seed"])
    K, e = p["K"], 0.5
    x, dx, y, dy = (_make(p, K, rng) for _ in range(4))

    def shift(a, d, s):
        return a._with_values(a.values + s * d.values)

    g = _j2(p, rng, x)
    gx, gy = jagged_jagged_bmm_jagged_out_backward(g, x, y)
    f = jagged_jagged_bmm_jagged_out
    assert np.isclose(_dot(gx, dx), _dot(g, f(shift(x, dx, e), y).values
                                        - f(shift(x, dx, -e), y).values) / (2 * e))
    assert np.isclose(_dot(gy, dy), _dot(g, f(x, shift(y, dy, e)).values
                                        - f(x, shift(y, dy, -e)).values) / (2 * e))

    a, da = _j2(p, rng, x), _j2(p, rng, x)
    h = _make(p, K, rng)
    ga, gx = array_jagged_bmm_jagged_out_backward(h, a, x)
    f = array_jagged_bmm_jagged_out
    assert ga.same_structure(a) and gx.same_structure(x)
    assert np.isclose(_dot(ga, da), _dot(h, f(shift(a, da, e), x).values
                                        - f(shift(a, da, -e), x).values) / (2 * e))
    assert np.isclose(_dot(gx, dx), _dot(h, f(a, shift(x, dx, e)).values
                                        - f(a, shift(x, dx, -e)).values) / (2 * e))

    t, dt = _make(p, 1, rng), _make(p, 1, rng)
    g = _j2(p, rng, t, inner=(1,))
    gt = jagged_self_subtraction_backward(g, t)
    f = jagged_self_subtraction
    assert np.isclose(_dot(gt, dt), _dot(g, f(shift(t, dt, e)).values
                                        - f(shift(t, dt, -e)).values) / (2 * e))


def _np_softmax(a, axis):
    if a.size == 0:
        return a
    m = a.max(axis=axis, keepdims=True)
    e = np.exp(a - np.where(np.isneginf(m), 0, m))
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0)


@given(problems(), st.sampled_from([1, 0, -1, -2]), st.sampled_from([(), (2,)]))
def test_jagged2_softmax(p, axis, inner):
    rng = np.random.default_rng(p["seed"])
    x = _make(p, 1, rng)
    m = _j2(p, rng, x, inner=inner)
    if m.values.size:  # a masked entry and a fully masked line (row 0 of the first matrix)
        v = m.values.astype(np.float32)
        v[0] = -np.inf
        L = next(n for n in p["lens"] if n)
        v[:L] = -np.inf if axis in (1, -1) else v[:L]
        m = m._with_values(v.astype(m.dtype))
    y = jagged2_softmax(m, x, axis=axis)
    assert y.same_structure(m) and y.dtype == m.dtype
    ax = axis % 2
    for got, mat in zip(_mats(y, x), _mats(m, x)):
        want = _np_softmax(mat, ax)
        assert not np.isnan(got).any()
        assert rel_error(got, want) <= max(TOL[np.dtype(p["dtype"])], 1e-12)


@given(problems(), st.sampled_from([1, 0]))
def test_jagged2_softmax_backward_is_the_directional_derivative(p, axis):
    p["dtype"] = np.dtype(np.float64)
    rng = np.random.default_rng(p["seed"])
    x = _make(p, 1, rng)
    m, dm, g = (_j2(p, rng, x) for _ in range(3))
    e = 1e-6
    y = jagged2_softmax(m, x, axis)
    gm = jagged2_softmax_backward(g, y, x, axis)
    fd = _dot(g, jagged2_softmax(m._with_values(m.values + e * dm.values), x, axis).values
              - jagged2_softmax(m._with_values(m.values - e * dm.values), x, axis).values) / (2 * e)
    assert np.isclose(_dot(gm, dm), fd, rtol=1e-6, atol=1e-8)


def test_jagged2_input_errors():
    x = JaggedArray(np.ones((5, 3)), lengths=[2, 3])
    m = JaggedArray(np.ones(13), jagged2_offsets(x))
    with pytest.raises(ValueError, match="jagged2 array of x's rows"):
        array_jagged_bmm_jagged_out(JaggedArray(np.ones(5), lengths=[2, 3]), x)
    with pytest.raises(TypeError, match="m must be a jagged2 JaggedArray"):
        array_jagged_bmm_jagged_out(np.ones(13), x)
    with pytest.raises(TypeError, match="give both one dtype"):
        array_jagged_bmm_jagged_out(JaggedArray(np.ones(13, np.float32), m.offsets), x)
    with pytest.raises(ValueError, match="no inner dimensions"):
        array_jagged_bmm_jagged_out(JaggedArray(np.ones((13, 2)), m.offsets), x)
    with pytest.raises(ValueError, match="one D"):
        jagged_jagged_bmm_jagged_out(x, JaggedArray(np.ones((5, 2)), lengths=[2, 3]))
    with pytest.raises(TypeError, match="signed integer or floating"):
        jagged_self_subtraction(JaggedArray(np.ones(5, np.uint32), lengths=[2, 3]))
    with pytest.raises(TypeError, match="floating values"):
        jagged_self_subtraction_backward(m, JaggedArray(np.ones(5, np.int64), lengths=[2, 3]))
    with pytest.raises(ValueError, match="max_length must be an integer"):
        jagged2_to_padded(m, x, max_length=-1)
    with pytest.raises(TypeError, match="padding_value must be a real number"):
        jagged2_to_padded(m, x, padding_value=None)
    mi = JaggedArray(np.ones(13, np.int32), m.offsets)
    for bad in (0.5, np.nan, 2**40):
        with pytest.raises(ValueError, match="padding_value"):
            jagged2_to_padded(mi, x, padding_value=bad)
    assert (jagged2_to_padded(mi, x, padding_value=-7)[0, 2:] == -7).all()
    with pytest.raises(ValueError, match="overflows float16"):
        jagged2_to_padded(JaggedArray(np.ones(13, np.float16), m.offsets), x, padding_value=1e6)
    assert np.isneginf(jagged2_to_padded(m, x, padding_value=-np.inf)[0, 2:]).all()
    with pytest.raises(ValueError, match=r"d must be \[B=2"):
        dense_jagged_cat(np.ones((3, 3)), x)
    with pytest.raises(TypeError, match="d has dtype"):
        dense_jagged_cat(np.ones((2, 3), np.float32), x)
    with pytest.raises(ValueError, match="structure of dense_jagged_cat"):
        dense_jagged_cat_backward(x, x)
    with pytest.raises(ValueError, match="axis must be 1"):
        jagged2_softmax(m, x, axis=2)
    with pytest.raises(TypeError, match="softmax takes floating values"):
        jagged2_softmax(JaggedArray(np.ones(13, np.int64), m.offsets), x)
    with pytest.raises(TypeError, match="grad must have out's dtype"):
        jagged2_softmax_backward(JaggedArray(np.ones(13, np.float32), m.offsets), m, x)
    with pytest.raises(ValueError, match="grad must have out's inner shape"):
        jagged2_softmax_backward(JaggedArray(np.ones((13, 2)), m.offsets), m, x)
    with pytest.raises(TypeError, match="grad must have x's dtype"):
        jagged_self_subtraction_backward(JaggedArray(np.ones(13, np.float32), m.offsets),
                                         JaggedArray(np.ones(5), lengths=[2, 3]))
    out = dense_jagged_cat(np.ones((2, 3)), x)
    with pytest.raises(TypeError, match="grad must have x's dtype"):  # (was returned as float32)
        dense_jagged_cat_backward(out._with_values(out.values.astype(np.float32)), x)


def test_empty_batch_and_exported():
    x = JaggedArray(np.zeros((0, 3)), np.zeros(1, dtype=np.int64))
    assert jagged_dense_bmm(x, np.zeros((0, 3, 2))).values.shape == (0, 2)
    assert jagged_jagged_bmm(x, x).shape == (0, 3, 3)
    assert jagged_jagged_bmm_jagged_out(x, x).values.shape == (0,)
    assert jagged_self_subtraction(x).values.shape == (0, 3)
    assert dense_jagged_cat(np.zeros((0, 3)), x).nrows == 0
    assert cj.interaction.jagged_dense_bmm is jagged_dense_bmm
    assert "jagged_dense_bmm" in cj.__all__ and cj.jagged_jagged_bmm is jagged_jagged_bmm


def test_input_errors_name_the_argument():
    x = JaggedArray(np.ones((5, 3)), lengths=[2, 3])
    y = np.ones((2, 3, 4))
    with pytest.raises(TypeError, match="x must be a JaggedArray"):
        jagged_dense_bmm(np.ones((5, 3)), y)
    with pytest.raises(ValueError, match="one inner dimension"):
        jagged_dense_bmm(JaggedArray(np.ones((5, 3, 2)), lengths=[2, 3]), y)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        jagged_dense_bmm(JaggedArray(np.ones((5, 3), dtype=np.int64), lengths=[2, 3]), y)
    with pytest.raises(ValueError, match=r"y must be \[B, K, N\] with B=2"):
        jagged_dense_bmm(x, np.ones((3, 3, 4)))
    with pytest.raises(ValueError, match=r"y must be \[B, K, N\] with B=2"):
        jagged_dense_bmm(x, np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"K=3"):
        jagged_dense_bmm(x, np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="give both one dtype"):
        jagged_dense_bmm(x, y.astype(np.float32))
    with pytest.raises(TypeError, match="y must be"):
        jagged_dense_bmm(x, [[[1.0]]])
    with pytest.raises(ValueError, match="same structure"):
        jagged_jagged_bmm(x, JaggedArray(np.ones((5, 2)), lengths=[3, 2]))
    with pytest.raises(TypeError, match="give both one dtype"):
        jagged_jagged_bmm(x, JaggedArray(np.ones((5, 2), dtype=bfloat16), lengths=[2, 3]))
    with pytest.raises(ValueError, match="do not match"):
        jagged_dense_bmm_backward(JaggedArray(np.ones((5, 5)), lengths=[2, 3]), x, y)
    with pytest.raises(ValueError, match=r"grad must be \[B, M=3, N=3\]"):
        jagged_jagged_bmm_backward(np.ones((2, 3, 4)), x, x)


# ---- jagged2 structure: exact small cases -----------------------------------------------------
def test_jagged2_results_record_the_largest_matrix_as_max_length():
    """A jagged2 result's max_length is the largest L_b² (what validate() measures), not L_b."""
    x = JaggedArray(np.arange(10.0).reshape(5, 2), lengths=[2, 0, 3])
    for m in (jagged_jagged_bmm_jagged_out(x, x), jagged_self_subtraction(x)):
        assert m.max_length == 9
        m.validate()
        assert m.to_padded().shape[1] == 9


def test_jagged2_offsets_are_checked_row_by_row():
    """A jagged2 argument whose offsets have the right total ΣL_b² but another split between
    rows (here the matrices of lengths [3, 2] for rows of lengths [2, 3]) is refused."""
    x = JaggedArray(np.ones((5, 3)), lengths=[2, 3])
    swapped = JaggedArray(np.ones(13), [0, 9, 13])
    with pytest.raises(ValueError, match="jagged2 array of x's rows"):
        array_jagged_bmm_jagged_out(swapped, x)
    with pytest.raises(ValueError, match="jagged2 array of x's rows"):
        jagged2_softmax(swapped, x)
    with pytest.raises(ValueError, match="jagged2 array of x's rows"):
        jagged_jagged_bmm_jagged_out_backward(swapped, x, x)


def test_array_jagged_bmm_backward_refuses_a_grad_of_another_width():
    """grad of array_jagged_bmm_jagged_out must have the width N of x: an error naming grad."""
    x = JaggedArray(np.ones((5, 3)), lengths=[2, 3])
    m = JaggedArray(np.ones(13), jagged2_offsets(x))
    with pytest.raises(ValueError, match="grad must have the shape of out"):
        array_jagged_bmm_jagged_out_backward(JaggedArray(np.ones((5, 4)), x.offsets), m, x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [bfloat16, np.float16, np.float32])
def test_gpu_matches_cpu(dtype):
    """CuPy inputs (a host round trip until the CUDA kernels land) give the CPU result, on the
    GPU."""
    import cupy

    rng = np.random.default_rng(3)
    lens = [4, 0, 1, 9]
    off = make_offsets(lens, np.int32)
    xh = JaggedArray(rng.standard_normal((14, 5)).astype(dtype), off)
    yh = rng.standard_normal((4, 5, 3)).astype(dtype)
    xd = JaggedArray(cupy.asarray(xh.values), cupy.asarray(off))
    out = jagged_dense_bmm(xd, cupy.asarray(yh))
    assert out.is_gpu and out.same_structure(xd)
    np.testing.assert_array_equal(cupy.asnumpy(out.values), jagged_dense_bmm(xh, yh).values)
    w = jagged_jagged_bmm(xd, xd)
    assert isinstance(w, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(w), jagged_jagged_bmm(xh, xh))
    with pytest.raises(TypeError, match="is on the host"):
        jagged_dense_bmm(xd, yh)
    m = jagged_jagged_bmm_jagged_out(xd, xd)
    assert m.is_gpu and np.array_equal(cupy.asnumpy(m.values),
                                       jagged_jagged_bmm_jagged_out(xh, xh).values)
    c = dense_jagged_cat(cupy.asarray(yh[:, :, 0]), xd)
    assert c.is_gpu and c.tolist() == dense_jagged_cat(yh[:, :, 0], xh).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [bfloat16, np.float16, np.float32])
def test_gpu_jagged2_array_code_matches_cpu(dtype):
    """jagged2_softmax (both axes), its backward, jagged2_to_padded and the self-subtraction
    (and its backward) are array code over the row-wise kernels and to_padded: on CuPy they run
    those CUDA kernels and agree with the CPU (a line of -inf gives zeros; truncation, padding
    and the differences exact)."""
    import cupy

    rng = np.random.default_rng(4)
    lens = [4, 0, 1, 9, 40, 3]
    xh = JaggedArray(np.zeros((sum(lens), 1), dtype), make_offsets(lens))
    xd = JaggedArray(cupy.asarray(xh.values), cupy.asarray(xh.offsets))
    n = sum(L * L for L in lens)
    vh = rng.standard_normal((n, 2)).astype(np.float32)
    vh[:4] = -np.inf  # the first line of the first matrix
    mh, gh = (JaggedArray(v.astype(dtype), jagged2_offsets(xh))
              for v in (vh, rng.standard_normal((n, 2)).astype(np.float32)))
    md, gd = (JaggedArray(cupy.asarray(a.values), cupy.asarray(a.offsets)) for a in (mh, gh))
    tol = max(TOL[np.dtype(dtype)], 1e-6)
    for axis in (1, 0):
        yh, yd = jagged2_softmax(mh, xh, axis), jagged2_softmax(md, xd, axis)
        assert yd.is_gpu and yd.same_structure(md)
        got = cupy.asnumpy(yd.values).astype(np.float64)
        assert not np.isnan(got).any() and rel_error(got, yh.values.astype(np.float64)) <= tol
        bh = jagged2_softmax_backward(gh, yh, xh, axis)
        bd = jagged2_softmax_backward(gd, yd, xd, axis)
        assert rel_error(cupy.asnumpy(bd.values).astype(np.float64),
                         bh.values.astype(np.float64)) <= 4 * tol
    for M in (None, 5, 0):
        np.testing.assert_array_equal(
            cupy.asnumpy(jagged2_to_padded(md, xd, max_length=M, padding_value=-3)),
            jagged2_to_padded(mh, xh, max_length=M, padding_value=-3))
    xh = JaggedArray(rng.standard_normal((sum(lens), 2)).astype(dtype), xh.offsets)
    xd = JaggedArray(cupy.asarray(xh.values), cupy.asarray(xh.offsets))
    sd = jagged_self_subtraction(xd)
    assert sd.is_gpu and sd.same_structure(md)
    np.testing.assert_array_equal(cupy.asnumpy(sd.values), jagged_self_subtraction(xh).values)
    assert rel_error(cupy.asnumpy(jagged_self_subtraction_backward(gd, xd).values).astype(
        np.float64), jagged_self_subtraction_backward(gh, xh).values.astype(np.float64)) <= tol


def _gpu_pair(rng, lens, dims, dtype, off_dtype=np.int64):
    """Host and device JaggedArrays of one structure with random values ``[ΣL, d]`` for each
    d in dims."""
    import cupy

    off = make_offsets(lens, off_dtype)
    hs = [JaggedArray(rng.standard_normal((sum(lens), d)).astype(dtype), off) for d in dims]
    return hs, [JaggedArray(cupy.asarray(h.values), cupy.asarray(off)) for h in hs]


def _f64(x):
    return JaggedArray(np.asarray(x.values, dtype=np.float64), x.offsets)


@pytest.mark.gpu
@pytest.mark.parametrize("bn", [None, 64, 128])
@given(lengths(max_rows=10, max_len=70), st.sampled_from([8, 16, 40, 128, 136]),
       st.sampled_from([8, 24, 64, 72, 128, 200]), st.sampled_from([bfloat16, np.float16]),
       st.sampled_from(OFFSET_DTYPES), st.integers(0, 2**16))
def test_gpu_bmm_kernels_match_numba(bn, lens, K, N, dtype, off_dtype, seed):
    """The tensor-core kernels (16-bit, inner sizes multiples of 8), each block width, against
    the float64 Numba reference: rows of every length (tiles past the row end, empty rows:
    zeros from jagged_jagged_bmm), K / M past one k-step or row tile, N past a column tile; the
    outputs are poisoned by the test allocator."""
    import cupy

    from cujagged import interaction

    rng = np.random.default_rng(seed)
    (xh, gh), (xd, gd) = _gpu_pair(rng, lens, (K, N), dtype, off_dtype)
    yh = rng.standard_normal((len(lens), K, N)).astype(dtype)
    saved, interaction._BN = interaction._BN, bn
    try:
        out = jagged_dense_bmm(xd, cupy.asarray(yh)).values
        w = jagged_jagged_bmm(xd, gd)
    finally:
        interaction._BN = saved
    for got, ref in ((out, jagged_dense_bmm(_f64(xh), yh.astype(np.float64)).values),
                     (w, jagged_jagged_bmm(_f64(xh), _f64(gh)))):
        got = cupy.asnumpy(got).astype(np.float64)
        assert got.shape == ref.shape and not np.isnan(got).any()
        assert rel_error(got, ref) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("bn", [None, 64, 128])
@given(lengths(max_rows=8, max_len=150), st.sampled_from([8, 40, 64, 136]),
       st.sampled_from([8, 24, 72, 128, 200]), st.sampled_from([bfloat16, np.float16]),
       st.sampled_from(OFFSET_DTYPES), st.integers(0, 2**16))
def test_gpu_jagged2_bmm_kernels_match_numba(bn, lens, D, N, dtype, off_dtype, seed):
    """The jagged2 tensor-core kernels against the float64 Numba reference: x_b y_bᵀ as jagged2
    (unaligned L x L rows, tiles past L both ways, empty rows), m_b x_b and, through the
    backwards, m_bᵀ x_b; outputs poisoned by the test allocator."""
    import cupy

    from cujagged import interaction

    rng = np.random.default_rng(seed)
    (xh, yh, zh), (xd, yd, zd) = _gpu_pair(rng, lens, (D, D, N), dtype, off_dtype)
    n2 = sum(L * L for L in lens)
    gh = JaggedArray(rng.standard_normal(n2).astype(dtype), jagged2_offsets(xh))
    gd = JaggedArray(cupy.asarray(gh.values), cupy.asarray(gh.offsets))
    saved, interaction._BN = interaction._BN, bn
    try:
        m = jagged_jagged_bmm_jagged_out(xd, yd).values
        a = array_jagged_bmm_jagged_out(gd, zd).values
        bx, by = jagged_jagged_bmm_jagged_out_backward(gd, xd, yd)
    finally:
        interaction._BN = saved
    x64, y64, z64, g64 = _f64(xh), _f64(yh), _f64(zh), _f64(gh)
    rx, ry = jagged_jagged_bmm_jagged_out_backward(g64, x64, y64)
    for got, ref in ((m, jagged_jagged_bmm_jagged_out(x64, y64).values),
                     (a, array_jagged_bmm_jagged_out(g64, z64).values),
                     (bx.values, rx.values), (by.values, ry.values)):
        got = cupy.asnumpy(got).astype(np.float64)
        assert got.shape == ref.shape and not np.isnan(got).any()
        assert rel_error(got, ref) <= 1e-2


@pytest.mark.gpu
def test_gpu_bmm_long_rows_backward_and_fallback():
    """Long rows (many item tiles; a 3,000-item reduction), both backwards (dense and transposed
    operands through the kernels), and inner sizes not multiples of 8 (the host path) agree
    with the float64 CPU result."""
    import cupy

    rng = np.random.default_rng(1)
    for lens, K, N in (([3000, 0, 17], 64, 128), ([5, 7], 12, 20)):
        (xh, gh), (xd, gd) = _gpu_pair(rng, lens, (K, N), bfloat16)
        yh = rng.standard_normal((len(lens), K, N)).astype(bfloat16)
        yd = cupy.asarray(yh)
        x64, g64, y64 = _f64(xh), _f64(gh), yh.astype(np.float64)
        pairs = [(jagged_dense_bmm(xd, yd).values, jagged_dense_bmm(x64, y64).values),
                 (jagged_jagged_bmm(xd, gd), jagged_jagged_bmm(x64, g64))]
        for got, ref in zip(jagged_dense_bmm_backward(gd, xd, yd),
                            jagged_dense_bmm_backward(g64, x64, y64)):
            pairs.append((getattr(got, "values", got), getattr(ref, "values", ref)))
        w = rng.standard_normal((len(lens), K, N)).astype(bfloat16)
        for got, ref in zip(jagged_jagged_bmm_backward(cupy.asarray(w), xd, gd),
                            jagged_jagged_bmm_backward(w.astype(np.float64), x64, g64)):
            pairs.append((got.values, ref.values))
        for got, ref in pairs:
            assert rel_error(cupy.asnumpy(got).astype(np.float64), ref) <= 1e-2


def test_jagged2_offsets_are_cached_but_not_shared():
    """x's jagged2 offsets are computed once per structure; what callers get are copies (an
    edit of one result leaves the next call and other results intact)."""
    x = JaggedArray(np.ones((7, 2)), make_offsets([3, 0, 4]))
    a = jagged2_offsets(x)
    a[:] = -1
    m = jagged_jagged_bmm_jagged_out(x, x)
    assert jagged2_offsets(x).tolist() == [0, 9, 9, 25] == m.offsets.tolist()
    m.offsets[:] = 0
    assert jagged_jagged_bmm_jagged_out(x, x).offsets.tolist() == [0, 9, 9, 25]
    assert jagged_self_subtraction(x._with_values(x.values[:, 0])).offsets.tolist() == [
        0, 9, 9, 25]
