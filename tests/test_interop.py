"""Zero-copy exchange of the parts: DLPack producers, Awkward (CPU), PyTorch and JAX (guarded)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import INNER_SHAPES, OFFSET_DTYPES, lengths, make_offsets, random_values

import cujagged
from cujagged import JaggedArray, bfloat16

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64), np.dtype(np.int32)]


def _parts(lens, inner=(), dtype=np.float32, odtype=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    off = make_offsets(lens, odtype)
    vals = random_values(rng, (int(off[-1]), *inner), dtype)
    return vals, off


def _rows(values, offsets):
    o = np.asarray(offsets).astype(np.int64)
    return [np.asarray(values)[o[i]:o[i + 1]] for i in range(len(o) - 1)]


class DLPackOnly:
    """Exposes only the DLPack protocol of a NumPy array (like an unknown framework's tensor)."""

    def __init__(self, a):
        self._a = a
        self.dtype = a.dtype

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


# ---- generic DLPack ------------------------------------------------------------------------------
@given(lengths(), st.sampled_from(INNER_SHAPES), st.sampled_from(DTYPES),
       st.sampled_from(OFFSET_DTYPES))
def test_from_dlpack_parts_zero_copy(lens, inner, dtype, odtype):
    vals, off = _parts(lens, inner, dtype, odtype)
    x = cujagged.from_dlpack_parts(DLPackOnly(vals), DLPackOnly(off))
    assert isinstance(x.values, np.ndarray) and not x.is_gpu
    assert x.dtype == dtype and x.offsets.dtype == odtype
    assert x.nrows == len(lens) and x.max_length == max(lens, default=0)
    assert x.inner_shape == inner
    if vals.size:
        assert np.shares_memory(x.values, vals)
    assert np.shares_memory(x.offsets, off)
    np.testing.assert_array_equal(x.values, vals)


def test_from_dlpack_parts_passes_arrays_through_and_validates():
    vals, off = _parts([2, 0, 3])
    x = cujagged.from_dlpack_parts(vals, off, max_length=3)
    assert x.values is vals and x.max_length == 3
    with pytest.raises(ValueError, match="offsets"):
        cujagged.from_dlpack_parts(vals, np.array([0, 2, 1, 5]))
    with pytest.raises(TypeError, match="values must support DLPack"):
        cujagged.from_dlpack_parts([1.0, 2.0], off)
    with pytest.raises(TypeError, match="offsets must support DLPack"):
        cujagged.from_dlpack_parts(DLPackOnly(vals), object())


def test_bf16_numpy_parts_and_unknown_bf16_producer():
    vals = np.arange(10, dtype=np.float32).reshape(5, 2).astype(bfloat16)
    off = np.array([0, 2, 5])
    x = cujagged.from_dlpack_parts(vals, off)
    assert x.dtype == bfloat16 and x.values is vals
    # NumPy cannot export bfloat16 through DLPack, and an unknown producer has no bit view
    with pytest.raises(TypeError, match="bfloat16"):
        cujagged.from_dlpack_parts(DLPackOnly(vals), off)


def test_missing_framework_gives_clear_importerror(monkeypatch):
    import sys

    for mod in ("torch", "jax", "awkward"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    x = JaggedArray(*_parts([1, 2]))
    for fn, mod in [(cujagged.to_torch, "torch"), (cujagged.to_jax, "jax"),
                    (cujagged.to_awkward, "awkward"), (cujagged.to_torch_nested, "torch")]:
        with pytest.raises(ImportError, match=f"pip install {mod}"):
            fn(x)


# ---- Awkward -------------------------------------------------------------------------------------
@given(lengths(), st.sampled_from(INNER_SHAPES), st.sampled_from(DTYPES),
       st.sampled_from(OFFSET_DTYPES))
def test_awkward_round_trip_zero_copy(lens, inner, dtype, odtype):
    ak = pytest.importorskip("awkward")
    vals, off = _parts(lens, inner, dtype, odtype)
    x = JaggedArray(vals, off)
    a = cujagged.to_awkward(x)
    assert len(a) == len(lens)
    assert ak.to_list(ak.num(a, axis=1)) == list(lens)
    assert ak.to_list(a) == [r.tolist() for r in _rows(vals, off)]
    y = cujagged.from_awkward(a)
    assert y.offsets.dtype == odtype and y.dtype == dtype and y.inner_shape == inner
    assert np.shares_memory(y.offsets, off)
    if vals.size:
        assert np.shares_memory(y.values, vals)
    np.testing.assert_array_equal(y.values, vals)
    np.testing.assert_array_equal(y.offsets, off)


def test_from_awkward_builtin_lists_slices_and_listarray():
    ak = pytest.importorskip("awkward")
    a = ak.Array([[1.0, 2.0], [], [3.0], [4.0, 5.0, 6.0]])
    x = cujagged.from_awkward(a)
    assert [r.tolist() for r in _rows(x.values, x.offsets)] == ak.to_list(a)
    assert x.max_length == 3
    # a slice: offsets no longer start at 0 -> rebased (copy), still correct
    s = a[2:]
    y = cujagged.from_awkward(s)
    assert int(y.offsets[0]) == 0
    assert [r.tolist() for r in _rows(y.values, y.offsets)] == [[3.0], [4.0, 5.0, 6.0]]
    # a ListArray (starts/stops) with rows out of order
    la = ak.contents.ListArray(ak.index.Index64(np.array([3, 0])),
                               ak.index.Index64(np.array([4, 2])),
                               ak.contents.NumpyArray(np.arange(4.0)))
    z = cujagged.from_awkward(ak.Array(la))
    assert [r.tolist() for r in _rows(z.values, z.offsets)] == [[3.0], [0.0, 1.0]]
    # fixed-size inner dimension from Python lists
    r = ak.to_regular(ak.Array([[[1, 2]], [], [[3, 4], [5, 6]]]), axis=2)
    w = cujagged.from_awkward(r)
    assert w.inner_shape == (2,) and w.values.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_from_awkward_rejects_what_is_not_one_ragged_dim():
    ak = pytest.importorskip("awkward")
    with pytest.raises(ValueError, match="variable-length rows"):
        cujagged.from_awkward(ak.Array([1.0, 2.0]))
    with pytest.raises(ValueError):
        cujagged.from_awkward(ak.Array([[1.0, None], [2.0]]))
    with pytest.raises(ValueError):
        cujagged.from_awkward(ak.Array([[[1.0], [2.0, 3.0]], []]))
    with pytest.raises(TypeError, match="bfloat16"):
        cujagged.to_awkward(JaggedArray(np.zeros(2, dtype=bfloat16), np.array([0, 2])))


def test_from_awkward_slice_keeping_offsets_at_zero():
    """A leading slice of an awkward array keeps offsets from 0 over the whole content: the
    values past offsets[-1] are left out."""
    ak = pytest.importorskip("awkward")
    a = ak.Array([[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]])[:2]
    x = cujagged.from_awkward(a)
    assert x.tolist() == [[1.0, 2.0], [3.0]] and x.values.shape == (3,)


# ---- PyTorch -------------------------------------------------------------------------------------
def _torch_dtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.float64): torch.float64, np.dtype(np.int32): torch.int32,
            bfloat16: torch.bfloat16}[np.dtype(dtype)]


