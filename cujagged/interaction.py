"""Feature interaction (DESIGN.md kernel family 5): jagged matmuls and jagged2 ops, forward and
backward.

``jagged_dense_bmm``: X ``[B, None, K]`` (values ``[ΣL, K]``) times a dense ``[B, K, N]`` -> a
JaggedArray ``[B, None, N]`` (every item of row b times matrix b: FBGEMM's
``jagged_dense_bmm``). ``jagged_jagged_bmm``: X ``[B, None, M]`` and Y ``[B, None, N]`` of one
structure -> dense ``[B, M, N]``, ``Σ_i X_b[i]ᵀ Y_b[i]`` (the weight gradient of the former; an
empty row gives zeros). Each one's backward is the other, exposed as ``*_backward``.

**jagged2** (one ``L_b × L_b`` matrix per row, e.g. the pairwise interactions of a user's items):
a JaggedArray whose row ``b`` is that matrix flattened row-major, so values ``[ΣL_b², *inner]``
and offsets ``cumsum(L_b²)`` (:func:`jagged2_offsets`); every op on one takes the jagged array
``x`` whose lengths ``L_b`` it belongs to. ``jagged_jagged_bmm_jagged_out(x, y)``:
``x_b @ y_bᵀ`` as jagged2; ``array_jagged_bmm_jagged_out(m, x)``: ``m_b @ x_b`` (jagged);
``jagged2_softmax`` (over each matrix's rows or columns); ``jagged2_to_padded``;
``jagged_self_subtraction(x)``: ``x_b[i] − x_b[j]`` (e.g. timestamp deltas);
``dense_jagged_cat(d, x)``: ``d[b]`` prepended to row ``b``.

Backends: NumPy values run the Numba kernels of ``cujagged.cpu.interaction`` (float64
accumulation, results in the inputs' dtype). On CuPy, ``jagged_dense_bmm`` and
``jagged_jagged_bmm`` (so both backwards too) of bf16/fp16 values with inner sizes multiples of 8
run the tensor-core kernels of ``cuda_src/interaction.cu`` (fp32 accumulation; real tiles only),
as do ``jagged_jagged_bmm_jagged_out`` and ``array_jagged_bmm_jagged_out`` (and their backwards)
with D, N multiples of 8.
``jagged2_softmax``, ``jagged2_to_padded`` and ``jagged_self_subtraction`` (and their
backwards) are array code on either backend over the row-wise kernels and ``to_padded`` (each
matrix's lines as the rows of a jagged array; columns through a transposing gather), so on CuPy
they run those CUDA kernels; ``dense_jagged_cat`` is indexing. The fp32/fp64 matmuls and other
inner sizes take a host round trip through the Numba kernels (correct, not fast).

Dtypes: the matmuls take float16, bfloat16, float32, float64, both operands of one dtype (as
``torch.bmm``); the self-subtraction also signed integers; the cat any dtype.
"""

from __future__ import annotations

import numpy as np

from ._backend import bfloat16, cupy, is_array, is_gpu_array, not_array, on_array_device, xp_of
from ._kernels import KernelFamily
from .cpu import interaction as _cpu

__all__ = ["jagged_dense_bmm", "jagged_dense_bmm_backward", "jagged_jagged_bmm",
           "jagged_jagged_bmm_backward", "jagged2_offsets", "jagged_jagged_bmm_jagged_out",
           "jagged_jagged_bmm_jagged_out_backward", "array_jagged_bmm_jagged_out",
           "array_jagged_bmm_jagged_out_backward", "jagged2_to_padded", "jagged_self_subtraction",
           "jagged_self_subtraction_backward", "dense_jagged_cat", "dense_jagged_cat_backward",
           "jagged2_softmax", "jagged2_softmax_backward"]

_FLOATS = (np.dtype(np.float16), bfloat16, np.dtype(np.float32), np.dtype(np.float64))


def _jagged_cls():
    from .jagged import JaggedArray

    return JaggedArray


def _check_x(x, name, what):
    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"{name} must be a JaggedArray {what}, got {type(x).__name__}")
    if len(x.inner_shape) != 1:
        raise ValueError(f"{name} must have one inner dimension ({what}), got shape {x.shape}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has values of dtype {x.dtype}: the jagged matmuls take float16, "
                        "bfloat16, float32 or float64")


