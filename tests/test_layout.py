"""Layout kernels: the Numba twins against plain NumPy loops, the CUDA kernels against the twins
(every vector width, both offset dtypes, misaligned views, tiles spanning many rows, 64-bit
sizes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import OFFSET_DTYPES, lengths, make_offsets, random_values

import cujagged
from cujagged import JaggedArray, bfloat16, layout
from cujagged.cpu import layout as cpu

# (dtype, inner) pairs whose item sizes pick every word / vector width: 1, 2, 3, 4, 6, 8, 12,
# 16, 24, 256 bytes
ITEM_KINDS = [(np.int8, ()), (np.float16, ()), (np.int8, (3,)), (np.float32, ()),
              (bfloat16, (3,)), (np.float64, ()), (np.float32, (3,)), (np.int32, (2, 2)),
              (np.float64, (3,)), (bfloat16, (128,)), (np.bool_, (7,)), (np.complex64, (3, 5))]


@st.composite
def layout_cases(draw, max_rows=12, max_len=30):
    lens = draw(lengths(max_rows=max_rows, max_len=max_len))
    dtype, inner = draw(st.sampled_from(ITEM_KINDS))
    off = make_offsets(lens, draw(st.sampled_from(OFFSET_DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return random_values(rng, (int(off[-1]), *inner), dtype), off


def bytes_equal(a, b) -> bool:
    a = a.get() if not isinstance(a, np.ndarray) else a
    b = b.get() if not isinstance(b, np.ndarray) else b
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


# ---- the Numba twins against plain loops --------------------------------------------------------
def test_word_view_picks_the_widest_word():
    for (dtype, inner), want in zip(ITEM_KINDS, [1, 2, 1, 4, 2, 8, 4, 8, 8, 8, 1, 8],
                                    strict=True):
        a = np.zeros((5, *inner), dtype)
        flat, w = cpu.word_view(a)
        assert flat.dtype.itemsize == want and flat.size * want == a.nbytes
        assert w * want == a[0].nbytes
        assert np.shares_memory(flat, a)


@given(layout_cases(), st.integers(0, 40))
def test_to_padded_twin_against_loop(case, max_len):
    values, off = case
    flat, w = cpu.word_view(values)
    pad_item = np.full((1, *values.shape[1:]), 5, values.dtype)
    out = np.empty((len(off) - 1, max_len, *values.shape[1:]), values.dtype)
    if out.size:
        cpu.to_padded(flat, off, cpu.word_view(out, 2)[0].reshape(len(off) - 1, max_len * w),
                      cpu.word_view(pad_item)[0], w)
    ref = np.empty_like(out)
    for b in range(len(off) - 1):
        for j in range(max_len):
            ref[b, j] = values[off[b] + j] if j < off[b + 1] - off[b] else pad_item[0]
    assert bytes_equal(out, ref)


@given(layout_cases(), st.data())
def test_gather_rows_twin_against_loop(case, data):
    src, _ = case
    s = src.shape[0]
    nrows = data.draw(st.integers(0, 6))
    step = data.draw(st.sampled_from([1, 2, -1, 3]))
    stride = data.draw(st.sampled_from([0, 2]))
    use_base = data.draw(st.booleans())
    bases, lens = [], []
    for b in range(nrows):
        first = data.draw(st.integers(0, max(s - 1, 0))) if use_base else b * stride
        bases.append(first - b * stride)
        if first >= s:
            lens.append(0)
            continue
        room = (s - 1 - first) // step + 1 if step > 0 else first // -step + 1
        lens.append(data.draw(st.integers(0, room)))
    base = np.array(bases, np.int64) if use_base else np.zeros(0, np.int64)
    out_off = make_offsets(lens)
    out = np.zeros((int(out_off[-1]), *src.shape[1:]), src.dtype)
    flat, w = cpu.word_view(src)
    cpu.gather_rows(flat, cpu.word_view(out)[0], out_off, base, stride, step, w)
    ref = np.zeros_like(out)
    for b in range(nrows):
        for i in range(lens[b]):
            ref[out_off[b] + i] = src[(base[b] if use_base else 0) + b * stride + i * step]
    assert bytes_equal(out, ref)


@given(lengths(max_rows=20, max_len=30), st.sampled_from(OFFSET_DTYPES))
def test_row_ids_positions_twins_against_numpy(lens, odt):
    off = make_offsets(lens, odt)
    ids = np.full(int(off[-1]), -1, odt)
    pos = np.full(int(off[-1]), -1, odt)
    cpu.row_ids(off, ids)
    cpu.positions(off, pos)
    assert np.array_equal(ids, np.repeat(np.arange(len(lens)), lens))
    assert np.array_equal(pos, np.concatenate([np.arange(n) for n in lens] + [np.zeros(0, int)]))


# ---- CUDA kernels against the twins -------------------------------------------------------------
gpu = pytest.mark.gpu


def _both(values, off, *, misalign=False):
    """The same JaggedArray on the CPU and on the GPU (optionally a view at an odd address)."""
    import cupy

    x = JaggedArray(values, off)
    gv = cupy.asarray(values)
    if misalign:
        gv = _shifted(gv)
    return x, JaggedArray(gv, cupy.asarray(off))


def _shifted(a):
    """A copy of GPU array ``a`` that starts one item past a 256-byte boundary (bytes copied
    raw, so any dtype works)."""
    import cupy

    big = cupy.empty((a.shape[0] + 1, *a.shape[1:]), a.dtype)
    view = big[1:]
    if a.size:
        view.reshape(a.size).view(np.uint8)[...] = a.reshape(a.size).view(np.uint8)
    return view


@gpu
@given(layout_cases(max_rows=40, max_len=70), st.booleans(), st.data())
def test_gpu_layout_kernels_match_twins(case, misalign, data):
    values, off = case
    x, g = _both(values, off, misalign=misalign)
    layout._FORCE_GATHER = data.draw(st.sampled_from([None, "segments", "search"]))
    try:
        _check_all_kernels(x, g, off, misalign, data)
    finally:
        layout._FORCE_GATHER = None


def _check_all_kernels(x, g, off, misalign, data):
    import cupy

    values = x.values
    for ml in (None, data.draw(st.integers(0, 80))):
        assert bytes_equal(g.to_padded(-1 if values.dtype.kind not in "ub" else 1, ml),
                           x.to_padded(-1 if values.dtype.kind not in "ub" else 1, ml))
    dense = x.to_padded(0, x.max_length + 3)
    gdense = cupy.asarray(dense)
    if misalign:
        gdense = _shifted(gdense)
    y = cujagged.from_padded(gdense, offsets=cupy.asarray(off))
    assert bytes_equal(y.values, x.values) and bytes_equal(y.offsets, x.offsets)
    assert bytes_equal(g.row_ids(), x.row_ids()) and bytes_equal(g.positions(), x.positions())
    n = x.nrows
    idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), max_size=60)) if n else [],
                   np.int64)
    gi, ci = cujagged.index_select(g, cupy.asarray(idx)), cujagged.index_select(x, idx)
    assert bytes_equal(gi.values, ci.values) and bytes_equal(gi.offsets, ci.offsets)
    s = slice(data.draw(st.one_of(st.none(), st.integers(-80, 80))),
              data.draw(st.one_of(st.none(), st.integers(-80, 80))),
              data.draw(st.sampled_from([None, 1, 2, -1, -3])))
    gs, cs = g[:, s], x[:, s]
    assert bytes_equal(gs.values, cs.values) and bytes_equal(gs.offsets, cs.offsets)


@gpu
@pytest.mark.parametrize("mode", [None, "segments", "search"])
@pytest.mark.parametrize("odt", OFFSET_DTYPES)
def test_gpu_many_rows_tiles_span_many_rows(odt, mode, monkeypatch):
    """Thousands of rows, most empty or tiny, with a few long ones: gather tiles cross many rows
    and the grid-stride loops run more than one tile per block."""
    import cupy

    monkeypatch.setattr(layout, "_FORCE_GATHER", mode)

    rng = np.random.default_rng(0)
    lens = rng.integers(0, 3, 20000)
    lens[::997] = 3000
    off = make_offsets(lens, odt)
    values = random_values(rng, (int(off[-1]), 3), np.float32)
    x, g = _both(values, off)
    assert bytes_equal(g.to_padded(0, 64), x.to_padded(0, 64))
    assert bytes_equal(g.row_ids(), x.row_ids()) and bytes_equal(g.positions(), x.positions())
    y = cujagged.from_padded(g.to_padded(), g.lengths)
    assert bytes_equal(y.values, x.values)
    idx = rng.integers(0, len(lens), 5000)
    assert bytes_equal(g[cupy.asarray(idx)].values, x[idx].values)
    assert bytes_equal(g[:, 1::2].values, x[:, 1::2].values)


@gpu
def test_gpu_huge_64bit_indexing(monkeypatch):
    """More than 2**31 items (1 byte each): every kernel indexes past int32."""
    import cupy

    big = 2**31 + 64
    lens = np.array([big, 5], np.int64)
    off = cupy.asarray(make_offsets(lens))
    period = 4093  # a prime-length byte pattern, so a misplaced copy shows
    pattern = (cupy.arange(period) * 7 % 251).astype(cupy.uint8)
    values = cupy.empty(big + 5, cupy.uint8)
    full = (big + 5) // period * period
    values[:full].reshape(-1, period)[...] = pattern
    values[full:] = pattern[: big + 5 - full]
    g = JaggedArray(values, off, max_length=big)
    dense = g.to_padded(7)
    assert dense.shape == (2, big)
    assert bool((dense[0] == values[:big]).all())
    assert bool((dense[1, :5] == values[big:]).all()) and bool((dense[1, 5:] == 7).all())
    y = cujagged.from_padded(dense, offsets=off)
    assert bool((y.values == values).all())
    del y
    monkeypatch.setattr(layout, "_FORCE_GATHER", "search")
    y = cujagged.from_padded(dense, offsets=off)
    del dense
    assert bool((y.values == values).all())
    del y
    rev = g[:, ::-1]
    assert int(rev.values[0]) == int(values[big - 1]) and int(rev.values[big - 1]) == int(values[0])
    assert int(rev.values[big]) == int(values[big + 4])
    del rev
    tail = g[:, -70:]
    assert tail.lengths.tolist() == [70, 5]
    assert bool((tail.values[:70] == values[big - 70:big]).all())
    ids = g.row_ids()
    assert int(ids[big - 1]) == 0 and int(ids[big]) == 1 and int((ids == 1).sum()) == 5
    del ids
    pos = g.positions()
    assert int(pos[big - 1]) == big - 1 and int(pos[big + 4]) == 4


def test_layout_review_fixes():
    """Validation that a user review found missing: offsets_from_lengths checks its input,
    from_padded's hints must agree with the rows, padding values must be real numbers (and -0.0
    is not +0.0), zero-size items in from_list, float row ids refused."""
    from cujagged import offsets_from_lengths

    assert offsets_from_lengths([2, 3]).tolist() == [0, 2, 5]
    assert offsets_from_lengths(np.array([2, 3], np.int32), np.int32).dtype == np.int32
    with pytest.raises(ValueError, match="non-negative"):
        offsets_from_lengths(np.array([2, -5, 3]))
    with pytest.raises(TypeError, match="int32 or int64"):
        offsets_from_lengths(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="does not fit dtype int32"):
        offsets_from_lengths(np.array([2**31 - 1, 5], np.int32), np.int32)
    with pytest.raises(ValueError, match="max_length=2 but the rows give 4"):
        layout.from_padded(np.ones((2, 4)), [4, 1], max_length=2)
    with pytest.raises(ValueError, match="total_length=3 but the rows give 5"):
        layout.from_padded(np.ones((2, 4)), [4, 1], total_length=3)
    assert layout.from_padded(np.ones((2, 4)), [4, 1], max_length=4).max_length == 4
    x = JaggedArray(np.ones((3, 2), np.float32), [0, 1, 3])
    for bad in (None, 5 + 7j, np.array([1.0])):
        with pytest.raises(TypeError, match="padding_value must be a real number"):
            layout.to_padded(x, padding_value=bad)
    with pytest.raises(ValueError, match="overflows float16"):
        layout.to_padded(x._with_values(x.values.astype(np.float16)), padding_value=1e6)
    assert np.isneginf(layout.to_padded(x._with_values(x.values.astype(np.float16)),
                                        padding_value=-np.inf)[0, 1:]).all()
    from cujagged.layout import _pad_words

    neg, pos = _pad_words(np.float32(-0.0), np.dtype(np.float32)), _pad_words(
        np.float32(0.0), np.dtype(np.float32))
    assert neg != pos and pos == (0, 0)
    z = JaggedArray.from_list([np.zeros((2, 0)), []])
    assert z.shape == (2, None, 0) and z.lengths.tolist() == [2, 0]
    with pytest.raises(TypeError, match="integers"):
        JaggedArray.from_row_ids(np.arange(3.0), [0, 0.7, 1.9])
    with pytest.raises(TypeError):
        JaggedArray.from_row_ids(np.arange(3.0), [0, 0, 1], nrows=3.9)


# ---- concat ------------------------------------------------------------------------------------
@st.composite
def concat_inputs(draw):
    n = draw(st.integers(1, 3))
    inner = draw(st.sampled_from([(), (3,), (2, 2)]))
    same_b = draw(st.integers(0, 5))
    xs = []
    for i in range(n):
        lens = draw(lengths(max_rows=5, max_len=6)) if draw(st.booleans()) else \
            draw(st.lists(st.integers(0, 6), min_size=same_b, max_size=same_b))
        dt = draw(st.sampled_from([np.float32, np.int64, bfloat16]))
        rng = np.random.default_rng(i)
        v = random_values(rng, (sum(lens), *inner), dt)
        xs.append(JaggedArray(v, make_offsets(lens, draw(st.sampled_from(OFFSET_DTYPES)))))
    return xs


def _promotes(xs):
    try:
        np.result_type(*[x.dtype for x in xs])
        return True
    except (TypeError, np.exceptions.DTypePromotionError):
        return False


@given(concat_inputs())
def test_concat_along_rows(xs):
    if not _promotes(xs):
        with pytest.raises(TypeError, match="no common dtype"):
            cujagged.concat(xs)
        return
    out = cujagged.concat(xs)
    want = [r for x in xs for r in x.astype(np.float64).tolist()]
    assert out.astype(np.float64).tolist() == want
    assert out.max_length == max(x.max_length for x in xs)
    assert out.dtype == np.result_type(*[x.dtype for x in xs])
    assert out.offsets.dtype == (np.int32 if all(x.offsets.dtype == np.int32 for x in xs)
                                 else np.int64)
    out.validate()


@given(concat_inputs())
def test_concat_within_rows(xs):
    if len({x.nrows for x in xs}) > 1 or not _promotes(xs):
        with pytest.raises((ValueError, TypeError), match="one number of rows|no common dtype"):
            cujagged.concat(xs, axis=1)
        return
    out = cujagged.concat(xs, axis=1 - xs[0].ndim)
    assert out.dtype == np.result_type(*[x.dtype for x in xs])
    assert out.offsets.dtype == (np.int32 if all(x.offsets.dtype == np.int32 for x in xs)
                                 else np.int64)
    rows = [x.astype(np.float64).tolist() for x in xs]
    want = [sum((r[b] for r in rows), []) for b in range(xs[0].nrows)]
    assert out.astype(np.float64).tolist() == want
    assert out.max_length == max((len(r) for r in want), default=0)
    out.validate()


def test_concat_errors():
    a = JaggedArray(np.ones((3, 2)), lengths=[1, 2])
    with pytest.raises(TypeError, match="sequence of JaggedArrays"):
        cujagged.concat(a)
    with pytest.raises(ValueError, match="at least one"):
        cujagged.concat([])
    with pytest.raises(TypeError, match=r"xs\[1\] must be a JaggedArray"):
        cujagged.concat([a, np.ones((3, 2))])
    with pytest.raises(ValueError, match="inner shape"):
        cujagged.concat([a, JaggedArray(np.ones((3, 3)), lengths=[1, 2])])
    with pytest.raises(ValueError, match="axis must be 0"):
        cujagged.concat([a], axis=2)
    with pytest.raises(TypeError, match="axis must be 0 or 1"):
        cujagged.concat([a], axis=True)
    # negative axes count from the end, as for the reductions: -1 is the inner axis here
    with pytest.raises(ValueError, match="axis must be 0"):
        cujagged.concat([a, a], axis=-1)
    assert cujagged.concat([a, a], axis=-2).tolist() == cujagged.concat([a, a], axis=1).tolist()
    assert cujagged.concat([a, a], axis=-3).nrows == 4


@gpu
@pytest.mark.parametrize("axis", [0, 1])
def test_gpu_concat_matches_cpu(axis):
    import cupy

    rng = np.random.default_rng(0)
    xs = [JaggedArray(random_values(rng, (sum(lens), 5), bfloat16), make_offsets(lens, od))
          for lens, od in (([3, 0, 7, 1], np.int32), ([0, 2, 2, 9], np.int64))]
    out = cujagged.concat([x.to("cuda") for x in xs], axis=axis)
    assert isinstance(out.values, cupy.ndarray)
    ref = cujagged.concat(xs, axis=axis)
    np.testing.assert_array_equal(cupy.asnumpy(out.offsets), ref.offsets)
    np.testing.assert_array_equal(cupy.asnumpy(out.values).view(np.uint16),
                                  ref.values.view(np.uint16))
    assert out.max_length == ref.max_length
