"""Layout ops: jagged <-> padded, row ids / positions, row gather (index_select), per-row slicing,
concatenation along and within rows.

NumPy-backed arrays run on the Numba twins (:mod:`cujagged.cpu.layout`), CuPy-backed arrays on
the CUDA kernels of ``cuda_src/layout.cu``. The kernels move raw item bytes (an item is one row
of ``values``, ``prod(inner) * itemsize`` bytes) in the widest vector that divides the item size
and the pointers' alignment, so every dtype (bf16/fp16 as 16-bit payloads) and inner shape takes
the same path. Indexing is 64-bit.

Host syncs: none in :func:`to_padded`, :func:`row_ids`, :func:`positions`; one (to learn the
output size and its longest row, which depend on the data) in :func:`from_padded`,
:func:`index_select` and per-row slicing.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ._backend import (
    bfloat16,
    device_of,
    is_array,
    is_gpu_array,
    not_array,
    on_array_device,
    xp_of,
)
from ._kernels import KernelFamily, pow2_at_least
from .cpu import layout as _cpu

__all__ = [
    "to_padded", "from_padded", "index_select", "slice_rows", "row_ids", "positions",
    "offsets_from_lengths", "concat",
]

_VECS = ((16, "uint4"), (8, "uint2"), (4, "unsigned int"), (2, "unsigned short"),
         (1, "unsigned char"))
_OFF_C = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
_FAM = KernelFamily(
    "layout.cu",
    [f"{k}<{v}, {o}>" for k in ("to_padded", "gather_rows", "gather_segments") for _, v in _VECS
     for o in _OFF_C.values()] + [f"row_ids<{o}>" for o in _OFF_C.values()],
)
_THREADS = 256
_GATHER_MAX_ITEMS = 1024  # CJ_GATHER_MAX_ITEMS in layout.cu
_MAX_GRID = 1 << 30
_FORCE_GATHER = None  # tests: "segments" or "search" forces one GPU gather kernel
_TP_CFG = [256, 4]  # to_padded: threads per block (max), vectors per thread and tile (H200 sweep)
_GS_CFG = [128, 8]  # gather_segments: threads per block, most vectors per thread and tile
_INT32_MAX = 2**31 - 1


# ---- helpers ------------------------------------------------------------------------------------
def _check_dtype(dtype, name: str = "values"):
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" and dtype != bfloat16:
        raise TypeError(f"{name} must have a numeric or bool dtype, got {dtype}")
    return dtype


def _item_bytes(a, lead: int = 1) -> int:
    return math.prod(a.shape[lead:]) * a.dtype.itemsize


def _vec(item_bytes: int, *arrays):
    """(bytes, C type) of the widest vector dividing the item bytes and every array's address."""
    for width, name in _VECS:
        if item_bytes % width == 0 and all(a.data.ptr % width == 0 for a in arrays):
            return width, name
    raise AssertionError("unreachable")


_PAD_CACHE: dict = {}


def _pad_words(padding_value, dtype):
    """The padding value as one item of ``dtype`` replicated over 16 bytes, as two uint64
    (cached per dtype and value: this runs on every launch)."""
    key = (dtype, type(padding_value), repr(padding_value))  # repr: -0.0 is not 0.0, nan is nan
    hit = _PAD_CACHE.get(key)
    if hit is None:
        hit = _pad_words_uncached(padding_value, dtype)
        if len(_PAD_CACHE) < 256:
            _PAD_CACHE[key] = hit
    return hit