def _check_dense(y, name, x, xname, shape_doc):
    if not is_array(y):
        raise not_array(name, y, f"a NumPy/CuPy array {shape_doc}")
    if is_gpu_array(y) != x.is_gpu:
        raise TypeError(f"{name} is on {'the GPU' if is_gpu_array(y) else 'the host'} but {xname} "
                        f"is on {x.device}")
    if y.ndim != 3 or y.shape[0] != x.nrows:
        raise ValueError(f"{name} must be {shape_doc} with B={x.nrows} (the rows of {xname}), got "
                         f"shape {tuple(y.shape)}")
    if y.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {y.dtype} but {xname} has {x.dtype}: give both one "
                        "dtype")


def _check_pair(x, y, xname, yname):
    if x.is_gpu != y.is_gpu:
        raise TypeError(f"{xname} is on {x.device} but {yname} is on {y.device}")
    if not x.same_structure(y):
        raise ValueError(f"{xname} and {yname} must have the same structure (equal offsets); got "
                         f"{x.nrows} and {y.nrows} rows with different offsets")
    if x.dtype != y.dtype:
        raise TypeError(f"{yname} has dtype {y.dtype} but {xname} has {x.dtype}: give both one "
                        "dtype")


def _check_grad_like(grad, ref, refname):
    """A backward's ``grad`` must have the inner shape and dtype of ``ref`` (what it is the
    gradient of: the forward's input or output)."""
    if grad.inner_shape != ref.inner_shape:
        raise ValueError(f"grad must have {refname}'s inner shape {ref.inner_shape}, got "
                         f"{grad.inner_shape}")
    if grad.dtype != ref.dtype:
        raise TypeError(f"grad must have {refname}'s dtype {ref.dtype}, got {grad.dtype}")


def _wide(a):
    """Host values for the Numba kernels: 16-bit floats widened to float32."""
    return a.astype(np.float32) if a.dtype in (np.dtype(np.float16), bfloat16) else a


def _host(a):
    return cupy.asnumpy(a) if is_gpu_array(a) else a


def _dev(a, like):
    """A host result back on the device of ``like`` (a JaggedArray)."""
    return cupy.asarray(a) if like.is_gpu else a


_TN = {np.dtype(np.float16): "f16_t"}
if bfloat16 is not None:
    _TN[bfloat16] = "bf16_t"
_FAM = KernelFamily("interaction.cu", [
    *(f"{k}<{t}, {bn}>" for k in ("jagged_dense_bmm_mma", "jagged_jagged_bmm_mma",
                                  "jagged_jagged_bmm_jagged_out_mma")
      for t in ("bf16_t", "f16_t") for bn in (64, 128)),
    *(f"array_jagged_bmm_jagged_out_mma<{t}, {bn}, {tr}>" for t in ("bf16_t", "f16_t")
      for bn in (64, 128) for tr in ("false", "true"))])
# output columns a block computes: None picks 128 from N = 128 on, else 64 (the benchmark sets it)
_BN: int | None = None


def _bn(n: int) -> int:
    return _BN or (128 if n >= 128 else 64)


def _kernel_ok(dtype, dims, *arrays) -> bool:
    """The tensor-core kernels apply: 16-bit values, inner sizes positive multiples of 8 and
    C-contiguous 16-byte-aligned operands."""
    return (dtype in _TN and all(d > 0 and d % 8 == 0 for d in dims)
            and all(a.flags.c_contiguous and a.data.ptr % 16 == 0 for a in arrays))


def _item_tiles(x, N: int):
    """The 64-item tile list of x (attention's, no truncation) and the output-column tiling of
    the kernels that use it: ``(bn, nt, grid, tile_info, tile_off)``, or None past the tile
    list's int32 limits (its row lengths and ``i0 + 64``)."""
    from .attention import _NO_LIMIT, _tile_list

    T, B = int(x.values.shape[0]), x.nrows
    bn = _bn(N)
    bound, nt = (T + 63) // 64 + B, (N + bn - 1) // bn
    if bound * nt >= 2**31 or x.max_length > 2**31 - 65:
        return None
    info, tile_off = _tile_list(cupy, x.offsets, x.offsets, 64, _NO_LIMIT, x._cache, bound)
    return bn, nt, bound * nt, info, tile_off


def _on_item_tiles(x, N: int, launch):
    """x with new values ``out [T, N]`` (x's dtype) written by ``launch(out, bn, nt, grid,
    tile_info, tile_off)`` over x's item tiles (:func:`_item_tiles`; no launch for T = 0), or None
    past the tile list's limits."""
    out = cupy.empty((int(x.values.shape[0]), N), dtype=x.dtype)
    if out.shape[0]:
        tiles = _item_tiles(x, N)
        if tiles is None:
            return None
        launch(out, *tiles)
    return x._with_values(out)