def _check_torch_round_trip(torch, x, host_vals, host_off):
    tv, to = cujagged.to_torch(x)
    assert tv.dtype == _torch_dtype(torch, x.dtype)
    ptr = (lambda a: a.data.ptr) if x.is_gpu else (lambda a: a.__array_interface__["data"][0])
    assert tv.data_ptr() == ptr(x.values)
    assert tv.is_cuda == x.is_gpu
    assert torch.equal(tv.cpu().view(torch.int16) if tv.dtype == torch.bfloat16 else tv.cpu(),
                       torch.from_numpy(host_vals.view(np.int16) if host_vals.dtype == bfloat16
                                        else host_vals))
    assert to.tolist() == host_off.tolist()
    y = cujagged.from_torch(tv, to)
    assert y.is_gpu == x.is_gpu and y.dtype == x.dtype
    assert ptr(y.values) == ptr(x.values)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, bfloat16, np.int32])
@pytest.mark.parametrize("odtype", [np.int32, np.int64])
def test_torch_parts_cpu(dtype, odtype):
    torch = pytest.importorskip("torch")
    vals, off = _parts([3, 0, 1, 5], (4,), dtype, odtype)
    _check_torch_round_trip(torch, JaggedArray(vals, off), vals, off)


@pytest.mark.parametrize("odtype", [np.int32, np.int64])
def test_torch_nested_cpu(odtype):
    torch = pytest.importorskip("torch")
    vals, off = _parts([3, 0, 1, 5], (4,), np.float32, odtype)
    x = JaggedArray(vals, off)
    njt = cujagged.to_torch_nested(x)
    assert njt.is_nested and njt.layout == torch.jagged and njt.shape[0] == 4
    for got, want in zip(njt.unbind(), _rows(vals, off), strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    assert njt.values().data_ptr() == vals.__array_interface__["data"][0]
    y = cujagged.from_torch_nested(njt)
    assert y.max_length == 5 and np.shares_memory(y.values, vals)
    np.testing.assert_array_equal(y.offsets, off)
    # an NJT built by torch itself
    rows = [torch.randn(n, 3) for n in (2, 5, 1)]
    t = torch.nested.nested_tensor(rows, layout=torch.jagged)
    z = cujagged.from_torch_nested(t)
    assert z.offsets.tolist() == [0, 2, 7, 8]
    np.testing.assert_array_equal(z.values, torch.cat(rows).numpy())
    with pytest.raises(TypeError, match="nested"):
        cujagged.from_torch_nested(torch.zeros(3))
    # PyTorch lets max_seqlen be an upper bound: validated, the longest row is measured
    ub = torch.nested.nested_tensor_from_jagged(torch.arange(20.0).reshape(10, 2),
                                                torch.tensor([0, 4, 10]), max_seqlen=16)
    assert cujagged.from_torch_nested(ub).to_padded().shape == (2, 6, 2)
    assert cujagged.from_torch_nested(ub, validate=False).max_length == 16  # trusted


def test_torch_tensor_where_an_array_is_expected_is_named():
    torch = pytest.importorskip("torch")
    t = torch.zeros(4, 1, 32)
    with pytest.raises(TypeError, match=r"values must be a NumPy or CuPy array, got "
                                        r"torch.Tensor; .*from_torch"):
        JaggedArray(t, [0, 4])
    with pytest.raises(TypeError, match=r"v must be .*got torch.Tensor"):
        cujagged.jagged_flash_attention(np.zeros((4, 1, 32)), np.zeros((4, 1, 32)), t, [0, 4])


def _gpu_parts(lens, inner, dtype, odtype):
    import cupy

    vals, off = _parts(lens, inner, dtype, odtype)
    return vals, off, JaggedArray(cupy.asarray(vals), cupy.asarray(off))


# ---- nested-tensor and JAX conversions: exact small cases ---------------------------------------
def test_to_torch_nested_offsets_are_int64():
    """The NJT's offsets are int64 whatever the offsets dtype of x (int32 ones converted)."""
    torch = pytest.importorskip("torch")
    vals, off = _parts([3, 0, 1], (2,), np.float32, np.int32)
    njt = cujagged.to_torch_nested(JaggedArray(vals, off))
    assert njt.offsets().dtype == torch.int64 and njt.offsets().tolist() == [0, 3, 3, 4]


def test_from_torch_nested_with_holes_gives_its_rows():
    """An NJT with lengths= (rows shorter than their offsets' span) imports as its own rows,
    not as the spans of its offsets."""
    torch = pytest.importorskip("torch")
    njt = torch.nested.nested_tensor_from_jagged(torch.arange(14.0).reshape(7, 2),
                                                 torch.tensor([0, 4, 7]),
                                                 lengths=torch.tensor([2, 1]))
    x = cujagged.from_torch_nested(njt)
    assert x.tolist() == [[[0.0, 1.0], [2.0, 3.0]], [[8.0, 9.0]]]
    assert x.offsets.tolist() == [0, 2, 3] and x.max_length == 2


def test_to_jax_refuses_offsets_past_int32_without_x64():
    """Without jax_enable_x64, offsets past int32 raise instead of wrapping (zero-byte items:
    2**31 of them take no memory)."""
    jax = pytest.importorskip("jax")
    if jax.config.read("jax_enable_x64"):
        pytest.skip("jax_enable_x64 is on")
    x = JaggedArray(np.empty((2**31, 0), np.float32), [0, 2**31], validate=False)
    with pytest.raises(ValueError, match="offsets exceed int32 and jax_enable_x64 is off"):
        cujagged.to_jax(x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16, bfloat16])
