"""The JaggedArray API on the CPU backend against plain NumPy/list code (Hypothesis), its errors,
edge cases, and the same API on the GPU against the CPU results (marked ``gpu``)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import INNER_SHAPES, OFFSET_DTYPES, lengths, make_offsets, random_values

import cujagged
from cujagged import JaggedArray, bfloat16

LAYOUT_DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int8, np.uint8,
                                       np.int16, np.int32, np.int64, np.bool_, np.complex64)]
LAYOUT_DTYPES.append(bfloat16)


@st.composite
def jagged_cases(draw, max_rows=10, max_len=12, dtypes=None):
    """(JaggedArray on the CPU, its rows as a list of NumPy arrays)."""
    lens = draw(lengths(max_rows=max_rows, max_len=max_len))
    inner = draw(st.sampled_from(INNER_SHAPES))
    dtype = draw(st.sampled_from(dtypes or LAYOUT_DTYPES))
    odt = draw(st.sampled_from(OFFSET_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    off = make_offsets(lens, odt)
    values = random_values(rng, (int(off[-1]), *inner), dtype)
    x = JaggedArray(values, off)
    rows = [values[off[b]:off[b + 1]] for b in range(len(lens))]
    return x, rows


def same(a, b) -> bool:
    """Equal shape, dtype and bytes (NaN-safe, works for bf16)."""
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
    b = b.get() if hasattr(b, "get") and not isinstance(b, np.ndarray) else np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                               np.ascontiguousarray(b).view(np.uint8)))


def same_rows(x: JaggedArray, rows) -> bool:
    if x.nrows != len(rows):
        return False
    h = x.get()
    return all(same(h[b], np.asarray(r, dtype=x.dtype).reshape(-1, *x.inner_shape))
               for b, r in enumerate(rows))


def padded_reference(rows, inner, dtype, max_length, pad):
    out = np.full((len(rows), max_length, *inner), pad, dtype=dtype)
    mask = np.zeros((len(rows), max_length), dtype=bool)
    for b, r in enumerate(rows):
        n = min(len(r), max_length)
        out[b, :n] = r[:n]
        mask[b, :n] = True
    return out, mask


# ---- structure and construction -----------------------------------------------------------------
@given(jagged_cases())
def test_structure_properties(case):
    x, rows = case
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    assert x.nrows == len(x) == len(rows)
    assert x.lengths.dtype == x.offsets.dtype
    assert np.array_equal(x.lengths, lens)
    assert x.max_length == (int(lens.max()) if len(lens) else 0)
    assert x.shape == (len(rows), None, *x.values.shape[1:])
    assert x.dtype == x.values.dtype and x.device == "cpu" and not x.is_gpu


@given(jagged_cases())
def test_constructors_agree(case):
    x, rows = case
    for y in (JaggedArray.from_offsets(x.values, x.offsets),
              JaggedArray.from_lengths(x.values, x.lengths),
              JaggedArray.from_list(rows, dtype=x.dtype),
              JaggedArray.from_list([r.tolist() for r in rows], dtype=x.dtype),
              JaggedArray.from_row_ids(x.values, np.repeat(np.arange(x.nrows), x.lengths),
                                       nrows=x.nrows)):
        assert y.same_structure(x) and y.max_length == x.max_length
        if y.values.shape != x.values.shape:  # from_list: no item shows the inner shape
            assert y.values.size == x.values.size == 0
            continue
        assert same(y.values, x.values)


def test_from_list_dtype_inference_and_empty_rows():
    x = JaggedArray.from_list([[1, 2], [], [3]])
    assert x.dtype == np.int64 and x.offsets.tolist() == [0, 2, 2, 3]
    assert JaggedArray.from_list([[1.5], [2]]).dtype == np.float64
    e = JaggedArray.from_list([[], []])
    assert e.nrows == 2 and e.values.shape == (0,) and e.max_length == 0
    z = JaggedArray.from_list([])
    assert z.nrows == 0 and z.offsets.tolist() == [0] and z.max_length == 0
    m = JaggedArray.from_list([np.ones((2, 3)), [], np.zeros((1, 3))], dtype=np.float32)
    assert m.values.shape == (3, 3) and m.dtype == np.float32 and m.lengths.tolist() == [2, 0, 1]


def test_from_list_errors():
    with pytest.raises(ValueError, match=r"rows\[1\] has items of shape \(2,\)"):
        JaggedArray.from_list([np.ones((2, 3)), np.ones((1, 2))])
    with pytest.raises(ValueError, match=r"rows\[0\] is a scalar"):
        JaggedArray.from_list([1, 2])
    with pytest.raises(TypeError, match="rows must be a list"):
        JaggedArray.from_list(5)


def test_from_row_ids_with_trailing_and_leading_empty_rows():
    x = JaggedArray.from_row_ids(np.arange(4.0), np.array([1, 1, 3, 3]), nrows=5)
    assert x.tolist() == [[], [0.0, 1.0], [], [2.0, 3.0], []]
    with pytest.raises(ValueError, match="row_ids must be sorted"):
        JaggedArray.from_row_ids(np.arange(3.0), [1, 0, 1])
    with pytest.raises(ValueError, match="row_ids has row 3 but nrows=2"):
        JaggedArray.from_row_ids(np.arange(2.0), [0, 3], nrows=2)
    with pytest.raises(ValueError, match="row_ids must be non-negative"):
        JaggedArray.from_row_ids(np.arange(2.0), [-1, 0])
    with pytest.raises(ValueError, match=r"row_ids must have shape \[T\]"):
        JaggedArray.from_row_ids(np.arange(2.0), [0])
    with pytest.raises(TypeError, match="row_ids must have an integer dtype"):
        JaggedArray.from_row_ids(np.arange(2.0), np.zeros(2))
    assert JaggedArray.from_row_ids(np.zeros((0, 2)), []).nrows == 0


# ---- malformed offsets: clear errors naming the argument ----------------------------------------
@pytest.mark.parametrize("offsets, exc, msg", [
    ([1, 2, 4], ValueError, r"offsets\[0\] must be 0, got 1"),
    ([0, 3, 2, 4], ValueError, "offsets must be non-decreasing"),
    ([0, 2, 3], ValueError, r"offsets\[-1\] must equal len\(values\) = 4, got 3"),
    ([0, 2, 5], ValueError, r"offsets\[-1\] must equal len\(values\) = 4, got 5"),
    (np.array([0.0, 4.0]), TypeError, "offsets must have dtype int32 or int64, got float64"),
    (np.array([0, 4], dtype=np.uint32), TypeError, "offsets must have dtype int32 or int64"),
    (np.array([[0, 4]]), ValueError, r"offsets must be 1-D .*got shape \(1, 2\)"),
    (np.zeros(0, np.int64), ValueError, "offsets must be 1-D with at least one element"),
    ("0,4", TypeError, "offsets must be a NumPy/CuPy array or a list of integers"),
    ([0, 1.5, 4], TypeError, "offsets must be integers, got float64"),
])
def test_malformed_offsets(offsets, exc, msg):
    with pytest.raises(exc, match=msg):
        JaggedArray(np.arange(4.0), offsets)


def test_malformed_lengths_and_values():
    with pytest.raises(ValueError, match="lengths must be non-negative"):
        JaggedArray(np.arange(2.0), lengths=[3, -1])
    with pytest.raises(TypeError, match="values must be a NumPy or CuPy array"):
        JaggedArray([1.0, 2.0], [0, 2])
    with pytest.raises(TypeError, match="exactly one of offsets= or lengths="):
        JaggedArray(np.arange(2.0))
    with pytest.raises(ValueError, match="max_length=5 but the longest row has 2"):
        JaggedArray(np.arange(2.0), [0, 2], max_length=5)
    with pytest.raises(TypeError):
        JaggedArray(np.arange(2.0), [0, 2], max_length=2.7)
    with pytest.raises(TypeError, match="cu_seqlens dtype must be int32 or int64"):
        JaggedArray(np.arange(2.0), [0, 2]).cu_seqlens(np.int16)
    for fn in (cujagged.to_padded, cujagged.row_ids, cujagged.positions):
        with pytest.raises(TypeError, match="x must be a JaggedArray"):
            fn(np.arange(2.0))


def test_validate_false_skips_checks_and_validate_on_demand():
    x = JaggedArray(np.arange(4.0), np.array([0, 3, 2, 4]), validate=False)
    with pytest.raises(ValueError, match="non-decreasing"):
        x.validate()


# ---- to_padded / from_padded --------------------------------------------------------------------
@given(jagged_cases(), st.one_of(st.none(), st.integers(0, 20)), st.sampled_from([0, 1, -3]),
       st.booleans())
def test_to_padded(case, max_length, pad, method):
    x, rows = case
    if x.dtype.kind in "ub":
        pad = abs(pad) % 2
    ml = x.max_length if max_length is None else max_length
    ref, ref_mask = padded_reference(rows, x.inner_shape, x.dtype, ml,
                                     np.asarray(pad).astype(x.dtype))
    if method:
        out, mask = x.to_padded(pad, max_length, return_mask=True)
    else:
        out, mask = cujagged.to_padded(x, max_length, pad, return_mask=True)
    assert same(out, ref) and same(mask, ref_mask)
    assert same(x.to_padded(pad, max_length), ref)


def test_to_padded_nan_padding_and_bad_padding_value():
    x = JaggedArray.from_list([[1.0], []], dtype=np.float32)
    out = x.to_padded(np.nan, 2)
    assert out[0, 0] == 1 and np.isnan(out[0, 1]) and np.isnan(out[1]).all()
    xi = JaggedArray.from_list([[1], []], dtype=np.int8)
    with pytest.raises(ValueError, match=r"padding_value=0.5 cannot be represented in dtype int8"):
        xi.to_padded(0.5)
    with pytest.raises(ValueError, match="padding_value=300"):
        xi.to_padded(300)
    with pytest.raises(ValueError, match="padding_value=2 cannot be represented in dtype bool"):
        JaggedArray.from_list([[True]]).to_padded(2)
    with pytest.raises(ValueError, match="max_length must be >= 0"):
        xi.to_padded(0, -1)


@given(jagged_cases(), st.integers(0, 3), st.sampled_from(["lengths", "offsets", "list"]))
def test_from_padded_roundtrip(case, extra, how):
    x, rows = case
    dense = x.to_padded(1, x.max_length + extra)
    if how == "lengths":
        y = cujagged.from_padded(dense, x.lengths)
    elif how == "offsets":
        y = JaggedArray.from_padded(dense, offsets=x.offsets)
        assert y.offsets.dtype == x.offsets.dtype
    else:
        y = cujagged.from_padded(dense, [len(r) for r in rows])
    assert y.same_structure(x) and y.max_length == x.max_length and same(y.values, x.values)
    z = cujagged.from_padded(dense, offsets=x.offsets, total_length=len(x.values),
                             max_length=x.max_length)  # trusted: no checks, no sync
    assert z.offsets is x.offsets and same(z.values, x.values)


@given(jagged_cases(max_len=6), st.integers(0, 2**31))
def test_from_padded_general_mask(case, seed):
    x, _ = case
    dense = x.to_padded(0, x.max_length + 1)
    mask = np.random.default_rng(seed).random(dense.shape[:2]) < 0.5
    y = cujagged.from_padded(dense, mask=mask)
    assert same_rows(y, [dense[b][mask[b]] for b in range(len(dense))])
    assert y.max_length == (int(mask.sum(1).max()) if len(mask) else 0)


def test_from_padded_non_contiguous_dense():
    base = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    dense = base[:, ::2, ::3]  # [2, 2, 2], strided
    y = cujagged.from_padded(dense, [1, 2])
    assert y.tolist() == [[dense[0, 0].tolist()], [dense[1, 0].tolist(), dense[1, 1].tolist()]]


def test_from_padded_errors():
    dense = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="lengths give a row of length 4 but dense has only N = 3"):
        cujagged.from_padded(dense, [1, 4])
    with pytest.raises(ValueError, match="lengths must give non-negative row lengths"):
        cujagged.from_padded(dense, [1, -1])
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\] = \(2,\)"):
        cujagged.from_padded(dense, [1, 1, 1])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        cujagged.from_padded(dense, offsets=[1, 2, 3])
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        cujagged.from_padded(dense, offsets=[0, 2, 1])
    with pytest.raises(TypeError, match="lengths must have dtype int32 or int64"):
        cujagged.from_padded(dense, np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        cujagged.from_padded(dense, mask=np.ones((2, 3), np.int8))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, N\]"):
        cujagged.from_padded(dense, mask=np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="exactly one of lengths=, offsets= or mask="):
        cujagged.from_padded(dense)
    with pytest.raises(ValueError, match=r"dense must have shape \[B, N, \*inner\]"):
        cujagged.from_padded(np.zeros(3), [1])


# ---- rows, indexing ---------------------------------------------------------------------------
@given(jagged_cases())
def test_tolist_unbind_iter(case):
    x, rows = case
    assert x.tolist() == [r.tolist() for r in rows]
    assert all(same(a, r) for a, r in zip(x.unbind(), rows, strict=True))
    assert all(same(a, r) for a, r in zip(x, rows, strict=True))


@given(jagged_cases(), st.data())
def test_getitem_rows(case, data):
    x, rows = case
    n = len(rows)
    if n:
        i = data.draw(st.integers(-n, n - 1))
        assert same(x[i], rows[i]) and same(x[np.int64(i)], rows[i])
    a = data.draw(st.one_of(st.none(), st.integers(-n - 2, n + 2)))
    b = data.draw(st.one_of(st.none(), st.integers(-n - 2, n + 2)))
    step = data.draw(st.sampled_from([None, 1, 2, -1, -2]))
    y = x[a:b:step]
    assert same_rows(y, rows[a:b:step])
    assert y.max_length == max((len(r) for r in rows[a:b:step]), default=0)
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=8)) if n else []
    assert same_rows(x[idx], [rows[i] for i in idx])
    assert same_rows(x[np.array(idx, dtype=np.int32)], [rows[i] for i in idx])
    assert same_rows(cujagged.index_select(x, np.array(idx, dtype=np.int64)),
                     [rows[i] for i in idx])
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    assert same_rows(x[np.array(mask, dtype=bool)], [r for r, m in zip(rows, mask) if m])


def test_slice_of_rows_is_zero_copy():
    x = JaggedArray.from_list([[1, 2], [3], [4, 5, 6]])
    y = x[1:]
    assert np.shares_memory(y.values, x.values) and y.offsets.tolist() == [0, 1, 4]
    assert y.max_length == 3 and x[1:2].max_length == 1


@given(jagged_cases(), st.data())
def test_per_row_slicing(case, data):
    x, rows = case
    bound = st.one_of(st.none(), st.integers(-15, 15))
    s = slice(data.draw(bound), data.draw(bound), data.draw(st.sampled_from([None, 1, 2, 3, -1,
                                                                              -2])))
    y = x[:, s]
    ref = [r[s] for r in rows]
    assert same_rows(y, ref) and y.offsets.dtype == x.offsets.dtype
    assert y.max_length == max((len(r) for r in ref), default=0)
    n = len(rows)
    if n:
        idx = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
        assert same_rows(x[idx, s], [rows[i][s] for i in idx])
        i = data.draw(st.integers(0, n - 1))
        assert same(x[i, s], rows[i][s])


def test_getitem_inner_dims_and_errors():
    x = JaggedArray(np.arange(12).reshape(6, 2), [0, 2, 2, 6])
    assert x[:, :1, 0].tolist() == [[0], [], [4]]
    assert x[2, 1].tolist() == [6, 7]
    with pytest.raises(IndexError, match="row index 3 is out of bounds for a JaggedArray with 3"):
        x[3]
    with pytest.raises(IndexError, match="row index -4 is out of bounds"):
        x[[0, -4]]
    with pytest.raises(IndexError, match="row index 5 is out of bounds"):
        x[np.array([5])]
    # NumPy's dense form: rows of one length only (np.sort(x, axis=1) and the like fall back
    # to it); ragged rows say what to use instead of NumPy's "inhomogeneous shape"
    assert np.asarray(x[[0, 0]]).shape == (2, 2, 2)
    assert np.asarray(x[[0, 0]], dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="rows differ in length has no dense NumPy form"):
        np.sort(x, axis=1)
    with pytest.raises(IndexError, match="row index 18446744073709551615 is out of bounds"):
        x[np.array([2**64 - 1], np.uint64)]  # (was read as -1: the last row)
    assert x[np.array([2, 0], np.uint64)].tolist() == x[[2, 0]].tolist()
    with pytest.raises(ValueError, match=r"bool index must have shape \[B\] = \(3,\)"):
        x[np.array([True, False])]
    with pytest.raises(TypeError, match="the index within rows must be a slice"):
        x[:, 0]
    with pytest.raises(TypeError, match="cannot be indexed by float"):
        x[1.5]
    with pytest.raises(TypeError, match="index must have an integer or bool dtype"):
        x[np.array([1.0])]
    with pytest.raises(ValueError, match="slice step cannot be zero"):
        x[:, ::0]


# ---- row ids, positions, cu_seqlens -------------------------------------------------------------
@given(jagged_cases())
def test_row_ids_positions_cu_seqlens(case):
    x, rows = case
    lens = [len(r) for r in rows]
    ids = x.row_ids()
    assert ids.dtype == x.offsets.dtype
    assert np.array_equal(ids, np.repeat(np.arange(len(rows)), lens))
    assert x.row_ids() is ids  # cached
    assert np.array_equal(cujagged.row_ids(x, np.int64), ids)
    pos = x.positions()
    assert np.array_equal(pos, np.concatenate([np.arange(n) for n in lens] + [np.zeros(0, int)]))
    cu = x.cu_seqlens()
    assert cu.dtype == np.int32 and np.array_equal(cu, x.offsets)
    assert x.cu_seqlens(np.int64).dtype == np.int64


# ---- conversion, pickling, repr -----------------------------------------------------------------
@given(jagged_cases())
def test_pickle_roundtrip(case):
    x, _ = case
    y = pickle.loads(pickle.dumps(x))
    assert y.same_structure(x) and same(y.values, x.values) and y.max_length == x.max_length
    assert y.offsets.dtype == x.offsets.dtype


def test_to_numpy_get_copy():
    x = JaggedArray.from_list([[1, 2], [3]])
    v, o = x.to_numpy()
    assert v is x.values and o is x.offsets
    assert x.get() is x and x.cpu() is x and x.to("cpu") is x
    c = x.copy()
    assert not np.shares_memory(c.values, x.values) and c.tolist() == x.tolist()
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:<id>'"):
        x.to("tpu")


def test_repr():
    x = JaggedArray.from_list([[1, 2], [], [3]])
    assert repr(x) == "<JaggedArray [[1, 2], [], [3]] shape=(3, None) dtype=int64 device=cpu>"
    f = JaggedArray.from_list([[1.5, 2.0], [np.nan]], dtype=np.float32)
    assert repr(f) == "<JaggedArray [[1.5, 2], [nan]] shape=(2, None) dtype=float32 device=cpu>"
    b = JaggedArray.from_list([[1.5, -2.0]], dtype=bfloat16)
    assert repr(b) == "<JaggedArray [[1.5, -2]] shape=(1, None) dtype=bfloat16 device=cpu>"
    e = JaggedArray.from_list([])
    assert repr(e) == "<JaggedArray [] shape=(0, None) dtype=float64 device=cpu>"
    long = JaggedArray.from_list([list(range(20))] * 10)
    r = repr(long)
    row = "[0, 1, ..., 18, 19]"
    assert r == (f"<JaggedArray [{row}, {row}, ..., {row}, {row}] shape=(10, None) dtype=int64 "
                 "device=cpu>")
    short = JaggedArray.from_list([list(range(7))] * 2)
    assert repr(short).startswith("<JaggedArray [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]]")
    wide = JaggedArray(np.zeros((1000, 128), np.float32), [0, 500, 1000])
    assert len(repr(wide)) < 300 and "shape=(2, None, 128)" in repr(wide)


# ---- edge cases -------------------------------------------------------------------------------
def test_edge_cases_zero_rows_all_empty_one_row_huge_row():
    z = JaggedArray(np.zeros((0, 3), np.float32), [0])
    assert z.to_padded().shape == (0, 0, 3) and z.to_padded(0, 4).shape == (0, 4, 3)
    assert z.tolist() == [] and z.row_ids().shape == (0,) and z[:, 1:].nrows == 0
    assert cujagged.from_padded(np.zeros((0, 5, 3)), []).nrows == 0
    e = JaggedArray(np.zeros((0,), np.int32), [0, 0, 0])
    assert e.to_padded(5).shape == (2, 0) and e.max_length == 0
    assert np.array_equal(e.to_padded(5, 2), np.full((2, 2), 5, np.int32))
    assert e[[1, 1]].tolist() == [[], []] and e[:, -2:].tolist() == [[], []]
    one = JaggedArray(np.arange(5.0), [0, 5])
    assert one.to_padded().tolist() == [[0, 1, 2, 3, 4]] and one[:, 1:-1].tolist() == [[1, 2, 3]]
    n = 300_000
    huge = JaggedArray(np.arange(n, dtype=np.int32), np.array([0, 0, n, n + 0], dtype=np.int32))
    assert huge.max_length == n and np.array_equal(huge.to_padded()[1], np.arange(n))
    assert np.array_equal(huge.row_ids(), np.ones(n, np.int32))
    assert np.array_equal(cujagged.from_padded(huge.to_padded(), huge.lengths).values,
                          huge.values)


def test_non_contiguous_values_are_made_contiguous():
    base = np.arange(20.0).reshape(10, 2)
    x = JaggedArray(base[::2], [0, 2, 5])
    assert x.values.flags.c_contiguous and x.tolist() == [[[0, 1], [4, 5]],
                                                          [[8, 9], [12, 13], [16, 17]]]


# ---- row slices, gathers, NumPy's dense form, inner indices: exact small cases ----------------
def test_row_slices_that_select_no_rows():
    """x[a:b] with a past b (after negative indices are resolved) is an empty batch."""
    x = JaggedArray(np.arange(12).reshape(6, 2), [0, 2, 2, 6])
    for y in (x[2:1], x[3:0], x[-1:0], x[5:9]):
        assert y.nrows == 0 and y.offsets.tolist() == [0] and y.values.shape == (0, 2)
        assert y.max_length == 0 and y.tolist() == []


def test_row_index_equal_to_nrows_is_out_of_bounds():
    """Row gathers refuse index B (one past the last row) as they refuse larger ones."""
    x = JaggedArray(np.arange(12).reshape(6, 2), [0, 2, 2, 6])
    for idx in ([3], np.array([0, 3]), np.array([3], np.int32), np.array([3], np.uint64)):
        with pytest.raises(IndexError, match="row index 3 is out of bounds"):
            x[idx]
    with pytest.raises(IndexError, match="row index 3 is out of bounds"):
        cujagged.index_select(x, np.array([3]))


def test_gathering_no_rows_keeps_the_offsets_dtype():
    """x[[]] is an empty batch whose offsets keep x's dtype, like every other row gather."""
    for odt in OFFSET_DTYPES:
        x = JaggedArray(np.arange(6.0), np.array([0, 2, 6], odt))
        for y in (x[[]], x[np.array([], np.int64)], x[np.zeros(2, bool)], x[[1]]):
            assert y.offsets.dtype == odt
        assert x[[]].offsets.tolist() == [0] and x[[]].nrows == 0