def _pad_words_uncached(padding_value, dtype):
    dtype = np.dtype(dtype)
    pv = _scalar(padding_value, dtype)
    reps = max(1, 16 // dtype.itemsize)
    words = np.full(reps, pv, dtype=dtype).view(np.uint8)
    words = np.resize(words, 16).view(np.uint64)  # itemsize > 16 never happens for numeric dtypes
    return np.uint64(words[0]), np.uint64(words[1])


def _scalar(value, dtype):
    """``value`` as a 0-d array of ``dtype``: TypeError unless a real number (or a scalar of
    ``dtype``), ValueError when an integer dtype cannot hold it or a finite value overflows a
    float dtype."""
    v = np.asarray(value)
    if v.ndim or not (v.dtype.kind in "biuf" or v.dtype in (dtype, bfloat16)):
        raise TypeError(f"padding_value must be a real number, got {value!r}")
    try:
        if dtype.kind in "iub":
            v = np.asarray(value)
            if v.ndim or (v.dtype.kind == "f" and not float(v).is_integer()):
                raise ValueError
            lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
            if not lo <= int(v) <= hi:
                raise ValueError
        with np.errstate(over="ignore"):
            out = np.asarray(value).astype(dtype)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"padding_value={value!r} cannot be represented in dtype "
                         f"{dtype}") from None
    if dtype.kind not in "iub" and np.isfinite(v) and not np.isfinite(out.astype(np.float64)):
        raise ValueError(f"padding_value={value!r} overflows {dtype}")
    return out


def _launch_grid(ntiles: int) -> int:
    return max(1, min(int(ntiles), _MAX_GRID))


def _host_ints(*scalars):
    """Device scalars -> Python ints with one device->host transfer."""
    if not scalars:
        return ()
    xp = xp_of(scalars[0])
    s = xp.stack([xp.asarray(v, dtype=np.int64).reshape(()) for v in scalars])
    return tuple(int(v) for v in (s.get() if is_gpu_array(s) else s))


@on_array_device
def _cumsum_offsets(lengths, dtype=np.int64):
    """Offsets from lengths already known to be valid (no check, no sync)."""
    xp = xp_of(lengths)
    out = xp.zeros(lengths.shape[0] + 1, dtype=dtype)
    if lengths.shape[0]:
        xp.cumsum(lengths, out=out[1:])
    return out


@on_array_device
def offsets_from_lengths(lengths, dtype=np.int64):
    """``offsets [B+1]`` (``offsets[0] = 0``, then the running sum) from ``lengths [B]`` (an
    int32/int64 array, or a list of integers: a NumPy result) in ``dtype`` (int32 or int64).
    Validated: non-negative lengths, a total that ``dtype`` holds (one device->host sync)."""
    from .jagged import OFFSET_DTYPES, _as_offsets

    if not is_array(lengths) and not isinstance(lengths, (list, tuple, range)):
        raise not_array("lengths", lengths, "a NumPy/CuPy array or a list of integers")
    lengths = _as_offsets(lengths, lengths if is_array(lengths) else np.empty(0), "lengths")
    dtype = np.dtype(dtype)
    if dtype not in OFFSET_DTYPES:
        raise TypeError(f"dtype must be int32 or int64, got {dtype}")
    out = _cumsum_offsets(lengths.astype(np.int64, copy=False), np.int64)
    if lengths.shape[0]:
        low, total = _host_ints(lengths.min(), out[-1])
        if low < 0:
            raise ValueError(f"lengths must be non-negative (found {low})")
        if total > np.iinfo(dtype).max:
            raise ValueError(f"the total length {total} does not fit dtype {dtype}")
    return out.astype(dtype, copy=False)