def _gpu_dense_bmm(x, y):
    """``jagged_dense_bmm_mma`` (cuda_src/interaction.cu) over the attention tile list; None
    where it does not apply."""
    xv = x.values
    K, N = int(y.shape[1]), int(y.shape[2])
    if x.dtype not in _TN:  # (before copying a transposed y)
        return None
    y = cupy.ascontiguousarray(y)
    if not _kernel_ok(x.dtype, (K, N), xv, y):
        return None

    def launch(out, bn, nt, grid, info, tile_off):
        _FAM.get(f"jagged_dense_bmm_mma<{_TN[x.dtype]}, {bn}>")(
            (grid,), (128,), (xv, y, out, info, tile_off, np.int64(x.nrows), np.int32(nt),
                              np.int32(K), np.int32(N)))

    return _on_item_tiles(x, N, launch)


def _gpu_jj_bmm(x, y):
    """``jagged_jagged_bmm_mma``: a block per (row, output tile), rows longest first; None where
    it does not apply."""
    xv, yv = x.values, y.values
    B, M, N = x.nrows, int(xv.shape[1]), int(yv.shape[1])
    if not _kernel_ok(x.dtype, (M, N), xv, yv):
        return None
    out = cupy.empty((B, M, N), dtype=x.dtype)
    bn = _bn(N)
    mt, nt = (M + 63) // 64, (N + bn - 1) // bn
    if B == 0 or B * mt * nt >= 2**31:
        return out if B == 0 else None
    off = x.offsets.astype(np.int64, copy=False)
    rows = cupy.argsort(off[:-1] - off[1:]).astype(np.int32)  # longest first
    _FAM.get(f"jagged_jagged_bmm_mma<{_TN[x.dtype]}, {bn}>")(
        (B * mt * nt,), (128,), (xv, yv, out, off, rows, np.int32(mt), np.int32(nt),
                                 np.int32(M), np.int32(N)))
    return out