def test_dense_numpy_form_needs_every_row_of_one_length():
    """np.asarray(x) is [B, L, *inner] when all rows have length L, else a TypeError however
    many rows differ (here only the last one)."""
    x = JaggedArray(np.arange(14).reshape(7, 2), lengths=[2, 2, 3])
    with pytest.raises(TypeError, match="rows differ in length has no dense NumPy form"):
        np.asarray(x)
    y = JaggedArray(np.arange(12).reshape(6, 2), lengths=[2, 2, 2])
    assert np.asarray(y).tolist() == np.arange(12).reshape(3, 2, 2).tolist()
    assert np.asarray(JaggedArray(np.zeros((0, 2)), [0, 0, 0])).shape == (2, 0, 2)


def test_dense_numpy_form_copies_when_asked():
    """np.array(x, copy=True) never shares memory with x; np.asarray(x) is a view."""
    y = JaggedArray(np.arange(12.0).reshape(6, 2), lengths=[2, 2, 2])
    a = np.array(y, copy=True)
    assert not np.shares_memory(a, y.values) and a.tolist() == np.asarray(y).tolist()
    assert np.shares_memory(np.asarray(y), y.values)


def test_inner_indices_that_would_move_the_item_axis_are_refused():
    """x[:, s, *rest]: rest must index the inner dimensions; advanced indices split by a slice
    (NumPy puts their dimension first) would reorder the items and are refused."""
    x = JaggedArray(np.arange(5 * 2 * 3 * 2).reshape(5, 2, 3, 2), lengths=[2, 3])
    with pytest.raises(IndexError, match="indices after the second must index the inner"):
        x[:, :, [0, 1], :, [0, 1]]
    assert x[:, :1, [0, 1], 0, [1, 0]].values.shape == (2, 2)


