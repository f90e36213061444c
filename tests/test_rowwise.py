"""Row-wise ops: reductions, softmax, cumsum, sort, elementwise (CPU reference vs float64 NumPy
loops; GPU kernels vs the Numba twins; backward vs finite differences on the CPU)."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from strategies import FLOAT_DTYPES, INNER_SHAPES, OFFSET_DTYPES, TOL, lengths, make_offsets

from cujagged import JaggedArray, bfloat16
from cujagged import rowwise as R
from cujagged._backend import xp_of

if os.environ.get("CJ_NO_SHRINK"):  # quick GPU checks: report failures without shrinking
    _n = int(os.environ.get("CJ_MAX_EXAMPLES", "0"))
    settings.register_profile("cj_no_shrink", settings.get_profile(
        os.environ.get("HYPOTHESIS_PROFILE", "default")),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        **({"max_examples": _n} if _n else {}))
    settings.load_profile("cj_no_shrink")

REDUCTIONS = ["sum", "mean", "prod", "max", "min", "argmax", "argmin", "logsumexp", "any", "all"]
INT_OK = {"sum", "prod", "max", "min", "argmax", "argmin", "any", "all", "mean"}


# ---- helpers -------------------------------------------------------------------------------
def make_x(lens, inner, dtype, off_dtype, seed, scale=1.0, ties=False, special=False):
    """Random jagged batch; ``ties``: many equal values; ``special``: some NaN / +-inf."""
    rng = np.random.default_rng(seed)
    T = int(sum(lens))
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        vals = rng.integers(-5 if ties else -1000, 5 if ties else 1000, size=(T, *inner))
    else:
        vals = rng.standard_normal((T, *inner)) * scale
        if ties:
            vals = np.round(vals)
        if special and vals.size:
            flat = vals.reshape(-1)
            k = rng.integers(1, 4)
            flat[rng.choice(flat.size, size=min(k, flat.size), replace=False)] = rng.choice(
                [np.nan, np.inf, -np.inf], size=min(k, flat.size))
    vals = vals.astype(np.float32).astype(dtype) if dtype.kind == "f" or dtype == bfloat16 \
        else vals.astype(dtype)
    return JaggedArray(vals, make_offsets(lens, off_dtype))


@contextlib.contextmanager
def _sched(**overrides):
    """GPU scheduling thresholds (``rowwise._SCHED``) overridden inside the block."""
    saved = dict(R._SCHED)
    R._SCHED.update(overrides)
    try:
        yield
    finally:
        R._SCHED.clear()
        R._SCHED.update(saved)


def rows64(x, trunc=None):
    off = np.asarray(x.offsets, dtype=np.int64)
    v = np.asarray(x.values).astype(np.float64)
    return [v[off[b]:off[b + 1]][:trunc] for b in range(x.nrows)]


def ref_reduce(name, x, trunc=None):
    inner = x.inner_shape
    out = []
    for r in rows64(x, trunc):
        n = r.shape[0]
        if name == "sum":
            o = r.sum(0)
        elif name == "mean":
            o = r.mean(0) if n else np.full(inner, np.nan)
        elif name == "prod":
            o = r.prod(0)
        elif name in ("max", "min"):
            if n:
                o = r.max(0) if name == "max" else r.min(0)
            else:
                info = np.iinfo(x.dtype) if x.dtype.kind in "iu" else None
                o = np.full(inner, (info.min if name == "max" else info.max) if info
                            else (-np.inf if name == "max" else np.inf))
        elif name in ("argmax", "argmin"):
            o = (r.argmax(0) if name == "argmax" else r.argmin(0)) if n else np.full(inner, -1)
        elif name == "logsumexp":
            if n:
                m = r.max(0)
                ms = np.where(np.isfinite(m), m, 0.0)
                with np.errstate(divide="ignore"):
                    o = ms + np.log(np.exp(r - ms).sum(0))
                o = np.where(np.isfinite(m), o, m)
            else:
                o = np.full(inner, -np.inf)
        elif name == "any":
            o = (r != 0).any(0)
        elif name == "all":
            o = (r != 0).all(0)
        out.append(np.broadcast_to(o, inner))
    return np.array(out, dtype=np.float64).reshape((x.nrows, *inner))


def assert_close(out, ref, dtype, exact=False):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.array_equal(np.isnan(out), np.isnan(ref)), (out, ref)
    inf_o, inf_r = np.isinf(out), np.isinf(ref)
    assert np.array_equal(inf_o, inf_r), (out, ref)
    assert np.array_equal(out[inf_o], ref[inf_r])
    fin = np.isfinite(ref)
    if exact:
        assert np.array_equal(out[fin], ref[fin]), (out, ref)
        return
    o, r = out[fin], ref[fin]
    tol = TOL.get(np.dtype(dtype), 0.0) if (np.dtype(dtype).kind == "f"
                                            or np.dtype(dtype) == bfloat16) else 1e-12
    den = np.linalg.norm(r)
    err = np.linalg.norm(o - r) / den if den > 0 else np.linalg.norm(o - r)
    # 16-bit outputs are rounded once more than the float64 reference
    assert err <= 2 * tol + 1e-300 or np.allclose(o, r, rtol=2 * tol, atol=2 * tol), (err, o, r)


ALL_DTYPES = [*FLOAT_DTYPES, np.dtype(np.int32), np.dtype(np.int64)]


@st.composite
def cases(draw, dtypes=None, max_len=40):
    lens = draw(lengths(max_len=max_len))
    inner = draw(st.sampled_from(INNER_SHAPES))
    dtype = draw(st.sampled_from(dtypes or FLOAT_DTYPES))
    off_dtype = draw(st.sampled_from(OFFSET_DTYPES))
    trunc = draw(st.one_of(st.none(), st.integers(0, 2 * max_len)))
    seed = draw(st.integers(0, 2**31 - 1))
    return lens, inner, dtype, off_dtype, trunc, seed


# ---- CPU (Numba) against float64 NumPy loops -------------------------------------------------
@pytest.mark.parametrize("name", REDUCTIONS)
@given(case=cases(dtypes=ALL_DTYPES), ties=st.booleans(), special=st.booleans())
def test_cpu_reductions_match_numpy(name, case, ties, special):
    lens, inner, dtype, off_dtype, trunc, seed = case
    if np.dtype(dtype).kind in "iu" and name not in INT_OK:
        dtype = np.float32
    x = make_x(lens, inner, dtype, off_dtype, seed, ties=ties, special=special)
    if name == "prod" and x.dtype.kind in "iu":  # keep integer products exact
        x = x._with_values(x.values % 3 - 1)
    out = getattr(R, name)(x, max_length=trunc)
    ref = ref_reduce(name, x, trunc)
    assert out.shape == (x.nrows, *x.inner_shape)
    exact = name in ("max", "min", "argmax", "argmin", "any", "all") or x.dtype.kind in "iu"
    if name in ("argmax", "argmin"):
        assert out.dtype == np.int64
    if name in ("any", "all"):
        assert out.dtype == np.bool_
    assert_close(out, ref, x.dtype, exact=exact and name != "mean")


def test_empty_row_semantics_cpu():
    x = JaggedArray(np.array([1.0, -2.0], np.float32), [0, 0, 2])
    assert R.sum(x)[0] == 0 and R.prod(x)[0] == 1
    assert R.max(x)[0] == -np.inf and R.min(x)[0] == np.inf
    assert R.argmax(x)[0] == -1 and R.argmin(x)[0] == -1
    assert np.isnan(R.mean(x)[0]) and R.logsumexp(x)[0] == -np.inf
    assert not R.any(x)[0] and R.all(x)[0]
    assert R.max(x, initial=5.0).tolist() == [5.0, 5.0]
    assert R.min(x, initial=5.0).tolist() == [5.0, -2.0]
    xi = JaggedArray(np.array([3, 4], np.int32), [0, 0, 2])
    assert R.max(xi)[0] == np.iinfo(np.int32).min and R.min(xi)[0] == np.iinfo(np.int32).max


# rows whose finite part under- or overflows the accumulator, with an infinity or a zero in it
def _prod_special_rows(tiny, huge):
    rows = [[tiny] * 40 + [np.inf] + [tiny] * 40,      # inf, however small the rest: inf
            [-tiny] * 41 + [np.inf] + [tiny] * 40,     # the sign of the product: -inf
            [huge] * 40 + [0.0] + [huge] * 40,         # zero, however large the rest: 0
            [huge] * 40 + [-0.0] + [huge] * 40,        # -0
            [tiny, 0.0, np.inf, tiny],                 # a zero meets an infinity: NaN
            [2.0, np.nan, np.inf], [], [3.0, -0.5]]
    want = [np.inf, -np.inf, 0.0, -0.0, np.nan, np.nan, 1.0, -1.5]
    return rows, want


def _check_prod(got, want):
    got = np.asarray(got, dtype=np.float64)
    for g, w in zip(got, want):
        assert (np.isnan(g) and np.isnan(w)) or (g == w and np.signbit(g) == np.signbit(w)), \
            (got, want)


def test_prod_special_values_do_not_depend_on_order():
    """A zero or an infinity decides the product whatever the finite part's rounding: float64
    accumulation on the CPU under- / overflows at 1e-200 ** 2 / 1e200 ** 2."""
    rows, want = _prod_special_rows(1e-200, 1e200)
    x = JaggedArray.from_list([np.array(r, np.float64) for r in rows])
    _check_prod(R.prod(x), want)


def test_axis_and_validation():
    x = JaggedArray(np.ones((5, 3), np.float32), [0, 2, 5])
    np.testing.assert_array_equal(R.sum(x, dim=1), R.sum(x, axis=-2))
    np.testing.assert_array_equal(x.sum(), R.sum(x, axis=1))
    with pytest.raises(ValueError, match="axis must be 1"):
        R.sum(x, axis=0)
    with pytest.raises(ValueError, match="axis must be 1"):
        R.softmax(x, axis=2)
    with pytest.raises(TypeError, match="JaggedArray"):
        R.sum(np.ones(3))
    with pytest.raises(ValueError, match="max_length"):
        R.sum(x, max_length=-1)
    with pytest.raises(ValueError, match="shape"):
        R.sum_backward(np.ones((3, 3), np.float32), x)


def ref_softmax(x, trunc, log):
    off = np.asarray(x.offsets, dtype=np.int64)
    v = np.asarray(x.values).astype(np.float64)
    out = np.zeros_like(v)
    for b in range(x.nrows):
        s, e = off[b], off[b + 1]
        r = v[s:e][:trunc]
        if r.shape[0] == 0:
            continue
        m = r.max(0)
        ok = m > -np.inf
        ms = np.where(ok, m, 0.0)
        ex = np.exp(r - ms)
        ssum = ex.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            res = (r - ms - np.log(ssum)) if log else ex / ssum
        out[s:s + r.shape[0]] = np.where(ok, res, 0.0)
    return out


@pytest.mark.parametrize("log", [False, True])
@given(case=cases(), big=st.booleans())
def test_cpu_softmax_matches_numpy(log, case, big):
    lens, inner, dtype, off_dtype, trunc, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed, scale=300.0 if big else 1.0)
    f = R.log_softmax if log else R.softmax
    out = f(x, max_length=trunc)
    assert isinstance(out, JaggedArray) and out.same_structure(x)
    o = np.asarray(out.values, np.float64)
    assert not np.isnan(o).any()
    assert_close(o, ref_softmax(x, trunc, log), x.dtype)


def _check_all_neg_inf_row(x):
    def host(a):  # NumPy or CuPy values as float64 NumPy
        return (a.get() if hasattr(a, "get") else np.asarray(a)).astype(np.float64)

    n = int(host(x.offsets)[1])  # the first row is all -inf
    g = x._with_values(xp_of(x.values).full_like(x.values, 3))  # grad 3 everywhere
    for f, fb in ((R.softmax, R.softmax_backward), (R.log_softmax, R.log_softmax_backward)):
        y = f(x)
        out = host(y.values)
        assert not np.isnan(out).any()
        assert np.all(out[:n] == 0)
        # its output does not depend on the input: gradient 0 (log-softmax gave g - sum(g))
        grad = host(fb(g, y).values)
        assert np.all(grad[:n] == 0), grad[:n]
        assert not np.isnan(grad).any()
    np.testing.assert_allclose(host(R.softmax(x).values)[n:][-3:], [0, 0, 1], atol=1e-7)


def test_softmax_all_neg_inf_row_gives_zeros():
    v = np.array([-np.inf, -np.inf, 1.0, 2.0, 1e30], np.float32)
    _check_all_neg_inf_row(JaggedArray(v, [0, 2, 5]))


def test_softmax_of_integers_is_a_clear_error():
    x = JaggedArray(np.array([1, 2, 3]), [0, 3])
    for f in (R.softmax, R.log_softmax):
        with pytest.raises(TypeError, match=r"^x must have a floating dtype, got int64$"):
            f(x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16, np.dtype(np.float16)])
def test_gpu_softmax_all_neg_inf_row_gives_zeros(dtype):
    big = 1e30 if dtype != np.float16 else 6e4
    v = np.array([-np.inf, -np.inf, 1.0, 2.0, big], np.float32).astype(dtype)
    _check_all_neg_inf_row(_gpu(JaggedArray(v, [0, 2, 5])))


@pytest.mark.gpu
def test_gpu_long_all_neg_inf_row_gives_zeros():
    """The same through the split path (a row of 4 MB: reduction by units, then rowbcast)."""
    n = 1 << 20
    v = np.concatenate([np.full(n, -np.inf), [1.0, 2.0, 1e30]]).astype(np.float32)
    _check_all_neg_inf_row(_gpu(JaggedArray(v, [0, n, n + 3])))


@given(case=cases(dtypes=[*FLOAT_DTYPES, np.dtype(np.int32)]), exclusive=st.booleans(),
       reverse=st.booleans())
def test_cpu_cumsum_matches_numpy(case, exclusive, reverse):
    lens, inner, dtype, off_dtype, _, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed)
    out = R.cumsum(x, exclusive=exclusive, reverse=reverse)
    off = np.asarray(x.offsets, np.int64)
    v = np.asarray(x.values).astype(np.float64)
    ref = np.zeros_like(v)
    for b in range(x.nrows):
        r = v[off[b]:off[b + 1]]
        if reverse:
            r = r[::-1]
        c = np.cumsum(r, axis=0)
        if exclusive:
            c = c - r
        ref[off[b]:off[b + 1]] = c[::-1] if reverse else c
    assert_close(out.values, ref, x.dtype)


def _stable_order(row, descending):
    key = [(-float(v) if descending else float(v), i) for i, v in enumerate(row)]
    return [i for _, i in sorted(key)]


@given(case=cases(dtypes=[np.dtype(np.float32), bfloat16, np.dtype(np.int64)]),
       descending=st.booleans(), k=st.integers(0, 6))
def test_cpu_sort_argsort_topk(case, descending, k):
    lens, inner, dtype, off_dtype, _, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed, ties=True)
    s, a = R.sort(x, descending=descending), R.argsort(x, descending=descending)
    tv, ti = R.topk(x, k, largest=descending)
    off = np.asarray(x.offsets, np.int64)
    toff = np.asarray(tv.offsets)
    C = int(np.prod(inner, dtype=np.int64))
    v = np.asarray(x.values).astype(np.float64).reshape(len(x.values), C)
    sv = np.asarray(s.values).astype(np.float64).reshape(len(x.values), C)
    av = np.asarray(a.values).reshape(len(x.values), C)
    tvv = np.asarray(tv.values).astype(np.float64).reshape(-1, v.shape[1])
    tiv = np.asarray(ti.values).reshape(-1, v.shape[1])
    for b in range(x.nrows):
        r = v[off[b]:off[b + 1]]
        assert toff[b + 1] - toff[b] == min(len(r), k)
        for c in range(v.shape[1]):
            order = _stable_order(r[:, c], descending)
            assert av[off[b]:off[b + 1], c].tolist() == order
            assert sv[off[b]:off[b + 1], c].tolist() == r[order, c].tolist()
            assert tiv[toff[b]:toff[b + 1], c].tolist() == order[:k]
            assert tvv[toff[b]:toff[b + 1], c].tolist() == r[order[:k], c].tolist()


# ---- elementwise ---------------------------------------------------------------------------
def _expand(x, other, kind):
    off = np.asarray(x.offsets, np.int64)
    rows = np.repeat(np.arange(x.nrows), np.diff(off))
    pos = np.arange(len(x.values)) - off[rows]
    o = np.asarray(other)
    return o[rows] if kind == "rows" else o[rows, pos]


ELEMENTWISE = {"add": (lambda a, b: a + b), "sub": (lambda a, b: a - b),
               "rsub": (lambda a, b: b - a), "mul": (lambda a, b: a * b),
               "div": (lambda a, b: a / b), "rdiv": (lambda a, b: b / a),
               "maximum": np.maximum, "minimum": np.minimum}


def _elementwise_case(case, kind, pad):
    """(x, other) on the host: ``other`` is a jagged array of x's structure, a per-row array
    ``[B, *inner]``, a padded array ``[B, max_length + pad, *inner]`` or the scalar 1.5."""
    lens, inner, dtype, off_dtype, _, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed)
    rng = np.random.default_rng(seed + 1)
    if kind == "jagged":
        return x, JaggedArray(rng.standard_normal(x.values.shape).astype(dtype),
                              np.asarray(x.offsets).copy())
    if kind == "scalar":
        return x, 1.5
    shape = (x.nrows, *x.inner_shape) if kind == "rows" else \
        (x.nrows, x.max_length + pad, *x.inner_shape)
    return x, (rng.standard_normal(shape) + 3).astype(dtype)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
@given(case=cases(), kind=st.sampled_from(["jagged", "rows", "padded", "scalar"]))
def test_cpu_elementwise(op, case, kind):
    dtype = case[2]
    x, other = _elementwise_case(case, kind, pad=1)
    if kind == "jagged":
        o64 = np.asarray(other.values, np.float64)
    elif kind == "scalar":
        o64 = other
    else:
        o64 = _expand(x, other.astype(np.float64), kind)
    x64 = np.asarray(x.values, np.float64)
    f = ELEMENTWISE[op]
    out = f(x, other)
    assert isinstance(out, JaggedArray) and out.same_structure(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = f(x64, o64).astype(dtype)  # overflow to inf in 16-bit types, as the op does
    assert_close(np.asarray(out.values, np.float64), ref, dtype)


def test_elementwise_ufuncs_and_errors():
    x = JaggedArray(np.arange(6, dtype=np.float32), [0, 2, 6])
    y = JaggedArray(np.ones(6, np.float32), np.array([0, 2, 6], np.int32))
    np.testing.assert_allclose(np.exp(x).values, np.exp(x.values))
    np.testing.assert_allclose((-x).values, -x.values)
    np.testing.assert_allclose(abs(-x).values, x.values)
    np.testing.assert_allclose((x * y + 1).values, x.values + 1)
    np.testing.assert_allclose((2 ** x).values, 2 ** x.values)
    np.testing.assert_array_equal((x > 2).values, x.values > 2)
    np.testing.assert_allclose(np.add(np.array([1, 2], np.float32), x).values,
                               x.values + np.array([1, 1, 2, 2, 2, 2]))
    dense = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(R.jagged_dense_elementwise_add(x, dense).values,
                               x.values + np.array([0, 1, 5, 6, 7, 8]))
    np.testing.assert_allclose(R.jagged_dense_elementwise_mul(x, dense).values,
                               x.values * np.array([0, 1, 5, 6, 7, 8]))
    z = JaggedArray(np.ones(6, np.float32), [0, 3, 6])
    with pytest.raises(ValueError, match="same structure"):
        x + z
    with pytest.raises(ValueError, match="does not match"):
        x + np.ones(5, np.float32)
    with pytest.raises(ValueError, match="max_len"):
        x + np.ones((2, 3), np.float32)
    # per-row operands broadcast over the items' own shape, NumPy-style; mismatches are errors
    x2 = JaggedArray(np.arange(12, dtype=np.float32).reshape(6, 2), [0, 2, 6])
    w = np.array([[2], [3]], np.float32)
    np.testing.assert_allclose((x2 * w).values, x2.values * np.array([2, 2, 3, 3, 3, 3])[:, None])
    with pytest.raises(ValueError, match="does not match"):
        x2 * np.ones((2, 3), np.float32)
    # == and != are element-wise like every other comparison (and make the array unhashable)
    np.testing.assert_array_equal((x == 2).values, x.values == 2)
    np.testing.assert_array_equal((x != y).values, x.values != y.values)
    with pytest.raises(TypeError):
        hash(x)
    # a torch tensor has ndim and shape too: it was indexed as a padded operand and became the
    # values of a broken JaggedArray
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="got torch.Tensor; a torch tensor crosses"):
        x + torch.ones(2)
    with pytest.raises(TypeError, match="must be a JaggedArray, a scalar, or a NumPy"):
        x * [1.0, 2.0]


def test_review_fixes_numpy_protocol():
    """What a NumPy user tries: every operator and its reflected / in-place form, multi-output
    ufuncs on an empty batch, gufuncs and axis=None refused, dtype= cast from the accumulator,
    astype / round / clip / np.cumsum, initial= with int32 offsets, topk with no columns."""
    x = JaggedArray(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 3, 3, 4], np.int32))
    xi = JaggedArray(np.array([6, 3, 5]), [0, 2, 3])
    for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
        f = getattr(np, {"add": "add", "sub": "subtract", "mul": "multiply",
                         "truediv": "true_divide", "floordiv": "floor_divide", "mod": "remainder",
                         "pow": "power"}[op])
        np.testing.assert_array_equal(getattr(x, f"__{op}__")(2).values, f(x.values, 2))
        np.testing.assert_array_equal(getattr(x, f"__r{op}__")(2).values, f(2, x.values))
    for op, f in (("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                  ("lshift", np.left_shift), ("rshift", np.right_shift)):
        np.testing.assert_array_equal(getattr(xi, f"__{op}__")(1).values, f(xi.values, 1))
        np.testing.assert_array_equal(getattr(xi, f"__r{op}__")(1).values, f(1, xi.values))
    q, r = divmod(x, 2)
    np.testing.assert_array_equal(q.values, x.values // 2)
    np.testing.assert_array_equal(r.values, x.values % 2)
    y = x.astype(np.float64, copy=True)
    y += 1  # in place: the same array, new values
    np.testing.assert_array_equal(y.values, x.values + 1)
    with pytest.raises(ValueError, match="same structure"):
        np.add(x, 1, out=JaggedArray(np.zeros(4), [0, 1, 2, 4]))
    empty = JaggedArray(np.zeros(0), [0, 0])
    for res in (np.divmod(empty, 2.0), np.modf(empty), np.frexp(JaggedArray(np.zeros(0), [0]))):
        assert all(isinstance(a, JaggedArray) and a.values.shape == (0,) for a in res)
    with pytest.raises(TypeError, match="generalized ufunc"):
        np.matmul(x, x)
    with pytest.raises(ValueError, match="axis=None"):
        np.sum(x)
    h = JaggedArray(np.full(10, 7000, np.float16), [0, 10])
    assert h.sum(dtype=np.float32).tolist() == [70000.0]
    assert np.sum(h, axis=1, dtype=np.float64).tolist() == [70000.0]
    m = JaggedArray(np.array([1, 2, 2], np.float16) / np.float16(3), [0, 3])
    assert m.mean(dtype=np.float64)[0] == np.mean(m.values, dtype=np.float64)
    assert x.astype(np.float32).dtype == np.float32 and x.astype(x.dtype, copy=False) is x
    np.testing.assert_array_equal(np.round(x / 3, 1).values, np.round(x.values / 3, 1))
    np.testing.assert_array_equal(np.clip(x, 1.5, np.array([2.0, 0.0, 9.0])).values,
                                  [1.5, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(np.cumsum(x, axis=1).values, [1.0, 3.0, 6.0, 4.0])
    assert x.max(initial=0.0).tolist() == [3.0, 0.0, 4.0]
    assert x.min(initial=9.0).tolist() == [1.0, 9.0, 4.0]
    # initial in the values' dtype, as NumPy (a float64 round trip lost int64's last bits)
    big = np.array([2**62 + 1, -1, 5], np.int64)
    xb = JaggedArray(big, [0, 1, 2, 2, 3])
    rows = (big[:1], big[1:2], big[2:2], big[2:3])
    assert xb.max(initial=0.5).tolist() == [np.max(r, initial=0.5) for r in rows]
    assert xb.min(initial=0.5).tolist() == [np.min(r, initial=0.5) for r in rows]
    for dt, init in ((np.uint8, -1), (np.int8, 1000)):  # out of range: NumPy's error, not a wrap
        with pytest.raises(OverflowError):
            JaggedArray(np.ones(3, dt), [0, 1, 3]).max(initial=init)
    vals, idx = JaggedArray(np.zeros((2, 0)), [0, 2]).topk(1)
    assert vals.values.shape == (1, 0) and idx.values.shape == (1, 0)
    with pytest.raises(TypeError, match="integer array"):
        R.max_backward(np.ones(3), x, indices=np.array([0.0, 1.7, 0.0]))
    with pytest.raises(ValueError, match=r"sum\(lengths\) must equal len\(values\) = 5, got 4"):
        JaggedArray(np.arange(5.0), lengths=[2, 2])


def test_numpy_functions_and_unsupported_dtypes():
    x = JaggedArray(np.arange(10.0).reshape(5, 2), np.array([0, 2, 2, 5], np.int32))
    for name in ("sum", "mean", "max", "min", "argmax", "argmin", "prod", "any", "all"):
        np.testing.assert_array_equal(getattr(np, name)(x, axis=1), getattr(x, name)())
    assert np.sum(x, axis=1, dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="out="):
        np.sum(x, axis=1, out=np.empty((3, 2)))
    vals, idx = R.topk(x, 1)
    assert vals.offsets.dtype == np.int32 and idx.offsets.dtype == np.int32
    z = JaggedArray(np.ones(3, np.complex64), [0, 3])
    with pytest.raises(TypeError, match="complex64"):
        R.sum(z)


@pytest.mark.parametrize("name", REDUCTIONS + ["softmax", "log_softmax"])
def test_huge_max_length_means_no_truncation(name):
    """A "no limit" spelled as sys.maxsize must not overflow offsets + limit (it crashed)."""
    import sys

    x = JaggedArray(np.array([1., 2, 3, 4, 5], np.float32), [0, 3, 3, 5])
    op = getattr(R, name)
    got, want = op(x, max_length=sys.maxsize), op(x)
    got, want = (a.values if isinstance(a, JaggedArray) else a for a in (got, want))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---- backward: finite differences in float64 on the CPU ---------------------------------------
def _fd_check(f, fb, x, w, n_checks=6, seed=0, eps=1e-6):
    """d(sum(w * f(x)))/dx from ``fb`` against central differences at random items."""
    g = np.asarray(fb(x, w).values)
    v = np.array(x.values, dtype=np.float64)
    flat = v.reshape(-1)
    if flat.size == 0:
        return

    def loss(vals):
        out = f(x._with_values(vals.reshape(v.shape)))
        out = out.values if isinstance(out, JaggedArray) else out
        ww = w.values if isinstance(w, JaggedArray) else w
        return float((np.asarray(out) * np.asarray(ww)).sum())

    rng = np.random.default_rng(seed)
    for i in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
        p, m = flat.copy(), flat.copy()
        p[i] += eps
        m[i] -= eps
        fd = (loss(p) - loss(m)) / (2 * eps)
        assert abs(fd - g.reshape(-1)[i]) <= 1e-5 * max(1.0, abs(fd)), (i, fd, g.reshape(-1)[i])


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "logsumexp"])
@given(case=cases(dtypes=[np.dtype(np.float64)], max_len=12))
def test_cpu_reduction_backward_finite_differences(name, case):
    lens, inner, _, off_dtype, trunc, seed = case
    x = make_x(lens, inner, np.float64, off_dtype, seed)
    w = np.random.default_rng(seed + 1).standard_normal((x.nrows, *inner))
    f = lambda z: np.nan_to_num(getattr(R, name)(z, max_length=trunc), neginf=0.0,  # noqa: E731
                                posinf=0.0)
    fb = lambda z, g: getattr(R, f"{name}_backward")(g, z, max_length=trunc)  # noqa: E731
    _fd_check(f, fb, x, w, seed=seed)


@pytest.mark.parametrize("log", [False, True])
@given(case=cases(dtypes=[np.dtype(np.float64)], max_len=12))
def test_cpu_softmax_backward_finite_differences(log, case):
    lens, inner, _, off_dtype, trunc, seed = case
    x = make_x(lens, inner, np.float64, off_dtype, seed)
    w = x._with_values(np.random.default_rng(seed + 1).standard_normal(x.values.shape))
    fwd = R.log_softmax if log else R.softmax
    bwd = R.log_softmax_backward if log else R.softmax_backward
    f = lambda z: fwd(z, max_length=trunc)  # noqa: E731
    fb = lambda z, g: bwd(g, fwd(z, max_length=trunc), max_length=trunc)  # noqa: E731
    _fd_check(f, fb, x, w, seed=seed)


@pytest.mark.parametrize("exclusive", [False, True])
@given(case=cases(dtypes=[np.dtype(np.float64)], max_len=12))
def test_cpu_cumsum_backward_finite_differences(exclusive, case):
    lens, inner, _, off_dtype, _, seed = case
    x = make_x(lens, inner, np.float64, off_dtype, seed)
    w = x._with_values(np.random.default_rng(seed + 1).standard_normal(x.values.shape))
    f = lambda z: R.cumsum(z, exclusive=exclusive)  # noqa: E731
    fb = lambda z, g: R.cumsum_backward(g, exclusive=exclusive)  # noqa: E731
    _fd_check(f, fb, x, w, seed=seed)


# ---- exact expected values on small cases: accumulation, NaN, -inf rows, sorts, checks ------
# (those the GPU kernels must meet too run on both backends; "gpu" is a GPU test)
BACKENDS = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def _on(backend, x):
    """x, or a copy of it on the GPU."""
    return _gpu(x) if backend == "gpu" else x


def _np(a):
    """The values of a JaggedArray, or an array, as NumPy (from either backend)."""
    a = a.values if isinstance(a, JaggedArray) else a
    return a.get() if hasattr(a, "get") else np.asarray(a)


def test_float32_sum_mean_cumsum_accumulate_in_float64():
    """float32 rows are summed in float64 (DESIGN: floats accumulate in float64 on the CPU):
    1e8 + 1 - 1e8 is 1, not the 0 of a float32 accumulator (1e8 + 1 rounds to 1e8)."""
    x = JaggedArray(np.array([1e8, 1.0, -1e8, 2.0], np.float32), [0, 3, 4])
    assert R.sum(x).tolist() == [1.0, 2.0]
    assert R.mean(x)[0] == np.float32(1.0 / 3.0)
    np.testing.assert_array_equal(R.cumsum(x).values, [1e8, 1e8, 1.0, 2.0])
    np.testing.assert_array_equal(R.cumsum(x, reverse=True).values, [1.0, -1e8, -1e8, 2.0])
    np.testing.assert_array_equal(R.cumsum(x, exclusive=True, reverse=True).values,
                                  [-1e8, -1e8, 0.0, 0.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_softmax_backward_row_with_one_zero_output_is_not_dead(backend):
    """Only a row whose first *two* log-softmax outputs are 0 is an all -inf row: a row whose
    first item dominates has output [0, -1000] and the usual gradient g - exp(y) * sum(g)."""
    x = _on(backend, JaggedArray(np.array([1000.0, 0.0], np.float32), [0, 2]))
    y = R.log_softmax(x)
    np.testing.assert_array_equal(_np(y), [0.0, -1000.0])
    g = y._with_values(xp_of(y.values).ones_like(y.values))
    np.testing.assert_array_equal(_np(R.log_softmax_backward(g, y)), [-1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.bool_, np.int64])
def test_descending_sort_of_unsigned_and_bool(dtype, backend):
    """Descending sort / argsort / topk put the largest unsigned integers and bools first,
    stable on ties (a negated unsigned key wraps around and would put 0 first)."""
    host = JaggedArray(np.array([0, 3, 1, 3, 0, 1]).astype(dtype), [0, 4, 6])
    x = _on(backend, host)
    order = [1, 3, 2, 0, 1, 0] if dtype is not np.bool_ else [1, 2, 3, 0, 1, 0]
    want = np.concatenate([host.values[:4][order[:4]], host.values[4:][order[4:]]])
    assert _np(R.argsort(x, descending=True)).tolist() == order
    np.testing.assert_array_equal(_np(R.sort(x, descending=True)), want)
    tv, ti = R.topk(x, 1)
    assert _np(ti).tolist() == [order[0], order[4]]
    np.testing.assert_array_equal(_np(tv), want[[0, 4]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_argmin_give_the_first_nan(backend):
    """With several NaN in a row, argmax / argmin give the first one (as NumPy), for one
    column and for several."""
    v = np.array([2.0, np.nan, 5.0, np.nan, 1.0], np.float32)
    for inner in ((), (2,)):
        vals = v if not inner else np.stack([v, v[::-1]], axis=1)
        x = _on(backend, JaggedArray(vals, [0, 5]))
        want = [1] if not inner else [[1, 1]]
        assert _np(R.argmax(x)).tolist() == want and _np(R.argmin(x)).tolist() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_max_length_is_min_of_k_and_longest_row(backend):
    """topk's outputs carry max_length = min(k, longest row): validate() agrees with the
    offsets and to_padded() is [B, k] wide, not as wide as the input's longest row."""
    x = _on(backend, JaggedArray(np.arange(7.0, dtype=np.float32), [0, 5, 7]))
    for out in R.topk(x, 3):
        assert out.max_length == 3
        out.validate()
        assert out.to_padded().shape == (2, 3)
    assert R.topk(x, 9)[0].max_length == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_backward_of_an_all_neg_inf_row_is_zero(backend):
    """A row whose logsumexp is -inf (all items -inf) gets gradient 0, not exp(-inf + inf)."""
    x = _on(backend, JaggedArray(np.array([-np.inf, -np.inf, 0.0, np.log(3.0)], np.float32),
                                 [0, 2, 4]))
    grad = xp_of(x.values).asarray([1.0, 2.0], np.float32)
    g = R.logsumexp_backward(grad, x)
    np.testing.assert_allclose(_np(g), [0.0, 0.0, 0.5, 1.5], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_min_with_initial_propagate_nan(backend):
    """``initial`` takes part in every row, and NaN still propagates (as np.max(..., initial=))."""
    x = _on(backend, JaggedArray(np.array([np.nan, 1.0, 2.0], np.float32), [0, 2, 2, 3]))
    np.testing.assert_array_equal(_np(R.max(x, initial=0.0)), [np.nan, 0.0, 2.0])
    np.testing.assert_array_equal(_np(R.min(x, initial=5.0)), [np.nan, 5.0, 2.0])


def test_backward_grad_of_the_wrong_shape_but_right_size_is_an_error():
    """grad [3, 2] for x of 2 rows and inner (3,) has the right size but not the shape
    [B, *inner]: a ValueError, not a silent reshape."""
    x = JaggedArray(np.ones((5, 3)), [0, 2, 5])
    for fb in (R.sum_backward, R.mean_backward, R.max_backward, R.logsumexp_backward):
        with pytest.raises(ValueError, match=r"grad must have shape \(2, 3\)"):
            fb(np.ones((3, 2)), x)


def test_non_native_byte_order_is_a_clear_error():
    """Byte-swapped values are refused with a TypeError that says so (Numba cannot take them)."""
    x = JaggedArray(np.arange(3.0).astype(">f8"), [0, 3])
    for f in (R.sum, R.max, R.softmax, R.cumsum):
        with pytest.raises(TypeError, match="native byte order"):
            f(x)


def test_softmax_backward_inner_shape_mismatch_is_an_error():
    """grad and out of equal offsets but different inner shapes: a ValueError (the kernel would
    read grad's columns past its end)."""
    out = R.softmax(JaggedArray(np.zeros((3, 2)), [0, 3]))
    grad = JaggedArray(np.ones((3, 1)), [0, 3])
    for fb in (R.softmax_backward, R.log_softmax_backward):
        with pytest.raises(ValueError, match="same inner shape"):
            fb(grad, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_min_nan_propagates_from_every_position(backend):
    """A NaN at any position of a row (every one of the unrolled chains and the tail) makes
    the row's max and min NaN; the other rows are unaffected."""
    n = 11
    vals = np.tile(np.arange(n, dtype=np.float32), n)
    vals[np.arange(n) * n + np.arange(n)] = np.nan  # row p has its NaN at position p
    x = _on(backend, JaggedArray(np.concatenate([vals, np.float32([4.0, -1.0])]),
                                 lengths=[n] * n + [2]))
    want = [np.nan] * n
    np.testing.assert_array_equal(_np(R.max(x)), want + [4.0])
    np.testing.assert_array_equal(_np(R.min(x)), want + [-1.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_is_exactly_zero_past_max_length(log, backend):
    """Items past ``max_length`` get gradient 0 exactly (they are written, not left as whatever
    the output buffer held: on the CPU a freed buffer of the same size is NaN-filled first, on
    the GPU every allocation of a GPU test starts as NaN)."""
    lens, trunc = [7, 2, 9, 0, 4], 3
    rng = np.random.default_rng(5)
    host = JaggedArray(rng.standard_normal((sum(lens), 3)).astype(np.float32), lengths=lens)
    x = _on(backend, host)
    y = (R.log_softmax if log else R.softmax)(x, max_length=trunc)
    g = _on(backend, host._with_values(rng.standard_normal(host.values.shape)
                                       .astype(np.float32)))
    fb = R.log_softmax_backward if log else R.softmax_backward
    pos = np.asarray(host.positions())
    for _ in range(3):
        junk = np.full(host.values.shape, np.nan)
        del junk
        d = _np(fb(g, y, max_length=trunc))
        assert np.all(d[pos >= trunc] == 0), d[pos >= trunc]
        assert np.all(np.isfinite(d))


def test_scans_and_sorts_check_axis_and_k():
    """cumsum / sort / argsort / topk work along axis 1 only (axis=0 is a ValueError, not a
    silent scan along the rows), and topk refuses a negative k."""
    x = JaggedArray(np.arange(5.0), [0, 2, 5])
    for f in (R.cumsum, R.sort, R.argsort):
        with pytest.raises(ValueError, match="axis must be 1"):
            f(x, axis=0)
        np.testing.assert_array_equal(f(x, axis=-1).values, f(x).values)
    with pytest.raises(ValueError, match="axis must be 1"):
        R.topk(x, 1, axis=0)
    with pytest.raises(ValueError, match=r"k must be >= 0, got -1"):
        R.topk(x, -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_takes_a_grad_of_another_float_dtype(log, backend):
    """A float64 or bf16 grad of a float32 output is cast to float32 first: the result equals
    that of the cast grad exactly (the GPU kernel reads grad as out's dtype)."""
    rng = np.random.default_rng(8)
    host = JaggedArray(rng.standard_normal((9, 3)).astype(np.float32), lengths=[4, 0, 5])
    y = (R.log_softmax if log else R.softmax)(_on(backend, host))
    fb = R.log_softmax_backward if log else R.softmax_backward
    g = rng.standard_normal((9, 3))
    for gdt in (np.float64, bfloat16):
        gx = _on(backend, host._with_values(g.astype(gdt)))
        g32 = _on(backend, host._with_values(g.astype(gdt).astype(np.float32)))
        np.testing.assert_array_equal(_np(fb(gx, y)), _np(fb(g32, y)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_propagates_nan_even_beside_neg_inf(backend):
    """A NaN item makes its row (column) NaN, also when every other item is -inf (the max that
    the row is shifted by is NaN, as the GPU's max.NaN gives), and leaves the other rows alone."""
    x = _on(backend, JaggedArray(np.array([np.nan, -np.inf, np.nan, 1.0, np.nan, -np.inf, 0.0],
                                          np.float32), lengths=[1, 2, 2, 2]))
    for f in (R.softmax, R.log_softmax):
        y = _np(f(x))
        assert np.isnan(y[:5]).all(), y
        assert not np.isnan(y[5:]).any(), y


# ---- GPU against the Numba twins ---------------------------------------------------------------
def _gpu(x):
    import cupy

    return JaggedArray(cupy.asarray(x.values), cupy.asarray(x.offsets), validate=False,
                       max_length=x.max_length)


# regimes: short rows, block per row, split rows (long rows on few rows), vector/scalar columns
REGIMES = [
    ([8, 0, 3, 1] * 50, (128,)),
    ([0, 20000, 5], ()),
    ([0, 3000, 7, 0], (7,)),
    ([5000, 1, 0], (3, 5)),
    ([2100, 600, 0, 9], (128,)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("name", REDUCTIONS)
@given(case=cases(dtypes=ALL_DTYPES), ties=st.booleans(), special=st.booleans())
def test_gpu_reductions_match_numba(name, case, ties, special):
    lens, inner, dtype, off_dtype, trunc, seed = case
    if np.dtype(dtype).kind in "iu" and name not in INT_OK:
        dtype = np.float32
    x = make_x(lens, inner, dtype, off_dtype, seed, ties=ties, special=special)
    _compare_reduction(name, x, trunc)


def _compare_reduction(name, x, trunc):
    ref = getattr(R, name)(x, max_length=trunc)
    out = getattr(R, name)(_gpu(x), max_length=trunc)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    exact = name in ("max", "min", "argmax", "argmin", "any", "all") or x.dtype.kind in "iu"
    if name == "prod":
        exact = False
    assert_close(_np(out), ref, x.dtype, exact=exact and name != "mean")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sum", "mean", "prod"])
@pytest.mark.parametrize("dtype", [bfloat16, np.dtype(np.float16)])
def test_gpu_dtype_casts_from_the_fp32_accumulator(name, dtype):
    """dtype=float32 on 16-bit values: the fp32 accumulator itself, not its 16-bit rounding (a
    sum past the float16 range stays finite), as on the CPU."""
    x = make_x([40, 0, 7, 300], (3,), dtype, np.int64, 9, scale=0.5)
    if name == "sum":
        x = x._with_values((x.values.astype(np.float32) * 0 + 7000).astype(dtype))
    ref = getattr(R, name)(x, dtype=np.float32)
    out = getattr(R, name)(_gpu(x), dtype=np.float32)
    assert out.dtype == np.float32 and ref.dtype == np.float32
    assert np.isfinite(_np(out)[[0, 2, 3]]).all()
    np.testing.assert_allclose(_np(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_operators_reflected_and_in_place():
    x = _gpu(JaggedArray(np.arange(6, dtype=np.float32), [0, 2, 6]))
    y = x.astype(np.float32, copy=True)
    y += 1
    assert _np((y - x).values).tolist() == [1.0] * 6
    assert _np((2 % (x + 1)).values).tolist() == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    q, r = divmod(x, 4)
    assert _np(q.values).tolist() == [0, 0, 0, 0, 1, 1] and _np(r.values).tolist()[-1] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("regime", range(len(REGIMES)))
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16])
def test_gpu_regimes_every_op(regime, dtype):
    lens, inner = REGIMES[regime]
    x = make_x(lens, inner, dtype, np.int32, regime)
    for name in REDUCTIONS:
        if name != "prod":
            _compare_reduction(name, x, None)
            _compare_reduction(name, x, 1000)
    xg = _gpu(x)
    for log in (False, True):
        f = R.log_softmax if log else R.softmax
        fb = R.log_softmax_backward if log else R.softmax_backward
        for trunc in (None, 1000):
            y, yg = f(x, max_length=trunc), f(xg, max_length=trunc)
            assert_close(_np(yg), np.asarray(y.values), dtype)
            g = x._with_values(np.asarray(x.values)[::-1].copy())
            assert_close(_np(fb(_gpu(g), yg, max_length=trunc)),
                         np.asarray(fb(g, y._with_values(_np(yg)),
                                       max_length=trunc).values), dtype)
    for exclusive in (False, True):
        assert_close(_np(R.cumsum(xg, exclusive=exclusive)),
                     np.asarray(R.cumsum(x, exclusive=exclusive).values), dtype)
        assert_close(_np(R.cumsum_backward(xg, exclusive=exclusive)),
                     np.asarray(R.cumsum_backward(x, exclusive=exclusive).values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("log", [False, True])
@given(case=cases(), big=st.booleans())
def test_gpu_softmax_fwd_bwd_match_numba(log, case, big):
    lens, inner, dtype, off_dtype, trunc, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed, scale=300.0 if big else 1.0)
    f = R.log_softmax if log else R.softmax
    fb = R.log_softmax_backward if log else R.softmax_backward
    y = f(x, max_length=trunc)
    yg = f(_gpu(x), max_length=trunc)
    assert not np.isnan(_np(yg).astype(np.float64)).any()
    assert_close(_np(yg), np.asarray(y.values), dtype)
    g = make_x(lens, inner, dtype, off_dtype, seed + 1)
    assert_close(_np(fb(_gpu(g), yg, max_length=trunc)),
                 np.asarray(fb(g, y._with_values(_np(yg)),
                                       max_length=trunc).values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16, np.dtype(np.float16)])
@pytest.mark.parametrize("D", [1, 128])
def test_gpu_logsumexp_softmax_across_the_fast_exp_bound(dtype, D):
    """Rows whose running max crosses |m| = 64, where the kernels switch between the one-FFMA
    exp and the exact form (rowwise.cu, CJ_FFMA_MAX): ramps up and down through +-64, values
    at 63.9 / 64.1, -inf before finite values, a 1e30 (6e4 in fp16), and rows long enough for
    several batches per lane, the split path (> 1 MB) and the fused one."""
    rng = np.random.default_rng(7)
    big = 6e4 if dtype == np.float16 else 1e30
    rows = [np.linspace(-200, 100, 3001), np.linspace(100, -200, 2999),
            np.linspace(-100, 70, 517), np.linspace(-63, 63, 64),
            np.r_[rng.standard_normal(700), 63.9, rng.standard_normal(300) + 60, 64.1],
            np.r_[np.full(40, -np.inf), rng.standard_normal(90) - 70],
            np.r_[rng.standard_normal(50), big, rng.standard_normal(50)],
            np.array([64.0]), np.array([]), rng.standard_normal(9000) * 40]
    vals = np.concatenate([np.repeat(r[:, None], D, 1) + rng.standard_normal((len(r), D))
                           for r in rows]).astype(np.float32).astype(dtype)
    x = JaggedArray(vals, make_offsets([len(r) for r in rows], np.int64))
    for trunc in (None, 2000):
        assert_close(_np(R.logsumexp(_gpu(x), max_length=trunc)),
                     np.asarray(R.logsumexp(x, max_length=trunc)), dtype)
        for f in (R.softmax, R.log_softmax):
            yg = _np(f(_gpu(x), max_length=trunc))
            assert not np.isnan(yg.astype(np.float64)).any()
            assert_close(yg, np.asarray(f(x, max_length=trunc).values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "logsumexp"])
@given(case=cases())
def test_gpu_reduction_backward_match_numba(name, case):
    lens, inner, dtype, off_dtype, trunc, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed)
    w = np.random.default_rng(seed).standard_normal((x.nrows, *inner)).astype(dtype)
    import cupy

    fb = getattr(R, f"{name}_backward")
    ref = fb(w, x, max_length=trunc)
    out = fb(cupy.asarray(w), _gpu(x), max_length=trunc)
    assert_close(_np(out), np.asarray(ref.values), dtype)


@pytest.mark.gpu
@given(case=cases(dtypes=[*FLOAT_DTYPES, np.dtype(np.int32)]), exclusive=st.booleans(),
       reverse=st.booleans())
def test_gpu_cumsum_match_numba(case, exclusive, reverse):
    lens, inner, dtype, off_dtype, _, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed)
    ref = R.cumsum(x, exclusive=exclusive, reverse=reverse)
    out = R.cumsum(_gpu(x), exclusive=exclusive, reverse=reverse)
    assert out.dtype == ref.dtype
    assert_close(_np(out), np.asarray(ref.values), dtype)


@pytest.mark.gpu
@given(case=cases(dtypes=[np.dtype(np.float32), bfloat16, np.dtype(np.int64)]),
       descending=st.booleans(), k=st.integers(0, 6))
def test_gpu_sort_match_numba(case, descending, k):
    lens, inner, dtype, off_dtype, _, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed, ties=True)
    xg = _gpu(x)
    np.testing.assert_array_equal(_np(R.argsort(xg, descending=descending)),
                                  R.argsort(x, descending=descending).values)
    np.testing.assert_array_equal(_np(R.sort(xg, descending=descending)),
                                  R.sort(x, descending=descending).values)
    tv, ti = R.topk(xg, k, largest=descending)
    rv, ri = R.topk(x, k, largest=descending)
    np.testing.assert_array_equal(_np(tv), rv.values)
    np.testing.assert_array_equal(_np(ti), ri.values)
    np.testing.assert_array_equal(_np(tv.offsets), rv.offsets)


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(ELEMENTWISE))
@given(case=cases(), kind=st.sampled_from(["jagged", "rows", "padded", "scalar"]))
def test_gpu_elementwise_match_cpu(op, case, kind):
    import cupy

    dtype = case[2]
    x, other = _elementwise_case(case, kind, pad=2)
    if kind == "jagged":
        other_g = _gpu(other)
    elif kind == "scalar":
        other_g = other
    else:
        other_g = cupy.asarray(other)
    f = ELEMENTWISE[op]
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = f(x, other)
    out = f(_gpu(x), other_g)
    assert out.dtype == ref.dtype
    assert_close(_np(out), np.asarray(ref.values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_bytes", [1, 300, 5000])
@given(case=cases(dtypes=[np.dtype(np.float32), bfloat16, np.dtype(np.float16)]),
       special=st.booleans())
def test_gpu_split_paths_match_numba(chunk_bytes, case, special):
    """Tiny scheduling thresholds: every row split in many chunks (last-block combine, split
    softmax, chunked cumsum carries, chunked elementwise)."""
    with _sched(whole_reduce=0, whole_fused=0, whole_scan=0, small_row=-1,
                split_min=chunk_bytes, split_max=chunk_bytes, bcast_chunk=chunk_bytes,
                scan_chunk=chunk_bytes):
        _split_paths(case, special)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_bytes", [0, 1, 16])
@pytest.mark.parametrize("dtype", [np.float32, bfloat16])
def test_gpu_prod_special_values_do_not_depend_on_order(chunk_bytes, dtype):
    """The fp32 accumulator's partial products under- / overflow (1e-20 ** 2, 1e20 ** 2, lanes
    and split blocks multiplying different items): a zero or an infinity still decides."""
    rows, want = _prod_special_rows(1e-20, 1e20)
    x = _gpu(JaggedArray.from_list([np.array(r, np.float32).astype(dtype) for r in rows]))
    sched = dict(whole_reduce=0, small_row=-1, split_min=chunk_bytes,
                 split_max=chunk_bytes) if chunk_bytes else {}
    with _sched(**sched):
        _check_prod(_np(R.prod(x)), want)


@pytest.mark.gpu
@given(case=cases(dtypes=[np.dtype(np.float32), bfloat16]))
def test_gpu_fused_column_tiles_match_numba(case):
    """Fused softmax blocks covering 16 bytes of each item (one vector per input): many column
    tiles over grid y, scalar (odd inner sizes) and vector (40 columns)."""
    lens, inner0, dtype, off_dtype, trunc, seed = case
    with _sched(fused_tile=16):
        for inner, log in ((inner0, False), (inner0, True), ((40,), False), ((40,), True)):
            x = make_x(lens, inner, dtype, off_dtype, seed)
            f = R.log_softmax if log else R.softmax
            fb = R.log_softmax_backward if log else R.softmax_backward
            y, yg = f(x, max_length=trunc), f(_gpu(x), max_length=trunc)
            assert_close(_np(yg), np.asarray(y.values), dtype)
            g = make_x(lens, inner, dtype, off_dtype, seed + 1)
            assert_close(_np(fb(_gpu(g), yg, max_length=trunc)),
                         np.asarray(fb(g, y._with_values(_np(yg)), max_length=trunc).values),
                         dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("budget", [24 * 1024, 96 * 1024])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16, np.dtype(np.float16)])
def test_gpu_softmax_row_cache_match_numba(budget, dtype):
    """Fused softmax blocks holding each lane's first items in shared memory (the row cache):
    rows longer and shorter than the cache (24 KB: 6 items per lane forward, 3 backward; 96 KB:
    24 / 12), truncation inside and past the cached part, 16-byte vectors with idle column
    threads (40 columns), and inner sizes that take no cache (8 columns: several rows a block)."""
    lens = [300, 0, 1, 129, 700, 2000, 40, 5, 97, 384, 385, 1500] * 3
    with _sched(fused_cache=budget):
        for inner in ((128,), (40,), (8,)):
            for log, trunc in ((False, None), (True, None), (False, 90), (True, 450)):
                x = make_x(lens, inner, dtype, np.int64, len(inner) + budget, scale=4.0)
                f = R.log_softmax if log else R.softmax
                fb = R.log_softmax_backward if log else R.softmax_backward
                y, yg = f(x, max_length=trunc), f(_gpu(x), max_length=trunc)
                assert_close(_np(yg), np.asarray(y.values), dtype)
                g = make_x(lens, inner, dtype, np.int32, 7)
                assert_close(_np(fb(_gpu(g), yg, max_length=trunc)),
                             np.asarray(fb(g, y._with_values(_np(yg)),
                                           max_length=trunc).values), dtype)


@pytest.mark.gpu
def test_gpu_argmax_index_exact_past_2_24():
    """Positions past 2**24 (not representable in float32) come back exact: one row of
    2**24 + 100 items (split over many blocks) with its max / min at odd positions there."""
    import cupy

    n = 2**24 + 100
    v = cupy.zeros((n, 2), dtype=np.float32)
    v[2**24 + 1, 0] = 1.0
    v[2**24 + 3, 1] = -1.0
    x = JaggedArray(v, cupy.asarray(np.array([0, 0, n, n + 0], dtype=np.int64)))
    assert _np(R.argmax(x)).tolist() == [[-1, -1], [2**24 + 1, 0], [-1, -1]]
    assert _np(R.argmin(x)).tolist() == [[-1, -1], [0, 2**24 + 3], [-1, -1]]


@pytest.mark.gpu
@pytest.mark.parametrize("scan_chunk", [None, 300 * 256])
@pytest.mark.parametrize("inner", [(128,), (40,)])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16, np.dtype(np.float16)])
def test_gpu_cumsum_ring_match_numba(scan_chunk, inner, dtype):
    """The scan's cp.async ring (16-byte vectors, a block per row or chunk): lengths around its
    step (R lanes x _SCAN_U items), idle column threads (40 columns), whole rows and rows
    chunked with carries (scan_chunk bytes), every direction."""
    lens = [0, 1, 65, 127, 128, 129, 255, 1000, 3001, 9, 64, 0, 5000]
    x = make_x(lens, inner, dtype, np.int64, 7)
    chunked = dict(whole_scan=0, small_row=-1, scan_chunk=scan_chunk) if scan_chunk else {}
    with _sched(**chunked):
        xg = _gpu(x)
        for exclusive in (False, True):
            for reverse in (False, True):
                assert_close(_np(R.cumsum(xg, exclusive=exclusive, reverse=reverse)),
                             np.asarray(R.cumsum(x, exclusive=exclusive,
                                                 reverse=reverse).values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_cumsum_very_long_row(reverse):
    """One row of 6e6 items among short ones: 24 MB, so the scan takes ~256 chunks of more than
    the default 64 KB and sums their carries in one kernel (fp64, in order)."""
    import cupy

    lens = [3, 6_000_000, 0, 17]
    rng = np.random.default_rng(5)
    v = rng.standard_normal(sum(lens)).astype(np.float32)
    x = JaggedArray(cupy.asarray(v), lengths=cupy.asarray(np.array(lens)))
    out = cupy.asnumpy(R.cumsum(x, reverse=reverse).values).astype(np.float64)
    off = np.concatenate([[0], np.cumsum(lens)])
    for b in range(len(lens)):
        seg = v[off[b]:off[b + 1]].astype(np.float64)
        ref = np.cumsum(seg[::-1])[::-1] if reverse else np.cumsum(seg)
        got = out[off[b]:off[b + 1]]
        # fp32 running sums within a chunk: error ~ sqrt(n) * eps * scale
        assert np.allclose(got, ref, rtol=1e-4, atol=2e-2 * np.sqrt(max(len(seg), 1)) * 1e-2), b


def _split_paths(case, special):
    lens, inner, dtype, off_dtype, trunc, seed = case
    x = make_x(lens, inner, dtype, off_dtype, seed, special=special)
    for name in REDUCTIONS:
        _compare_reduction(name, x, trunc)
    xs = make_x(lens, inner, dtype, off_dtype, seed)
    xg = _gpu(xs)
    for log in (False, True):
        f = R.log_softmax if log else R.softmax
        fb = R.log_softmax_backward if log else R.softmax_backward
        y, yg = f(xs, max_length=trunc), f(xg, max_length=trunc)
        assert_close(_np(yg), np.asarray(y.values), dtype)
        g = make_x(lens, inner, dtype, off_dtype, seed + 1)
        assert_close(_np(fb(_gpu(g), yg, max_length=trunc)),
                     np.asarray(fb(g, y._with_values(_np(yg)),
                                       max_length=trunc).values), dtype)
    for exclusive in (False, True):
        for reverse in (False, True):
            assert_close(_np(R.cumsum(xg, exclusive=exclusive, reverse=reverse)),
                         np.asarray(R.cumsum(xs, exclusive=exclusive, reverse=reverse).values),
                         dtype)
    w = np.random.default_rng(seed).standard_normal((xs.nrows, *inner)).astype(dtype)
    import cupy

    for name in ["sum", "mean", "max", "min", "logsumexp"]:
        fbk = getattr(R, f"{name}_backward")
        assert_close(_np(fbk(cupy.asarray(w), xg, max_length=trunc)),
                     np.asarray(fbk(w, xs, max_length=trunc).values), dtype)
    assert_close(_np(xg + cupy.asarray(w)), np.asarray((xs + w).values), dtype)


# ---- the CPU backward functions keep x's dtype and refuse integers ---------------------------
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), bfloat16])
def test_cpu_backward_results_keep_the_dtype_of_x(dtype):
    """sum / mean / logsumexp / softmax / log_softmax / cumsum backward on the CPU compute in
    float64 and store back in x's dtype (as the forward does), also for a float64 grad."""
    x = JaggedArray(np.arange(5.0).astype(dtype), [0, 2, 2, 5])
    for g in (np.ones(3, dtype), np.ones(3, np.float64)):
        for fb in (R.sum_backward, R.mean_backward, R.logsumexp_backward):
            assert fb(g, x).dtype == dtype
    for f, fb in ((R.softmax, R.softmax_backward), (R.log_softmax, R.log_softmax_backward)):
        y = f(x)
        assert fb(y, y).dtype == dtype
    assert R.cumsum_backward(x).dtype == dtype


def test_backward_functions_refuse_integer_values():
    """Gradients are floating: sum / mean backward of integer x, and cumsum / softmax /
    log_softmax backward of an integer grad, are TypeErrors, not integer "gradients"."""
    xi = JaggedArray(np.arange(5), [0, 2, 5])
    for fb in (R.sum_backward, R.mean_backward):
        with pytest.raises(TypeError, match="^x must have a floating dtype"):
            fb(np.ones(2), xi)
    with pytest.raises(TypeError, match="^grad must have a floating dtype"):
        R.cumsum_backward(xi)
    out = R.softmax(JaggedArray(np.arange(5.0), [0, 2, 5]))
    for fb in (R.softmax_backward, R.log_softmax_backward):
        with pytest.raises(TypeError, match="^grad must have a floating dtype"):
            fb(xi, out)