def _jagged2_tiles(x, off, off2, bn: int):
    """The tile records of ``jagged_jagged_bmm_jagged_out_mma``: int64 ``[n, 4]`` on the device,
    one per 64 x ``bn`` tile of every row's L x L matrix: (row start, ``off2[row]``, L, the
    tile's index in its row). Built from the host offsets; cached in ``x``'s structure cache."""
    key = ("jagged2_tiles", bn)
    hit = x._cache.get(key)
    if hit is not None and hit[0] is x.offsets:
        return hit[1]
    lens = np.diff(off)
    counts = -(-lens // 64) * -(-lens // bn)
    first = np.cumsum(counts) - counts  # each row's first tile
    rec = np.empty((int(counts.sum()), 4), dtype=np.int64)
    rec[:, 0] = np.repeat(off[:-1], counts)
    rec[:, 1] = np.repeat(off2[:-1], counts)
    rec[:, 2] = np.repeat(lens, counts)
    rec[:, 3] = np.arange(len(rec)) - np.repeat(first, counts)
    out = cupy.asarray(rec)
    x._cache[key] = (x.offsets, out)
    return out


def _gpu_jj_jagged_out(x, y, off, off2):
    """``jagged_jagged_bmm_jagged_out_mma``: a block per 64 x BN tile of a row's L x L matrix
    (tiles of equal work: no ordering); None where it does not apply. ``off`` / ``off2``: the
    host offsets and ``cumsum(L²)``."""
    xv, yv = x.values, y.values
    D = int(xv.shape[1])
    if not _kernel_ok(x.dtype, (D,), xv, yv):
        return None
    bn = _bn(int(np.diff(off).max(initial=0)))
    out = cupy.empty(int(off2[-1]), dtype=x.dtype)
    tiles = _jagged2_tiles(x, off, off2, bn)
    if len(tiles) == 0:
        return out
    if len(tiles) >= 2**31:
        return None
    _FAM.get(f"jagged_jagged_bmm_jagged_out_mma<{_TN[x.dtype]}, {bn}>")(
        (len(tiles),), (128,), (xv, yv, out, tiles, np.int32(D)))
    return out


def _gpu_ajbmm(m, x, off2, trans):
    """``array_jagged_bmm_jagged_out_mma`` (``m_b @ x_b`` or ``m_bᵀ @ x_b``) over the
    attention tile list of ``x``; None where it does not apply."""
    xv, mv = x.values, m.values
    N = int(xv.shape[1])
    if not _kernel_ok(x.dtype, (N,), xv, mv):  # (m's rows: any alignment; its start: 16 B)
        return None

    def launch(out, bn, nt, grid, info, tile_off):
        _FAM.get(f"array_jagged_bmm_jagged_out_mma<{_TN[x.dtype]}, {bn}, "
                 f"{'true' if trans else 'false'}>")(
            (grid,), (128,), (mv, xv, out, cupy.asarray(off2, dtype=np.int64), info, tile_off,
                              np.int64(x.nrows), np.int32(nt), np.int32(N)))

    return _on_item_tiles(x, N, launch)


def _dense_bmm(x, y):
    if x.is_gpu:
        res = _gpu_dense_bmm(x, y)
        if res is not None:
            return res
    xv, off, yh = _host(x.values), _host(x.offsets), _host(y)
    out = np.zeros((xv.shape[0], yh.shape[2]), dtype=np.float64)
    _cpu.jagged_dense_bmm(_wide(xv), off, _wide(yh), out)
    return x._with_values(_dev(out.astype(x.dtype), x))


def _jj_bmm(x, y):
    if x.is_gpu:
        res = _gpu_jj_bmm(x, y)
        if res is not None:
            return res
    xv, yv, off = _host(x.values), _host(y.values), _host(x.offsets)
    out = np.zeros((x.nrows, xv.shape[1], yv.shape[1]), dtype=np.float64)
    _cpu.jagged_jagged_bmm(_wide(xv), _wide(yv), off, out)
    return _dev(out.astype(x.dtype), x)


def _swap(y):
    return y.swapaxes(1, 2)


@on_array_device
def jagged_dense_bmm(x, y):
    """Every item of row ``b`` of ``x`` times the dense matrix ``y[b]``.

    Args:
        x: JaggedArray ``[B, None, K]`` (values ``[ΣL, K]``).
        y: dense ``[B, K, N]``, same dtype and device as ``x``.

    Returns:
        JaggedArray ``[B, None, N]`` with the offsets of ``x``: ``out_b = x_b @ y[b]``.
    """
    _check_x(x, "x", "[B, None, K]")
    _check_dense(y, "y", x, "x", "[B, K, N]")
    if y.shape[1] != x.inner_shape[0]:
        raise ValueError(f"y must be [B, K={x.inner_shape[0]}, N] to multiply x {x.shape}, got "
                         f"shape {tuple(y.shape)}")
    return _dense_bmm(x, y)


@on_array_device
def jagged_jagged_bmm(x, y):
    """Per-row ``x_bᵀ @ y_b`` of two JaggedArrays of one structure.

    Args:
        x: JaggedArray ``[B, None, M]``.
        y: JaggedArray ``[B, None, N]`` with the offsets (by value) and dtype of ``x``.

    Returns:
        dense ``[B, M, N]``: ``Σ_i x_b[i]ᵀ y_b[i]`` (zeros for an empty row).
    """
    _check_x(x, "x", "[B, None, M]")
    _check_x(y, "y", "[B, None, N]")
    _check_pair(x, y, "x", "y")
    return _jj_bmm(x, y)


@on_array_device
def jagged_dense_bmm_backward(grad, x, y):
    """Gradients of ``out = jagged_dense_bmm(x, y)`` given ``grad`` (dL/dout, JaggedArray
    ``[B, None, N]`` with the structure of ``x``).

    Returns:
        ``(grad_x, grad_y)``: JaggedArray ``[B, None, K]`` (``grad_b @ y[b]ᵀ``) and dense
        ``[B, K, N]`` (``x_bᵀ @ grad_b``).
    """
    _check_x(x, "x", "[B, None, K]")
    _check_dense(y, "y", x, "x", "[B, K, N]")
    _check_x(grad, "grad", "[B, None, N]")
    _check_pair(x, grad, "x", "grad")
    if y.shape[1] != x.inner_shape[0] or grad.inner_shape[0] != y.shape[2]:
        raise ValueError(f"x {x.shape}, y {tuple(y.shape)} and grad {grad.shape} do not match "
                         "[B, None, K], [B, K, N] and [B, None, N]")
    return _dense_bmm(grad, _swap(y)), _jj_bmm(x, grad)


@on_array_device
def jagged_jagged_bmm_backward(grad, x, y):
    """Gradients of ``out = jagged_jagged_bmm(x, y)`` given ``grad`` (dL/dout, dense
    ``[B, M, N]``).

    Returns:
        ``(grad_x, grad_y)``: JaggedArrays ``[B, None, M]`` (``y_b @ grad[b]ᵀ``) and
        ``[B, None, N]`` (``x_b @ grad[b]``).
    """
    _check_x(x, "x", "[B, None, M]")
    _check_x(y, "y", "[B, None, N]")
    _check_pair(x, y, "x", "y")
    _check_dense(grad, "grad", x, "x", "[B, M, N]")
    if grad.shape[1:] != (x.inner_shape[0], y.inner_shape[0]):
        raise ValueError(f"grad must be [B, M={x.inner_shape[0]}, N={y.inner_shape[0]}], got "
                         f"shape {tuple(grad.shape)}")
    return _dense_bmm(y, _swap(grad)), _dense_bmm(x, grad)



# ---- jagged2 ---------------------------------------------------------------------------------
def _sq_offsets_host(x):
    """x's host offsets and ``cumsum(L²)``, int64 (one transfer, then cached with x's
    structure; read-only)."""
    hit = x._cache.get("jagged2_host")
    if hit is None:
        off = x._host_offsets()
        lens = np.diff(off)
        off2 = np.zeros_like(off)
        np.cumsum(lens * lens, out=off2[1:])
        hit = x._cache["jagged2_host"] = (off, off2)
    return hit


@on_array_device
def jagged2_offsets(x):
    """Offsets ``[B+1]`` (int64, on the device of ``x``) of the jagged2 arrays of ``x``'s
    structure: ``cumsum(L_b²)``."""
    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    return _dev(_sq_offsets_host(x)[1].copy(), x)


def _jagged2(values, x, off2):
    J = _jagged_cls()
    ml = x.max_length
    return J(_dev(values, x), _dev(off2.copy(), x), max_length=ml * ml, validate=False)


def _check_m(m, x, name="m"):
    """m must be a jagged2 array of x's structure (offsets cumsum(L_b²) by value)."""
    J = _jagged_cls()
    if not isinstance(m, J):
        raise TypeError(f"{name} must be a jagged2 JaggedArray (rows of L_b² items), got "
                        f"{type(m).__name__}")
    if m.is_gpu != x.is_gpu:
        raise TypeError(f"{name} is on {m.device} but x is on {x.device}")
    off, off2 = _sq_offsets_host(x)
    if m.nrows != x.nrows or not np.array_equal(m._host_offsets(), off2):
        raise ValueError(f"{name} must be a jagged2 array of x's rows: offsets cumsum(L_b²) = "
                         "jagged2_offsets(x), one L_b x L_b matrix a row")
    return off, off2


@on_array_device
def jagged_jagged_bmm_jagged_out(x, y):
    """Per-row ``x_b @ y_bᵀ`` as jagged2.

    Args:
        x, y: JaggedArrays ``[B, None, D]`` of one structure and dtype.

    Returns:
        jagged2 JaggedArray: row ``b`` is the ``L_b × L_b`` matrix ``x_b[i] · y_b[j]``, values
        ``[ΣL_b²]``, offsets ``jagged2_offsets(x)``.
    """
    _check_x(x, "x", "[B, None, D]")
    _check_x(y, "y", "[B, None, D]")
    _check_pair(x, y, "x", "y")
    if x.inner_shape != y.inner_shape:
        raise ValueError(f"x and y must have one D, got shapes {x.shape} and {y.shape}")
    off, off2 = _sq_offsets_host(x)
    if x.is_gpu:
        res = _gpu_jj_jagged_out(x, y, off, off2)
        if res is not None:
            return _jagged2(res, x, off2)
    out = np.zeros(int(off2[-1]), dtype=np.float64)
    _cpu.jagged_jagged_bmm_jagged_out(_wide(_host(x.values)), _wide(_host(y.values)), off, off2,
                                      out)
    return _jagged2(out.astype(x.dtype), x, off2)


def _ajbmm(m, x, off, off2, trans):
    if x.is_gpu:
        res = _gpu_ajbmm(m, x, off2, trans)
        if res is not None:
            return res
    xv = _host(x.values)
    out = np.zeros(xv.shape, dtype=np.float64)
    _cpu.array_jagged_bmm_jagged_out(_wide(_host(m.values)), off2, _wide(xv), off, trans, out)
    return x._with_values(_dev(out.astype(x.dtype), x))


@on_array_device
def array_jagged_bmm_jagged_out(m, x):
    """Per-row ``m_b @ x_b``: a jagged2 matrix times the jagged rows it belongs to.

    Args:
        m: jagged2 JaggedArray of ``x``'s structure (values ``[ΣL_b²]``).
        x: JaggedArray ``[B, None, N]``, the dtype of ``m``.

    Returns:
        JaggedArray ``[B, None, N]`` with the offsets of ``x``.
    """
    _check_x(x, "x", "[B, None, N]")
    off, off2 = _check_m(m, x)
    _check_m_values(m, x)
    return _ajbmm(m, x, off, off2, False)


def _check_m_values(m, x, name="m"):
    if m.inner_shape != ():
        raise ValueError(f"{name} must have values [ΣL_b²] (no inner dimensions), got shape "
                         f"{m.shape}")
    if m.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {m.dtype} but x has {x.dtype}: give both one dtype")


@on_array_device
def jagged_jagged_bmm_jagged_out_backward(grad, x, y):
    """Gradients of ``m = jagged_jagged_bmm_jagged_out(x, y)`` given ``grad`` (jagged2, dL/dm).

    Returns:
        ``(grad_x, grad_y)``: ``grad_b @ y_b`` and ``grad_bᵀ @ x_b``, JaggedArrays like ``x``.
    """
    _check_x(x, "x", "[B, None, D]")
    _check_x(y, "y", "[B, None, D]")
    _check_pair(x, y, "x", "y")
    off, off2 = _check_m(grad, x, "grad")
    _check_m_values(grad, x, "grad")
    return _ajbmm(grad, y, off, off2, False), _ajbmm(grad, x, off, off2, True)


@on_array_device
def array_jagged_bmm_jagged_out_backward(grad, m, x):
    """Gradients of ``out = array_jagged_bmm_jagged_out(m, x)`` given ``grad`` (dL/dout, like
    ``out``).

    Returns:
        ``(grad_m, grad_x)``: jagged2 ``grad_b @ x_bᵀ`` and ``m_bᵀ @ grad_b``.
    """
    _check_x(x, "x", "[B, None, N]")
    off, off2 = _check_m(m, x)
    _check_m_values(m, x)
    _check_x(grad, "grad", "[B, None, N]")
    _check_pair(x, grad, "x", "grad")
    if grad.inner_shape != x.inner_shape:
        raise ValueError(f"grad must have the shape of out {x.shape}, got {grad.shape}")
    return jagged_jagged_bmm_jagged_out(grad, x), _ajbmm(m, grad, off, off2, True)


@on_array_device
def jagged2_to_padded(m, x, max_length=None, padding_value=0):
    """A jagged2 array as dense ``[B, M, M, *inner]`` (``M = max_length``, default the longest
    row of ``x``; longer rows are truncated to their leading ``M × M`` block).

    Two :func:`cujagged.layout.to_padded` passes on either backend: the matrix rows padded to
    ``M``, then each matrix's rows."""
    from .layout import to_padded

    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    _check_m(m, x)
    M = x.max_length if max_length is None else max_length
    if not isinstance(M, (int, np.integer)) or isinstance(M, bool) or M < 0:
        raise ValueError(f"max_length must be an integer >= 0, got {max_length!r}")
    M = int(M)  # (to_padded checks padding_value)
    lines = to_padded(J(m.values, _line_offsets(m, x), max_length=x.max_length, validate=False),
                      M, padding_value)  # [ΣL, M, *inner]
    C = int(np.prod(m.inner_shape, dtype=np.int64))
    rows = J(lines.reshape(lines.shape[0], M * C), x.offsets, max_length=x.max_length,
             validate=False)
    return to_padded(rows, M, padding_value).reshape((m.nrows, M, M, *m.inner_shape))


def _check_sub(x):
    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    dt = x.dtype
    if not (dt.kind in "if" or dt == bfloat16):
        raise TypeError(f"x has values of dtype {dt}: the self-subtraction takes signed integer "
                        "or floating values")


@on_array_device
def jagged_self_subtraction(x):
    """Pairwise differences within each row: ``m_b[i, j] = x_b[i] − x_b[j]``.

    Args:
        x: JaggedArray ``[B, None, *inner]`` of signed integers or floats.

    Returns:
        jagged2 JaggedArray, values ``[ΣL_b², *inner]`` of ``x``'s dtype (one rounding of the
        exact difference; integers wrap as NumPy's do).
    """
    _check_sub(x)
    J = _jagged_cls()
    off2_h = _sq_offsets_host(x)[1]
    off2 = _dev(off2_h.copy(), x)
    xp = xp_of(x.values)  # m: x's jagged2 structure over zero-byte values, for its indices
    m = J(xp.empty((int(off2_h[-1]), 0), np.int8), off2, max_length=x.max_length ** 2,
          validate=False)
    i, j = _pair_items(m, x)
    return J(x.values[i], off2, max_length=m.max_length, validate=False) - J(
        x.values[j], off2, max_length=m.max_length, validate=False)


@on_array_device
def jagged_self_subtraction_backward(grad, x):
    """Gradient of ``m = jagged_self_subtraction(x)`` given ``grad`` (jagged2, dL/dm):
    ``Σ_j grad_b[i, j] − Σ_j grad_b[j, i]``, a JaggedArray like ``x`` (the line sums of
    ``grad − gradᵀ``)."""
    from .rowwise import sum as row_sum

    _check_sub(x)
    if not (x.dtype.kind == "f" or x.dtype == bfloat16):
        raise TypeError(f"x has values of dtype {x.dtype}: gradients need floating values")
    _check_m(grad, x, "grad")
    _check_grad_like(grad, x, "x")
    J = _jagged_cls()
    d = grad - grad._with_values(grad.values[_transpose2(grad, x)])
    lines = J(d.values, _line_offsets(grad, x), max_length=x.max_length, validate=False)
    return x._with_values(row_sum(lines))


@on_array_device
def dense_jagged_cat(d, x):
    """``d[b]`` prepended to row ``b`` of ``x`` (e.g. a target item before a user's history).

    Args:
        d: dense ``[B, *inner]`` of ``x``'s dtype and device.
        x: JaggedArray ``[B, None, *inner]``.

    Returns:
        JaggedArray ``[B, None, *inner]`` with lengths ``L_b + 1``.
    """
    from .layout import row_ids

    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    if not is_array(d):
        raise not_array("d", d, "a NumPy/CuPy array [B, *inner]")
    if is_gpu_array(d) != x.is_gpu:
        raise TypeError(f"d is on {'the GPU' if is_gpu_array(d) else 'the host'} but x is on "
                        f"{x.device}")
    if tuple(d.shape) != (x.nrows, *x.inner_shape):
        raise ValueError(f"d must be [B={x.nrows}, *inner={x.inner_shape}], got shape "
                         f"{tuple(d.shape)}")
    if d.dtype != x.dtype:
        raise TypeError(f"d has dtype {d.dtype} but x has {x.dtype}: give both one dtype")
    xp = xp_of(x.values)
    off = x.offsets.astype(np.int64)
    B, T = x.nrows, x.values.shape[0]
    new_off = off + xp.arange(B + 1, dtype=np.int64)
    out = xp.empty((T + B, *x.inner_shape), dtype=x.dtype)
    out[new_off[:-1]] = d
    out[xp.arange(T, dtype=np.int64) + row_ids(x, np.int64) + 1] = x.values
    return J(out, new_off, max_length=x.max_length + 1 if B else 0, validate=False)


@on_array_device
def dense_jagged_cat_backward(grad, x):
    """Gradients of ``out = dense_jagged_cat(d, x)`` given ``grad`` (like ``out``):
    ``(grad_d [B, *inner], grad_x)`` (each row's first item, and the rest)."""
    from .layout import row_ids

    J = _jagged_cls()
    if not isinstance(x, J) or not isinstance(grad, J):
        raise TypeError("grad and x must be JaggedArrays, got "
                        f"{type(grad).__name__} and {type(x).__name__}")
    xp = xp_of(x.values)
    off = x.offsets.astype(np.int64)
    B, T = x.nrows, x.values.shape[0]
    new_off = off + xp.arange(B + 1, dtype=np.int64)
    if grad.is_gpu != x.is_gpu or grad.nrows != B or grad.inner_shape != x.inner_shape or not bool(
            (grad.offsets.astype(np.int64) == new_off).all()):
        raise ValueError("grad must have the structure of dense_jagged_cat(d, x): x's rows one "
                         "item longer, x's inner shape, x's device")
    _check_grad_like(grad, x, "x")
    gv = grad.values
    return gv[new_off[:-1]], x._with_values(gv[xp.arange(T, dtype=np.int64) + row_ids(x, np.int64)
                                              + 1])


def _softmax_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (
            0, 1, -1, -2):
        raise ValueError(f"axis must be 1 (-1: along each matrix row) or 0 (-2: along each "
                         f"column), got {axis!r}")
    return int(axis) % 2


def _check_m_float(m, x, name):
    off, off2 = _check_m(m, x, name)
    if not (m.dtype.kind == "f" or m.dtype == bfloat16):
        raise TypeError(f"{name} has values of dtype {m.dtype}: softmax takes floating values")
    return off, off2


def _line_offsets(m, x):
    """Offsets ``[ΣL + 1]`` of the lines (matrix rows) of jagged2 ``m``: line ``(b, i)`` starts
    at ``off2[b] + i L_b`` and holds ``L_b`` items."""
    from .layout import positions, row_ids

    xp = xp_of(m.values)
    off = x.offsets.astype(np.int64, copy=False)
    off2 = m.offsets.astype(np.int64, copy=False)
    rid = row_ids(x, np.int64)
    lo = xp.empty(x.values.shape[0] + 1, dtype=np.int64)
    lo[:-1] = off2[rid] + positions(x, np.int64) * (off[1:] - off[:-1])[rid]
    lo[-1:] = off2[-1:]
    return lo


def _pair_items(m, x):
    """For every element ``(b, i, j)`` of jagged2 ``m``: the items ``off[b] + i`` and
    ``off[b] + j`` of ``x`` (two int64 arrays ``[ΣL²]``)."""
    from .layout import positions, row_ids

    off = x.offsets.astype(np.int64, copy=False)
    r = row_ids(m, np.int64)
    L = (off[1:] - off[:-1])[r]
    p = positions(m, np.int64)
    i = p // xp_of(p).maximum(L, 1)
    return off[r] + i, off[r] + (p - i * L)


def _transpose2(m, x):
    """The gather ``[ΣL²]`` that transposes every matrix of jagged2 ``m`` (its own inverse)."""
    from .layout import positions, row_ids

    off = x.offsets.astype(np.int64, copy=False)
    r = row_ids(m, np.int64)
    L = (off[1:] - off[:-1])[r]
    p = positions(m, np.int64)
    i = p // xp_of(p).maximum(L, 1)
    return m.offsets.astype(np.int64, copy=False)[r] + (p - i * L) * L + i


def _by_lines(m, x, axis, f, *others):
    """``f`` (a row-wise op) over each matrix line of ``m`` and ``others`` (jagged2 like ``m``):
    the rows (axis 1) or, through a transposing gather, the columns (axis 0)."""
    J = _jagged_cls()
    lo = _line_offsets(m, x)
    perm = _transpose2(m, x) if axis == 0 else None
    args = [J(a.values if perm is None else a.values[perm], lo, max_length=x.max_length,
              validate=False) for a in (m, *others)]
    out = f(*args).values
    return m._with_values(out if perm is None else out[perm])


@on_array_device
def jagged2_softmax(m, x, axis=1):
    """Softmax within every ``L_b × L_b`` matrix of a jagged2 array.

    Args:
        m: jagged2 JaggedArray of ``x``'s structure, floating values ``[ΣL_b², *inner]``.
        x: the JaggedArray whose row lengths ``L_b`` the matrices have.
        axis: 1 (or -1): over ``j`` for each ``i`` (each matrix row sums to 1); 0 (or -2): over
            ``i`` for each ``j`` (each column).

    Returns:
        jagged2 JaggedArray like ``m``. A line of only ``-inf`` gives zeros.
    """
    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    from .rowwise import softmax

    ax = _softmax_axis(axis)
    _check_m_float(m, x, "m")
    return _by_lines(m, x, ax, softmax)


@on_array_device
def jagged2_softmax_backward(grad, out, x, axis=1):
    """Gradient of ``out = jagged2_softmax(m, x, axis)`` given ``grad`` (dL/dout, like ``out``):
    ``out · (grad − Σ grad · out)`` along the same lines, jagged2 like ``out``."""
    J = _jagged_cls()
    if not isinstance(x, J):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    from .rowwise import softmax_backward

    ax = _softmax_axis(axis)
    _check_m_float(out, x, "out")
    _check_m_float(grad, x, "grad")
    _check_grad_like(grad, out, "out")
    return _by_lines(grad, x, ax, softmax_backward, out)