def test_from_padded_trusted_path_refuses_max_length_past_n():
    """The trusted from_padded (offsets + total_length + max_length, no sync) still checks the
    host hint max_length against N."""
    dense = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"max_length=4 must be in \[0, N = 3\]"):
        cujagged.from_padded(dense, offsets=np.array([0, 1, 5]), total_length=5, max_length=4)
    y = cujagged.from_padded(dense, offsets=np.array([0, 1, 4]), total_length=4, max_length=3)
    assert y.lengths.tolist() == [1, 3] and y.max_length == 3


# ---- the same API on the GPU ------------------------------------------------------------------
gpu = pytest.mark.gpu


@gpu
@given(jagged_cases(max_rows=12, max_len=40), st.data())
def test_gpu_api_matches_cpu(case, data):
    import cupy

    x, rows = case
    g = x.to("cuda")
    assert g.is_gpu and g.device == "cuda:0" and g.max_length == x.max_length
    ml = data.draw(st.one_of(st.none(), st.integers(0, 50)))
    pad = data.draw(st.sampled_from([0, 1, -2]))
    if x.dtype.kind in "ub":
        pad = abs(pad) % 2
    out, mask = g.to_padded(pad, ml, return_mask=True)
    ref, ref_mask = x.to_padded(pad, ml, return_mask=True)
    assert isinstance(out, cupy.ndarray) and same(out, ref) and same(mask, ref_mask)
    dense = g.to_padded(1, x.max_length + 2)
    y = cujagged.from_padded(dense, g.lengths)
    assert y.is_gpu and same(y.values, x.values) and y.max_length == x.max_length
    assert same(g.row_ids(), x.row_ids()) and same(g.positions(), x.positions())
    assert same(g.row_ids(np.int64), x.row_ids(np.int64))
    n = len(rows)
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=10)) if n else []
    gi, ci = g[cupy.asarray(np.array(idx, dtype=np.int64))], x[idx]
    assert gi.is_gpu and same(gi.values, ci.values) and same(gi.offsets, ci.offsets)
    assert gi.max_length == ci.max_length
    bound = st.one_of(st.none(), st.integers(-45, 45))
    s = slice(data.draw(bound), data.draw(bound), data.draw(st.sampled_from([None, 1, 2, -1])))
    gs, cs = g[:, s], x[:, s]
    assert same(gs.values, cs.values) and same(gs.offsets, cs.offsets)
    assert gs.max_length == cs.max_length
    assert g.tolist() == x.tolist() and repr(g) == repr(x).replace("device=cpu", "device=cuda:0")
    assert same(g.get().values, x.values) and same(g[1:].values, x[1:].values)
    assert pickle.loads(pickle.dumps(g)).is_gpu