@pytest.mark.parametrize("odtype", [np.int32, np.int64])
def test_torch_parts_gpu(dtype, odtype):
    torch = pytest.importorskip("torch")
    vals, off, x = _gpu_parts([3, 0, 1, 5, 130], (8,), dtype, odtype)
    _check_torch_round_trip(torch, x, vals, off)


@pytest.mark.gpu
def test_torch_bf16_cuda_tensor_arrives_as_ml_dtypes_bf16():
    torch = pytest.importorskip("torch")
    import cupy

    tv = torch.randn(7, 3, device="cuda").to(torch.bfloat16)
    to = torch.tensor([0, 3, 3, 7], device="cuda")
    x = cujagged.from_dlpack_parts(tv, to)
    assert isinstance(x.values, cupy.ndarray) and x.dtype == bfloat16
    assert x.values.data.ptr == tv.data_ptr() and x.max_length == 4
    np.testing.assert_array_equal(cupy.asnumpy(x.values.view(np.int16)),
                                  tv.view(torch.int16).cpu().numpy())


@pytest.mark.gpu
def test_torch_nested_gpu():
    torch = pytest.importorskip("torch")
    rows = [torch.randn(n, 2, 8, device="cuda", dtype=torch.bfloat16) for n in (4, 0, 9, 1)]
    t = torch.nested.nested_tensor(rows, layout=torch.jagged)
    x = cujagged.from_torch_nested(t)
    assert x.is_gpu and x.dtype == bfloat16 and x.inner_shape == (2, 8)
    assert x.values.data.ptr == t.values().data_ptr()
    assert x.offsets.get().tolist() == [0, 4, 4, 13, 14]
    back = cujagged.to_torch_nested(x)
    assert back.values().data_ptr() == t.values().data_ptr()
    for got, want in zip(back.unbind(), rows, strict=True):
        assert torch.equal(got, want)


