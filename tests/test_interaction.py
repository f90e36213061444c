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
    jagged_dense_bmm,
    jagged_dense_bmm_backward,
    jagged_jagged_bmm,
    jagged_jagged_bmm_backward,
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


def test_empty_batch_and_exported():
    x = JaggedArray(np.zeros((0, 3)), np.zeros(1, dtype=np.int64))
    assert jagged_dense_bmm(x, np.zeros((0, 3, 2))).values.shape == (0, 2)
    assert jagged_jagged_bmm(x, x).shape == (0, 3, 3)
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