@gpu
def test_gpu_other_device_offsets_rejected():
    import cupy

    with pytest.raises(ValueError, match="offsets is on cpu but values is on cuda:0"):
        JaggedArray(cupy.arange(4.0), np.array([0, 4]))
    with pytest.raises(ValueError, match="offsets is on cuda:0 but values is on cpu"):
        JaggedArray(np.arange(4.0), cupy.array([0, 4]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        JaggedArray(cupy.arange(4.0), cupy.array([1, 4]))
    with pytest.raises(ValueError, match="non-decreasing"):
        JaggedArray(cupy.arange(4.0), cupy.array([0, 3, 2, 4]))
    g = JaggedArray.from_list([[1.0], [2.0, 3.0]], device="cuda")
    with pytest.raises(ValueError, match="lengths is on cpu but values is on cuda:0"):
        cujagged.from_padded(g.to_padded(), np.array([1, 2]))
    # a host (NumPy) index is moved to the array's device, not refused
    assert cujagged.index_select(g, np.array([1, 0])).tolist() == [[2.0, 3.0], [1.0]]



def test_python_int_bounds_past_int64_clamp_like_slicing():
    x = JaggedArray(np.arange(5.0), [0, 2, 5])
    assert x[:, :2**63].tolist() == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert x[:, 2**63:].tolist() == [[], []]
    assert x[:, ::-2**70].tolist() == [[1.0], [4.0]]
    assert x.topk(2**63)[0].tolist() == [[1.0, 0.0], [4.0, 3.0, 2.0]]
    with pytest.raises(TypeError, match="bool"):
        JaggedArray(np.arange(5.0), [0, 2, 5], max_length=True)