# ---- JAX -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, bfloat16])
def test_jax_cpu(dtype):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    vals, off = _parts([3, 0, 1, 5], (4,), dtype, np.int64)
    jv, jo = cujagged.to_jax(JaggedArray(vals, off))
    assert jv.dtype == jnp.dtype(dtype) and jv.shape == vals.shape
    np.testing.assert_array_equal(np.asarray(jv).view(np.int16) if dtype == bfloat16
                                  else np.asarray(jv),
                                  vals.view(np.int16) if dtype == bfloat16 else vals)
    assert np.asarray(jo).tolist() == off.tolist()
    if not jax.config.read("jax_enable_x64"):
        assert jo.dtype == jnp.int32
    y = cujagged.from_jax(jv, jo)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.values.view(np.int16) if dtype == bfloat16 else y.values,
                                  vals.view(np.int16) if dtype == bfloat16 else vals)


def test_jax_refuses_64_bit_values_without_x64():
    jax = pytest.importorskip("jax")
    if jax.config.read("jax_enable_x64"):
        pytest.skip("jax_enable_x64 is on")
    for dtype in (np.float64, np.int64):
        with pytest.raises(ValueError, match=f"{np.dtype(dtype)} values and jax_enable_x64 is off"):
            cujagged.to_jax(JaggedArray(np.array([2**40 + 5, 7], dtype), [0, 2]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, bfloat16])
def test_jax_gpu(dtype):
    jax = pytest.importorskip("jax")
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("JAX has no GPU backend here")
    import cupy

    vals, off, x = _gpu_parts([3, 0, 1, 5, 70], (8,), dtype, np.int32)
    jv, jo = cujagged.to_jax(x)
    assert list(jv.devices())[0].platform == "gpu"
    y = cujagged.from_jax(jv, jo)
    assert isinstance(y.values, cupy.ndarray) and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cupy.asnumpy(y.values.view(np.int16)), vals.view(np.int16))
    assert y.offsets.get().tolist() == off.tolist()