def _gather(src, src_lead: int, out, out_offsets, total: int, row_base, row_stride: int,
            item_step: int):
    """Launch the row gather: ``out [total, *inner]`` from items of ``src`` (item ``t`` of output
    row ``b`` is ``row_base[b] + b * row_stride + (t - out_offsets[b]) * item_step``).

    GPU: with ``item_step == 1`` each output row is one contiguous copy: tiles of the flat output,
    each walking the row segments it covers (``gather_segments``; tiles about one mean row long,
    128 .. 1024 vectors); otherwise tiles of output items, each item's source found by binary
    search (``gather_rows``).
    """
    nrows = out_offsets.shape[0] - 1
    item_bytes = _item_bytes(out)
    if total == 0 or item_bytes == 0 or nrows == 0:
        return out
    if not is_gpu_array(out):
        src_w, w = _cpu.word_view(src, src_lead)
        out_w, _ = _cpu.word_view(out)
        base = np.zeros(0, np.int64) if row_base is None else row_base
        _cpu.gather_rows(src_w, out_w, out_offsets, base, row_stride, item_step, w)
        return out
    width, vname = _vec(item_bytes, src, out)
    row_vecs = item_bytes // width
    segments = item_step == 1 if _FORCE_GATHER is None else _FORCE_GATHER == "segments"
    if segments and item_step == 1:
        threads, per_thread = _GS_CFG
        mean_vecs = total * row_vecs // nrows
        chunk = min(threads * per_thread, max(threads, pow2_at_least(mean_vecs)))
        kern = _FAM.get(f"gather_segments<{vname}, {_OFF_C[out_offsets.dtype]}>")
        kern((_launch_grid(-(-total * row_vecs // chunk)),), (threads,),
             (src, out, out_offsets, np.int64(nrows), np.int64(total),
              row_base if row_base is not None else np.uint64(0), np.int64(row_stride),
              np.int64(row_vecs), np.int32(chunk)))
        return out
    items = max(1, min(_GATHER_MAX_ITEMS, (_THREADS * 8) // row_vecs))
    ntiles = -(-total // items)
    kern = _FAM.get(f"gather_rows<{vname}, {_OFF_C[out_offsets.dtype]}>")
    kern((_launch_grid(ntiles),), (_THREADS,),
         (src, out, out_offsets, np.int64(nrows), np.int64(total),
          row_base if row_base is not None else np.uint64(0),
          np.int64(row_stride), np.int64(item_step), np.int64(row_vecs), np.int32(items)))
    return out


def _make(values, offsets, max_length: int):
    from .jagged import JaggedArray

    return JaggedArray._from_parts(values, offsets, max_length)


def _out_offsets(lengths64, total: int, offsets_dtype):
    """Offsets from int64 lengths; int32 when the input's were and ``total`` fits."""
    off = _cumsum_offsets(lengths64, np.int64)
    if offsets_dtype == np.int32 and total <= _INT32_MAX:
        off = off.astype(np.int32)
    return off


# ---- jagged -> padded ---------------------------------------------------------------------------
def _check_jagged(x, name: str = "x"):
    from .jagged import JaggedArray

    if not isinstance(x, JaggedArray):
        raise TypeError(f"{name} must be a JaggedArray, got {type(x).__name__} (build one with "
                        "JaggedArray(values, offsets) or JaggedArray.from_padded)")


@on_array_device
def to_padded(x, max_length=None, padding_value=0, *, return_mask=False):
    """Dense ``[B, max_length, *inner]`` copy of jagged ``x``.

    Row ``b`` fills ``out[b, :min(len_b, max_length)]``; rows longer than ``max_length`` are
    **truncated**, shorter ones padded with ``padding_value``. ``max_length`` defaults to
    ``x.max_length`` (known on the host: no sync). With ``return_mask=True`` also returns a bool
    mask ``[B, max_length]``, True on the copied items.
    """
    _check_jagged(x)
    max_length = x._max_length if max_length is None else operator.index(max_length)
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    values, offsets = x._values, x._offsets
    dtype = _check_dtype(values.dtype)
    xp = xp_of(values)
    nrows = offsets.shape[0] - 1
    pad = _pad_words(padding_value, dtype)
    out = xp.empty((nrows, max_length, *values.shape[1:]), dtype=dtype)
    item_bytes = _item_bytes(values)
    if out.size:
        if not is_gpu_array(values):
            src_w, w = _cpu.word_view(values)
            out_w = _cpu.word_view(out, 2)[0].reshape(nrows, max_length * w)
            pad_w = _cpu.word_view(np.full((1, *values.shape[1:]), _scalar(padding_value, dtype),
                                           dtype=dtype))[0]
            _cpu.to_padded(src_w, offsets, out_w, pad_w, w)
        else:
            width, vname = _vec(item_bytes, values, out)
            row_vecs = item_bytes // width
            row_total = max_length * row_vecs
            max_threads, per_thread = _TP_CFG
            threads = min(max_threads, max(32, -(-row_total // (32 * per_thread)) * 32))
            chunk = threads * per_thread
            chunks_per_row = -(-row_total // chunk)
            kern = _FAM.get(f"to_padded<{vname}, {_OFF_C[offsets.dtype]}>")
            kern((_launch_grid(nrows * chunks_per_row),), (threads,),
                 (values, offsets, out, np.int64(nrows), np.int64(max_length),
                  np.int64(row_vecs), np.int32(chunk), np.int64(chunks_per_row), *pad))
    if not return_mask:
        return out
    lengths = x.lengths
    mask = xp.arange(max_length, dtype=lengths.dtype)[None, :] < lengths[:, None]
    return out, mask


# ---- padded -> jagged ---------------------------------------------------------------------------
@on_array_device
def from_padded(dense, lengths=None, *, offsets=None, mask=None, total_length=None,
                max_length=None):
    """JaggedArray from dense ``[B, N, *inner]``.

    Give exactly one of:

    - ``lengths [B]``: row b is ``dense[b, :lengths[b]]`` (``0 <= lengths[b] <= N``);
    - ``offsets [B+1]``: the same, with ``lengths = diff(offsets)``; these offsets are kept (their
      dtype too);
    - ``mask [B, N]`` (bool): row b is the items of ``dense[b]`` where the mask is True, in order
      (the True items need not be a prefix).

    Lengths/offsets may be lists (converted to ``dense``'s device) or int32/int64 arrays on the
    same device; the offsets of the result are int64 from lengths/mask. Validated: one
    device->host sync learns the total size and the longest row (two with a mask) -- unless the
    caller passes ``offsets`` with both ``total_length`` (= ``offsets[-1]``) and ``max_length``
    (the longest row): then nothing is checked or synced (trusted, for hot paths).
    """
    from .jagged import _as_offsets

    if not hasattr(dense, "dtype") or not hasattr(dense, "ndim"):
        raise TypeError(f"dense must be a NumPy or CuPy array, got {type(dense).__name__}")
    if dense.ndim < 2:
        raise ValueError(f"dense must have shape [B, N, *inner], got shape {tuple(dense.shape)}")
    _check_dtype(dense.dtype, "dense")
    if sum(v is not None for v in (lengths, offsets, mask)) != 1:
        raise TypeError("give exactly one of lengths=, offsets= or mask=")
    xp = xp_of(dense)
    nrows, n = dense.shape[0], dense.shape[1]
    dense = xp.ascontiguousarray(dense)
    if mask is not None:
        if not is_array(mask):
            raise not_array("mask", mask, f"a bool array [B, N] on {device_of(dense)}")
        if xp_of(mask) is not xp:
            raise TypeError(f"mask must be a bool array on {device_of(dense)}, got "
                            f"{device_of(mask)}")
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must have dtype bool, got {mask.dtype}")
        if tuple(mask.shape) != (nrows, n):
            raise ValueError(f"mask must have shape [B, N] = {(nrows, n)}, got {tuple(mask.shape)}")
        lens = mask.sum(axis=1, dtype=np.int64)
        off = _cumsum_offsets(lens)
        item_bytes = _item_bytes(dense, 2)
        items = xp.nonzero(mask.reshape(-1))[0]  # row-major: row b's True items, in order
        total = int(items.shape[0])
        if item_bytes:  # a gather of raw item bytes: any dtype, no dtype-specific kernel
            elems = item_bytes // dense.dtype.itemsize
            raw = dense.reshape(nrows * n, elems).view(np.uint8)
            values = raw[items].view(dense.dtype).reshape(total, *dense.shape[2:])
        else:
            values = xp.empty((total, *dense.shape[2:]), dense.dtype)
        maxlen = int(lens.max()) if nrows else 0
        _check_hints(total, maxlen, total_length, max_length)
        return _make(values, off, maxlen)
    if lengths is not None:
        lens = _as_offsets(lengths, dense, "lengths")
        if lens.shape[0] != nrows:
            raise ValueError(f"lengths must have shape [B] = ({nrows},), got {tuple(lens.shape)}")
        off = _cumsum_offsets(lens)
    else:
        off = _as_offsets(offsets, dense, "offsets")
        if off.shape[0] != nrows + 1:
            raise ValueError(f"offsets must have shape [B+1] = ({nrows + 1},), got "
                             f"{tuple(off.shape)}")
        if total_length is not None and max_length is not None:  # trusted: no check, no sync
            total, lmax = operator.index(total_length), operator.index(max_length)
            if not 0 <= lmax <= n:
                raise ValueError(f"max_length={lmax} must be in [0, N = {n}]")
            out = xp.empty((total, *dense.shape[2:]), dtype=dense.dtype)
            _gather(dense, 2, out, off, total, None, n, 1)
            return _make(out, off, lmax)
        lens = off[1:] - off[:-1]
    name = "lengths" if lengths is not None else "offsets"
    if nrows:
        total, first, lmin, lmax = _host_ints(off[-1], off[0], lens.min(), lens.max())
    else:
        total, first, lmin, lmax = _host_ints(off[-1], off[0]) + (0, 0)
    if first != 0:
        raise ValueError(f"offsets[0] must be 0, got {first}")
    if lmin < 0:
        raise ValueError(f"{name} must give non-negative row lengths (found {lmin})"
                         if name == "lengths" else "offsets must be non-decreasing")
    if lmax > n:
        raise ValueError(f"{name} give a row of length {lmax} but dense has only N = {n} items "
                         "per row")
    _check_hints(total, lmax, total_length, max_length)
    out = xp.empty((total, *dense.shape[2:]), dtype=dense.dtype)
    _gather(dense, 2, out, off, total, None, n, 1)
    return _make(out, off, lmax)


def _check_hints(total: int, lmax: int, total_length, max_length):
    """from_padded's hints, when it measured the truth: they must agree (a hint is not a
    truncation: that is ``dense[:, :n]``)."""
    for name, hint, real in (("total_length", total_length, total),
                             ("max_length", max_length, lmax)):
        if hint is not None and operator.index(hint) != real:
            raise ValueError(f"{name}={hint} but the rows give {real} ({name} is a hint for the "
                             f"trusted path; to truncate rows, pass dense[:, :n])")


# ---- gathers of rows ----------------------------------------------------------------------------
@on_array_device
def index_select(x, idx):
    """Rows ``idx`` of ``x`` (an int array, negatives count from the end, repeats allowed; or a
    bool mask ``[B]``) as a new JaggedArray: ``index_select(x, idx)[i] == x[idx[i]]``.
    One device->host sync (the output size and index bounds; uint64 indices: one more)."""
    _check_jagged(x)
    xp = x.xp
    if isinstance(idx, (list, tuple, range)) or (isinstance(idx, np.ndarray) and xp is not np):
        idx = np.asarray(idx)  # host indices move to the array's device (one transfer)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        idx = xp.asarray(idx)
    if not is_array(idx):
        raise not_array("index", idx, "an int or bool array, or a list of ints")
    if xp_of(idx) is not xp:
        raise TypeError(f"index must be an int or bool array on {x.device}, got "
                        f"{type(idx).__name__} on {device_of(idx)}")
    if idx.ndim != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(idx.shape)}")
    nrows = x.nrows
    if idx.dtype == np.bool_:
        if idx.shape[0] != nrows:
            raise ValueError(f"bool index must have shape [B] = ({nrows},), got {tuple(idx.shape)}")
        idx = xp.nonzero(idx)[0]
    elif idx.dtype.kind not in "iu":
        raise TypeError(f"index must have an integer or bool dtype, got {idx.dtype}")
    elif idx.dtype == np.uint64 and idx.size and int(idx.max()) >= 2**63:  # (would wrap)
        raise IndexError(f"row index {int(idx.max())} is out of bounds for a JaggedArray with "
                         f"{nrows} rows")
    idx = idx.astype(np.int64)
    idx = xp.where(idx < 0, idx + nrows, idx)
    in_off = x.offsets
    k = idx.shape[0]
    if k == 0:
        return _make(xp.empty((0, *x.inner_shape), x.dtype), xp.zeros(1, in_off.dtype), 0)
    safe = xp.clip(idx, 0, max(nrows - 1, 0))  # bounds are checked below, after the one sync
    start = in_off[safe].astype(np.int64) if nrows else xp.zeros(k, np.int64)
    lens = in_off[safe + 1].astype(np.int64) - start if nrows else start
    lo, hi, total, maxlen = _host_ints(idx.min(), idx.max(), lens.sum(), lens.max())
    if lo < 0 or hi >= nrows:
        bad = lo if lo < 0 else hi
        raise IndexError(f"row index {bad if bad >= 0 else bad - nrows} is out of bounds for a "
                         f"JaggedArray with {nrows} rows")
    return _gather_rows_out(x, lens, start, 1, total, maxlen)


def _gather_rows_out(x, lens, row_base, item_step, total=None, maxlen=None):
    """New JaggedArray of ``lens [B_out]`` items per row, gathered from ``x.values``."""
    xp = x.xp
    if total is None:
        total, maxlen = _host_ints(lens.sum(), lens.max()) if lens.shape[0] else (0, 0)
    off = _out_offsets(lens, total, x.offsets.dtype)
    out = xp.empty((total, *x.inner_shape), dtype=x.dtype)
    _gather(x.values, 1, out, off, total, row_base, 0, item_step)
    return _make(out, off, maxlen)


def _builtin_clamp(v: int, big: int) -> int:
    return -big if v < -big else (big if v > big else v)


def _slice_bounds(lengths, s: slice, xp):
    """Per-row ``(start, length)`` int64 arrays of Python slice ``s`` applied to each row."""
    big = 1 << 62  # past any row length: Python ints beyond int64 clamp to it (as slicing does)
    step = 1 if s.step is None else _builtin_clamp(operator.index(s.step), big)
    if step == 0:
        raise ValueError("slice step cannot be zero")
    L = lengths.astype(np.int64)
    neg = step < 0

    def adjust(v, default):
        if v is None:
            return default
        v = _builtin_clamp(operator.index(v), big)
        if v < 0:
            return xp.maximum(L + v, -1 if neg else 0)
        return xp.minimum(L - 1, v) if neg else xp.minimum(L, v)

    start = adjust(s.start, L - 1 if neg else xp.zeros_like(L))
    stop = adjust(s.stop, xp.full_like(L, -1) if neg else L)
    if neg:
        n = xp.where(stop < start, (start - stop - 1) // (-step) + 1, 0)
    else:
        n = xp.where(start < stop, (stop - start - 1) // step + 1, 0)
    return start, n.astype(np.int64), step


@on_array_device
def slice_rows(x, s: slice):
    """``x[:, s]``: Python slice ``s`` (any start/stop/step, negatives and None included) applied
    within every row. One device->host sync (the output size)."""
    if not isinstance(s, slice):
        raise TypeError(f"per-row index must be a slice, got {type(s).__name__}")
    if s.start in (None, 0) and s.stop is None and s.step in (None, 1):
        return x
    xp = x.xp
    start, n, step = _slice_bounds(x.lengths, s, xp)
    base = x.offsets[:-1].astype(np.int64) + start
    return _gather_rows_out(x, n, base, step)


# ---- row ids / positions ------------------------------------------------------------------------
def _ids(x, dtype, which: str):
    _check_jagged(x)
    offsets = x.offsets
    dtype = offsets.dtype if dtype is None else np.dtype(dtype)
    if dtype not in _OFF_C:
        raise TypeError(f"dtype must be int32 or int64, got {dtype}")
    total = x.values.shape[0]
    if dtype == np.int32 and total > _INT32_MAX:
        raise ValueError(f"{total} items do not fit int32 {which}")
    xp = x.xp
    off = offsets if offsets.dtype == dtype else offsets.astype(dtype)
    out = xp.empty(total, dtype=dtype)
    if total == 0:
        return out
    if not is_gpu_array(out):
        (_cpu.row_ids if which == "row ids" else _cpu.positions)(off, out)
        return out
    items = _THREADS * 4
    kern = _FAM.get(f"row_ids<{_OFF_C[dtype]}>")
    null = np.uint64(0)
    kern((_launch_grid(-(-total // items)),), (_THREADS,),
         (off, np.int64(x.nrows), np.int64(total), out if which == "row ids" else null,
          out if which != "row ids" else null, np.int32(items)))
    return out


@on_array_device
def row_ids(x, dtype=None):
    """``[T]``: the row of every item (int32 when the offsets are int32, else int64)."""
    return _ids(x, dtype, "row ids")


@on_array_device
def positions(x, dtype=None):
    """``[T]``: the position of every item within its row (``t - offsets[row]``)."""
    return _ids(x, dtype, "positions")


# ---- concatenation ---------------------------------------------------------------------------
def concat(xs, axis=0):
    """Concatenate JaggedArrays.

    Args:
        xs: a sequence of JaggedArrays ``[B_i, None, *inner]`` on one device, of one inner
            shape; their values are promoted to one dtype as :func:`numpy.concatenate` does.
        axis: 0 (or ``-ndim``) — the rows of each in turn (``[ΣB_i, None, *inner]``); 1 (or
            ``1 - ndim``) — row ``b`` is row ``b`` of every input in turn (all ``B_i`` equal;
            lengths add up).

    Returns:
        A JaggedArray (int64 offsets, or int32 when every input's are and the total fits), on
        the inputs' device. Along rows the longest row is known on the host; within rows it is
        measured (one small reduction, a sync on the GPU).
    """
    from .jagged import JaggedArray

    if isinstance(xs, JaggedArray):
        raise TypeError("xs must be a sequence of JaggedArrays, got one JaggedArray (pass [x, y])")
    if isinstance(xs, (str, bytes)) or not hasattr(xs, "__len__"):
        raise TypeError(f"xs must be a sequence of JaggedArrays, got {type(xs).__name__}")
    xs = list(xs)
    if not xs:
        raise ValueError("xs must hold at least one JaggedArray")
    for i, x in enumerate(xs):
        _check_jagged(x, f"xs[{i}]")
    x0 = xs[0]
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be 0 or 1, got {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be 0 or 1, got {axis!r}") from None
    if axis < 0:
        axis += x0.ndim
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (along rows) or 1 (within rows) for arrays of shape "
                         f"{x0.shape}, got {axis}")
    for i, x in enumerate(xs[1:], 1):
        if x.is_gpu != x0.is_gpu or (x.is_gpu and x.values.device.id != x0.values.device.id):
            raise ValueError(f"xs[{i}] is on {x.device} but xs[0] on {x0.device}")
        if x.inner_shape != x0.inner_shape:
            raise ValueError(f"xs[{i}] has inner shape {x.inner_shape} but xs[0] has "
                             f"{x0.inner_shape}")
        if axis == 1 and x.nrows != x0.nrows:
            raise ValueError(f"axis=1 needs one number of rows: xs[{i}] has {x.nrows}, xs[0] "
                             f"{x0.nrows}")
    try:
        dtype = np.result_type(*[x.dtype for x in xs])
    except (TypeError, np.exceptions.DTypePromotionError):
        raise TypeError(f"xs have dtypes {[str(x.dtype) for x in xs]} with no common dtype"
                        ) from None
    if x0.is_gpu:  # (a list argument: on_array_device does not look inside it)
        with x0.values.device:
            return _concat(xs, axis, dtype)
    return _concat(xs, axis, dtype)


def _concat(xs, axis, dtype):
    xp = xs[0].xp
    total = sum(int(x.values.shape[0]) for x in xs)
    off_dt = (np.dtype(np.int32) if all(x.offsets.dtype == np.int32 for x in xs)
              and total <= _INT32_MAX else np.dtype(np.int64))
    if axis == 0:
        values = xp.concatenate([x.values.astype(dtype, copy=False) for x in xs])
        parts, base = [xp.zeros(1, dtype=np.int64)], 0
        for x in xs:
            parts.append(x.offsets[1:].astype(np.int64) + base)
            base += int(x.values.shape[0])
        offsets = xp.concatenate(parts).astype(off_dt, copy=False)
        return _make(values, offsets, max([x.max_length for x in xs]))
    lens = [(x.offsets[1:] - x.offsets[:-1]).astype(np.int64) for x in xs]
    total_lens = sum(lens[1:], lens[0])
    offsets = _cumsum_offsets(total_lens, np.int64)
    out = xp.empty((total, *xs[0].inner_shape), dtype=dtype)
    start = offsets[:-1].copy()  # where each row's next input goes
    for x, n in zip(xs, lens):
        if x.values.shape[0]:
            out[start[row_ids(x, np.int64)] + positions(x, np.int64)] = x.values
        start += n
    lmax = int(total_lens.max()) if total_lens.shape[0] else 0
    return _make(out, offsets.astype(off_dt, copy=False), lmax)
