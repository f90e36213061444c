"""``JaggedArray``: a batch of variable-length rows stored as flat ``values`` plus ``offsets``."""

from __future__ import annotations

import operator

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from ._backend import cupy, device_of, is_array, is_gpu_array, not_array, on_array_device, xp_of

__all__ = ["JaggedArray", "OFFSET_DTYPES"]

OFFSET_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _as_offsets(offsets, values, name: str):
    """``offsets`` as an int32/int64 1-D array on the device of ``values`` (lists are converted)."""
    xp = xp_of(values)
    if isinstance(offsets, (list, tuple, range)):
        host = np.asarray(offsets)
        if host.size and host.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integers, got {host.dtype} values")
        offsets = xp.asarray(host.astype(np.int64))
    if not is_array(offsets):
        raise not_array(name, offsets, "a NumPy/CuPy array or a list of integers")
    if is_gpu_array(offsets) != is_gpu_array(values) or (
        is_gpu_array(offsets) and offsets.device.id != values.device.id
    ):
        raise ValueError(
            f"{name} is on {device_of(offsets)} but values is on {device_of(values)}; "
            "move both to the same device"
        )
    if offsets.dtype not in OFFSET_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {offsets.dtype}")
    min_size = 0 if name == "lengths" else 1
    if offsets.ndim != 1 or offsets.shape[0] < min_size:
        what = "[B]" if name == "lengths" else "with at least one element [B+1]"
        raise ValueError(f"{name} must be 1-D {what}, got shape {tuple(offsets.shape)}")
    return xp.ascontiguousarray(offsets)


def _offsets_summary(offsets):
    """(offsets[0], min diff, offsets[-1], max diff) with at most one device->host transfer."""
    xp = xp_of(offsets)
    o = offsets.astype(np.int64, copy=False)
    if o.shape[0] == 1:
        s = xp.stack([o[0], o[0] * 0, o[-1], o[0] * 0])
    else:
        d = o[1:] - o[:-1]
        s = xp.stack([o[0], d.min(), o[-1], d.max()])
    first, dmin, last, dmax = (int(v) for v in (s.get() if is_gpu_array(s) else s))
    return first, dmin, last, dmax


def _layout():
    from . import layout

    return layout


def _is_int(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _fmt_scalar(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    s = str(v)
    return s[:-2] if s.endswith(".0") else s


def _fmt_array(a, edge: int) -> str:
    """``a`` (NumPy, ndim >= 1) as nested lists, each level elided to ``edge`` items per end."""
    n = a.shape[0]
    idx = list(range(n)) if n <= 2 * edge + 1 else [*range(edge), None, *range(n - edge, n)]
    fmt = _fmt_scalar if a.ndim == 1 else (lambda s: _fmt_array(s, edge))
    return "[" + ", ".join("..." if i is None else fmt(a[i]) for i in idx) + "]"


def _fmt_row(head, tail, edge: int) -> str:
    head = head.get() if is_gpu_array(head) else head
    if tail is None:
        return _fmt_array(head, edge)
    tail = tail.get() if is_gpu_array(tail) else tail
    inner = _fmt_array(head, edge)[1:-1] + ", ..., " + _fmt_array(tail, edge)[1:-1]
    return "[" + inner + "]"


class JaggedArray(NDArrayOperatorsMixin):
    """A batch of ``B`` rows of different lengths: ``values[offsets[b]:offsets[b+1]]`` is row b.

    Args:
        values: ``[T, *inner]`` NumPy (CPU backend, Numba) or CuPy (CUDA kernels) array.
        offsets: ``[B+1]`` int32/int64, ``offsets[0] == 0``, non-decreasing, ``offsets[B] == T``.
        lengths: ``[B]`` row lengths, instead of ``offsets`` (offsets become int64).
        max_length: the longest row, if known (saves one reduction); never trusted blindly when
            ``validate`` is on.
        validate: check the offsets once (one small reduction, one device->host transfer).

    ``shape == (B, None, *inner)``. Empty rows are allowed everywhere.
    """

    __slots__ = ("_values", "_offsets", "_max_length", "_cache", "__weakref__")

    @on_array_device
    def __init__(self, values, offsets=None, lengths=None, *, max_length=None, validate=True):
        if isinstance(values, (list, tuple)):
            raise TypeError(f"values must be a NumPy or CuPy array, got {type(values).__name__}"
                            " (use JaggedArray.from_list for a list of rows)")
        if not is_array(values):
            raise not_array("values", values)
        if values.ndim < 1:
            raise ValueError("values must have at least 1 dimension [T, ...], got a scalar")
        xp = xp_of(values)
        values = xp.ascontiguousarray(values)
        if (offsets is None) == (lengths is None):
            raise TypeError("give exactly one of offsets= or lengths=")
        if lengths is not None:
            lengths = _as_offsets(lengths, values, "lengths")
            offsets = _layout()._cumsum_offsets(lengths, np.int64)
        else:
            offsets = _as_offsets(offsets, values, "offsets")
        self._values = values
        self._offsets = offsets
        self._cache = {}
        if isinstance(max_length, bool):
            raise TypeError("max_length must be an integer or None, got a bool")
        self._max_length = None if max_length is None else operator.index(max_length)
        if self._max_length is not None and self._max_length < 0:  # (validate=False trusts
            raise ValueError(f"max_length must be >= 0, got {max_length}")  # only its value)
        if validate:
            self._validate("lengths" if lengths is not None else "offsets")
        elif self._max_length is None:
            self._max_length = _offsets_summary(offsets)[3]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_offsets(cls, values, offsets, *, max_length=None, validate=True) -> JaggedArray:
        """From flat ``values [T, *inner]`` and ``offsets [B+1]``."""
        return cls(values, offsets, max_length=max_length, validate=validate)

    @classmethod
    def from_lengths(cls, values, lengths, *, max_length=None, validate=True) -> JaggedArray:
        """From flat ``values [T, *inner]`` and row ``lengths [B]`` (int64 offsets)."""
        return cls(values, lengths=lengths, max_length=max_length, validate=validate)

    def validate(self) -> JaggedArray:
        """Check the offsets against the values; raise ``ValueError`` naming what is wrong."""
        return self._validate("offsets")

    def _validate(self, given: str) -> JaggedArray:
        """validate(), its messages in terms of what the caller gave ("offsets" or "lengths",
        whose running sum the offsets are): one device->host transfer."""
        first, dmin, last, dmax = _offsets_summary(self._offsets)
        n = self._values.shape[0]
        if first != 0:
            raise ValueError(f"offsets[0] must be 0, got {first}")
        if dmin < 0:
            raise ValueError("lengths must be non-negative" if given == "lengths" else
                             "offsets must be non-decreasing (a row would have negative length)")
        if last != n:
            raise ValueError(f"sum(lengths) must equal len(values) = {n}, got {last}"
                             if given == "lengths" else
                             f"offsets[-1] must equal len(values) = {n}, got {last}")
        if self._max_length is not None and self._max_length != max(dmax, 0):
            raise ValueError(f"max_length={self._max_length} but the longest row has {dmax}")
        self._max_length = max(dmax, 0) if self.nrows else 0
        return self

    # ---- structure ----------------------------------------------------------------------------
    @property
    def values(self):
        """The flat values ``[T, *inner]``."""
        return self._values

    @property
    def offsets(self):
        """Row offsets ``[B+1]`` (int32 or int64)."""
        return self._offsets

    @property
    @on_array_device
    def lengths(self):
        """Row lengths ``[B]``, same dtype as ``offsets``."""
        return self._offsets[1:] - self._offsets[:-1]

    @property
    def nrows(self) -> int:
        """``B``, the number of rows."""
        return self._offsets.shape[0] - 1

    def __len__(self) -> int:
        return self.nrows

    @property
    def max_length(self) -> int:
        """The longest row's length, known on the host (0 when there are no rows)."""
        return self._max_length

    @property
    def inner_shape(self) -> tuple:
        """The shape of one item: ``values.shape[1:]``."""
        return tuple(self._values.shape[1:])

    @property
    def shape(self) -> tuple:
        """``(B, None, *inner)``."""
        return (self.nrows, None, *self.inner_shape)

    @property
    def ndim(self) -> int:
        return self._values.ndim + 1

    @property
    def dtype(self):
        return self._values.dtype

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:<id>"``."""
        return device_of(self._values)

    @property
    def is_gpu(self) -> bool:
        """True when the parts live in GPU memory (CuPy arrays, CUDA kernels)."""
        return is_gpu_array(self._values)

    @property
    def xp(self):
        """The array module of the parts: ``numpy`` or ``cupy``."""
        return xp_of(self._values)

    def _with_values(self, values) -> JaggedArray:
        """A JaggedArray of the same structure with new ``values`` (no validation)."""
        out = JaggedArray.__new__(JaggedArray)
        out._values, out._offsets, out._max_length, out._cache = (
            values, self._offsets, self._max_length, self._cache)
        return out

    def same_structure(self, other: JaggedArray) -> bool:
        """True when both have the same offsets by value (not only by identity)."""
        if self._offsets is other._offsets:
            return True
        if self._offsets.shape != other._offsets.shape or self.is_gpu != other.is_gpu:
            return False
        return bool((self._offsets == other._offsets).all())

    # ---- layout, indexing, conversion, repr, pickling (owned by the layout engineer) -----------

    @classmethod
    def _from_parts(cls, values, offsets, max_length: int) -> JaggedArray:
        """Internal: wrap parts already known to be valid (no checks, no sync)."""
        out = cls.__new__(cls)
        out._values, out._offsets, out._max_length, out._cache = (
            values, offsets, int(max_length), {})
        return out

    @classmethod
    def from_list(cls, rows, dtype=None, *, device=None) -> JaggedArray:
        """From a list of rows, each an array-like ``[L_b, *inner]`` (lists, NumPy or CuPy arrays).

        Every row must have the same ``inner`` shape (an empty ``[]`` fits any). ``dtype``
        defaults to NumPy's promotion of the non-empty rows (float64 when all are empty).
        ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:<id>"``; by default ``"cuda"`` when a row
        is a CuPy array, else ``"cpu"``. Offsets are int64.
        """
        if isinstance(rows, JaggedArray) or not hasattr(rows, "__iter__") or isinstance(
                rows, (str, bytes)):
            raise TypeError(f"rows must be a list of array-likes, got {type(rows).__name__}")
        rows = list(rows)
        on_gpu = any(is_gpu_array(r) for r in rows)
        host = []
        for i, r in enumerate(rows):
            a = r.get() if is_gpu_array(r) else r
            try:
                a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
            except (ValueError, TypeError) as e:
                raise ValueError(f"rows[{i}] is not a rectangular array-like: {e}") from None
            if a.ndim == 0:
                raise ValueError(f"rows[{i}] is a scalar; each row must be a sequence of items")
            host.append(a)
        inner, first = None, None
        for i, a in enumerate(host):
            if a.shape == (0,):
                continue
            if inner is None:
                inner, first = a.shape[1:], i
            elif a.shape[1:] != inner:
                raise ValueError(f"rows[{i}] has items of shape {a.shape[1:]} but rows[{first}] "
                                 f"has {inner}; every row needs the same inner shape")
        inner = () if inner is None else inner
        if dtype is None:
            typed = [a for a in host if a.shape != (0,)]
            dtype = np.result_type(*typed) if typed else np.dtype(np.float64)
        dtype = np.dtype(dtype)
        if host:
            values = np.concatenate([a.reshape(a.shape[0], *inner).astype(dtype, copy=False)
                                     for a in host])
        else:
            values = np.empty((0, *inner), dtype=dtype)
        lens = np.array([a.shape[0] for a in host], dtype=np.int64)
        offsets = np.zeros(len(host) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        out = cls._from_parts(values, offsets, int(lens.max()) if len(lens) else 0)
        return out.to(device if device is not None else ("cuda" if on_gpu else "cpu"))

    @classmethod
    @on_array_device
    def from_row_ids(cls, values, row_ids, nrows=None, *, validate=True) -> JaggedArray:
        """From ``values [T, *inner]`` and the row of each item, ``row_ids [T]`` (sorted,
        non-decreasing: the items of a row are contiguous). ``nrows`` defaults to
        ``row_ids[-1] + 1``; rows without items are empty. Offsets are int64. One sync."""
        if not is_array(values):
            raise not_array("values", values)
        xp = xp_of(values)
        if isinstance(row_ids, (list, tuple, range)):
            host = np.asarray(row_ids)
            if host.size and host.dtype.kind not in "iu":
                raise TypeError(f"row_ids must be integers, got {host.dtype} values")
            row_ids = xp.asarray(host.astype(np.int64))
        if not is_array(row_ids):
            raise not_array("row_ids", row_ids, "an integer array or a list of integers")
        if xp_of(row_ids) is not xp:
            raise ValueError(f"row_ids must be an integer array on {device_of(values)}, got "
                             f"{device_of(row_ids)}")
        if row_ids.dtype.kind not in "iu":
            raise TypeError(f"row_ids must have an integer dtype, got {row_ids.dtype}")
        if row_ids.ndim != 1 or row_ids.shape[0] != values.shape[0]:
            raise ValueError(f"row_ids must have shape [T] = ({values.shape[0]},), got "
                             f"{tuple(row_ids.shape)}")
        t = row_ids.shape[0]
        rid = row_ids.astype(np.int64)
        if t:
            lo, hi, unsorted = (int(v) for v in _layout()._host_ints(
                rid.min(), rid.max(), (rid[1:] < rid[:-1]).sum() if t > 1 else rid[0] * 0))
        else:
            lo, hi, unsorted = 0, -1, 0
        nrows = hi + 1 if nrows is None else operator.index(nrows)
        # always checked (``validate`` is accepted for symmetry): they guard the bincount below
        if lo < 0:
            raise ValueError(f"row_ids must be non-negative, found {lo}")
        if hi >= nrows:
            raise ValueError(f"row_ids has row {hi} but nrows={nrows}")
        if unsorted:
            raise ValueError("row_ids must be sorted (non-decreasing): the items of each row "
                             "must be contiguous in values")
        lens = xp.bincount(rid, minlength=nrows) if t else xp.zeros(nrows, np.int64)
        offsets = _layout().offsets_from_lengths(lens.astype(np.int64))
        maxlen = int(lens.max()) if nrows and t else 0
        return cls._from_parts(xp.ascontiguousarray(values), offsets, maxlen)

    @classmethod
    def from_padded(cls, dense, lengths=None, *, offsets=None, mask=None, total_length=None,
                    max_length=None) -> JaggedArray:
        """From dense ``[B, N, *inner]`` and one of ``lengths [B]`` (row b = ``dense[b, :L_b]``),
        ``offsets [B+1]``, or a bool ``mask [B, N]`` (row b = the True items of ``dense[b]``, in
        order; they need not be a prefix). See :func:`cujagged.from_padded`."""
        return _layout().from_padded(dense, lengths, offsets=offsets, mask=mask,
                                     total_length=total_length, max_length=max_length)

    def to_padded(self, padding_value=0, max_length=None, *, return_mask=False):
        """Dense ``[B, max_length, *inner]`` (``max_length`` defaults to ``self.max_length``):
        longer rows are truncated, shorter ones padded with ``padding_value``; with
        ``return_mask`` also a bool ``[B, max_length]`` mask of the real items. No host sync."""
        return _layout().to_padded(self, max_length, padding_value, return_mask=return_mask)

    def row_ids(self, dtype=None):
        """``[T]``: the row of every item (dtype of the offsets by default). Cached: do not
        modify the result in place."""
        dtype = self._offsets.dtype if dtype is None else np.dtype(dtype)
        key = ("row_ids", dtype)
        if key not in self._cache:
            self._cache[key] = _layout().row_ids(self, dtype)
        return self._cache[key]

    def positions(self, dtype=None):
        """``[T]``: the position of every item within its row (dtype of the offsets by default).
        Cached: do not modify the result in place."""
        dtype = self._offsets.dtype if dtype is None else np.dtype(dtype)
        key = ("positions", dtype)
        if key not in self._cache:
            self._cache[key] = _layout().positions(self, dtype)
        return self._cache[key]

    @on_array_device
    def cu_seqlens(self, dtype=np.int32):
        """The offsets as ``dtype`` (int32 by default), the ``cu_seqlens`` of flash-attention
        style APIs. ``ValueError`` when the total does not fit int32."""
        dtype = np.dtype(dtype)
        if dtype not in OFFSET_DTYPES:
            raise TypeError(f"cu_seqlens dtype must be int32 or int64, got {dtype}")
        if dtype == self._offsets.dtype:
            return self._offsets
        if dtype == np.int32 and self._values.shape[0] > 2**31 - 1:
            raise ValueError(f"{self._values.shape[0]} items do not fit int32 cu_seqlens")
        return self._offsets.astype(dtype)

    def index_select(self, idx) -> JaggedArray:
        """Rows ``idx`` (int array, negatives allowed, repeats allowed; or bool mask ``[B]``):
        same as ``self[idx]``."""
        return _layout().index_select(self, idx)

    def _host_offsets(self) -> np.ndarray:
        """The offsets on the host as int64 (cached; one transfer for a GPU array)."""
        h = self._cache.get("host_offsets")
        if h is None:
            o = self._offsets
            h = (o.get() if is_gpu_array(o) else o).astype(np.int64)
            self._cache["host_offsets"] = h
        return h

    @on_array_device
    def __getitem__(self, key):
        """``x[i]`` -> row ``i`` (an array view); ``x[a:b]`` -> JaggedArray (values zero-copy);
        ``x[int_array]`` / ``x[bool_mask]`` -> JaggedArray (gather); ``x[rows, a:b:c]`` -> per-row
        slice of the selected rows; further indices apply to the inner dimensions."""
        if isinstance(key, tuple):
            if len(key) == 0:
                return self
            if len(key) == 1:
                return self[key[0]]
            rows, within, rest = key[0], key[1], key[2:]
            if _is_int(rows):
                return self[rows][key[1:]]
            if not isinstance(within, slice):
                raise TypeError("the index within rows must be a slice (x[:, a:b]); got "
                                f"{type(within).__name__}")
            sub = self if isinstance(rows, slice) and rows == slice(None) else self[rows]
            sub = _layout().slice_rows(sub, within)
            if rest:
                v = sub.values[(slice(None), *rest)]
                if v.ndim < 1 or v.shape[0] != sub.values.shape[0]:
                    raise IndexError("indices after the second must index the inner dimensions")
                sub = sub._with_values(sub.xp.ascontiguousarray(v))
            return sub
        if _is_int(key):
            b = int(key)
            n = self.nrows
            if not -n <= b < n:
                raise IndexError(f"row index {b} is out of bounds for a JaggedArray with {n} rows")
            b %= n
            h = self._host_offsets()
            return self._values[h[b]:h[b + 1]]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.nrows)
            if step != 1:
                return self.index_select(np.arange(start, stop, step))
            stop = max(start, stop)
            h = self._host_offsets()
            o0 = int(h[start])
            offsets = self._offsets[start:stop + 1]
            if o0:
                offsets = offsets - offsets.dtype.type(o0)
            lens = np.diff(h[start:stop + 1])
            return JaggedArray._from_parts(self._values[o0:int(h[stop])], offsets,
                                           int(lens.max()) if lens.size else 0)
        if key is Ellipsis:
            return self
        if isinstance(key, (list, range)) or hasattr(key, "dtype"):
            if isinstance(key, (list, range)):
                key = np.asarray(key)
                key = key.astype(np.int64) if key.size == 0 else key
            if not is_gpu_array(key) and self.is_gpu:
                key = cupy.asarray(key)  # a host index for a GPU array: moved once
            return self.index_select(key)
        raise TypeError(f"a JaggedArray cannot be indexed by {type(key).__name__}")

    def __iter__(self):
        return iter(self.unbind())

    def __array__(self, dtype=None, copy=None):
        """NumPy's dense form ``[B, L, *inner]``, which only rows of one length ``L`` have (as
        NumPy makes of a list of equal rows); otherwise a TypeError saying what to use (NumPy's
        own fallbacks, e.g. ``np.sort(x, axis=1)``, end here)."""
        if self.is_gpu:
            raise TypeError("a JaggedArray on the GPU has no implicit NumPy form: use .get() "
                            "(or .to_padded(), .values) first")
        h = self._host_offsets()
        lens = np.diff(h)
        if lens.size and (lens != lens[0]).any():
            raise TypeError("a JaggedArray whose rows differ in length has no dense NumPy form: "
                            "use .to_padded(), .values, or its own row-wise methods (x.sort(), "
                            "x.argmax(), x.cumsum(), ...)")
        a = self._values[h[0]:h[-1]].reshape(self.nrows, int(lens[0]) if lens.size else 0,
                                              *self.inner_shape)
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError(f"a JaggedArray of {a.dtype} as {np.dtype(dtype)} needs a copy")
            return a.astype(dtype)
        return a.copy() if copy else a

    def unbind(self) -> tuple:
        """The rows as a tuple of arrays (views of ``values``)."""
        h = self._host_offsets()
        v = self._values
        return tuple(v[h[b]:h[b + 1]] for b in range(self.nrows))

    def tolist(self) -> list:
        """Nested Python lists: one list per row (of items, themselves lists when inner dims)."""
        v = self._values.get() if self.is_gpu else self._values
        h = self._host_offsets()
        return [v[h[b]:h[b + 1]].tolist() for b in range(self.nrows)]

    def to_numpy(self) -> tuple:
        """``(values, offsets)`` as NumPy arrays (copied from the GPU if needed)."""
        if self.is_gpu:
            return self._values.get(), self._offsets.get()
        return self._values, self._offsets

    def to_cupy(self) -> tuple:
        """``(values, offsets)`` as CuPy arrays (copied to the current GPU if needed)."""
        if cupy is None:
            raise RuntimeError("to_cupy needs CuPy (pip install cupy-cuda12x)")
        return cupy.asarray(self._values), cupy.asarray(self._offsets)

    def get(self) -> JaggedArray:
        """A CPU (NumPy) copy; ``self`` when already on the CPU."""
        return self.to("cpu")

    def cpu(self) -> JaggedArray:
        """Same as :meth:`get`."""
        return self.to("cpu")

    def cuda(self, device=None) -> JaggedArray:
        """A copy on GPU ``device`` (default: CuPy's current device); ``self`` when already
        there."""
        return self.to("cuda" if device is None else f"cuda:{int(device)}")

    def to(self, device) -> JaggedArray:
        """This array on ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:<id>"`` or a device id."""
        if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
            device = f"cuda:{int(device)}"
        if not isinstance(device, str) or not (device == "cpu" or device == "cuda"
                                               or device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<id>', got {device!r}")
        if device == "cpu":
            if not self.is_gpu:
                return self
            out = JaggedArray._from_parts(self._values.get(), self._offsets.get(),
                                          self._max_length)
        else:
            if cupy is None:
                raise RuntimeError("a GPU JaggedArray needs CuPy (pip install cupy-cuda12x)")
            dev = cupy.cuda.Device() if device == "cuda" else cupy.cuda.Device(int(device[5:]))
            if self.is_gpu and self._values.device.id == dev.id:
                return self
            with dev:
                out = JaggedArray._from_parts(cupy.asarray(self._values),
                                              cupy.asarray(self._offsets), self._max_length)
        if "host_offsets" in self._cache:
            out._cache["host_offsets"] = self._cache["host_offsets"]
        return out

    @on_array_device
    def copy(self) -> JaggedArray:
        """A deep copy of the parts."""
        return JaggedArray._from_parts(self._values.copy(), self._offsets.copy(),
                                       self._max_length)

    def __getstate__(self):
        return {"values": self._values, "offsets": self._offsets, "max_length": self._max_length}

    def __setstate__(self, state):
        self._values, self._offsets = state["values"], state["offsets"]
        self._max_length, self._cache = state["max_length"], {}

    def __repr__(self) -> str:
        shape = "(" + ", ".join(str(s) for s in self.shape) + ")"
        return (f"<JaggedArray {self._preview()} shape={shape} dtype={self.dtype} "
                f"device={self.device}>")

    def _preview(self, limit: int = 160) -> str:
        """The values like Awkward prints them (``[[1, 2], [], [3]]``), ends elided with ``...``."""
        h = self._host_offsets()
        nrows = self.nrows
        text = ""
        for edge in (3, 2, 1):
            shown = list(range(nrows)) if nrows <= 2 * edge + 1 else [
                *range(edge), None, *range(nrows - edge, nrows)]
            parts = []
            for b in shown:
                if b is None:
                    parts.append("...")
                    continue
                n = int(h[b + 1] - h[b])
                cut = n > 2 * edge + 1
                head = self._values[h[b]:h[b] + (edge if cut else n)]
                tail = self._values[h[b + 1] - edge:h[b + 1]] if cut else None
                parts.append(_fmt_row(head, tail, edge))
            text = "[" + ", ".join(parts) + "]"
            if len(text) <= limit:
                break
        return text


    # ---- row-wise ops: arithmetic, ufuncs, reductions, softmax, cumsum, sort (rowwise.py) ------
    # Thin methods delegating to cujagged.rowwise (docstrings there). Reductions return a dense
    # [B, *inner] array; the others a JaggedArray. Operators follow NumPy ufunc semantics.
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import rowwise

        return rowwise.array_ufunc(self, ufunc, method, *inputs, **kwargs)

    def _reduce(self, name, axis, numpy_kwargs, **kwargs):
        """Run reduction ``name`` of :mod:`cujagged.rowwise`; ``numpy_kwargs`` are what
        ``np.sum(x, axis=1)`` and friends pass along (``out``/``keepdims`` unsupported)."""
        from . import rowwise

        dtype = numpy_kwargs.pop("dtype", None)
        for key, value in numpy_kwargs.items():
            if value is not None and value is not False:
                raise TypeError(f"{name}() of a JaggedArray does not support {key}=")
        if name in ("sum", "mean", "prod"):  # cast from the accumulator, not from the result
            return getattr(rowwise, name)(self, axis, dtype=dtype, **kwargs)
        res = getattr(rowwise, name)(self, axis, **kwargs)
        return res if dtype is None else res.astype(dtype)

    def sum(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row sum ``[B, *inner]`` (see :func:`cujagged.rowwise.sum`); 0 for empty rows."""
        return self._reduce("sum", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def mean(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row mean ``[B, *inner]``; nan for empty rows."""
        return self._reduce("mean", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def prod(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row product ``[B, *inner]``; 1 for empty rows."""
        return self._reduce("prod", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def max(self, axis=1, *, dim=None, initial=None, max_length=None, **numpy_kwargs):
        """Per-row maximum ``[B, *inner]``; -inf (or ``initial``) for empty rows."""
        return self._reduce("max", axis, numpy_kwargs, dim=dim, initial=initial,
                            max_length=max_length)

    def min(self, axis=1, *, dim=None, initial=None, max_length=None, **numpy_kwargs):
        """Per-row minimum ``[B, *inner]``; +inf (or ``initial``) for empty rows."""
        return self._reduce("min", axis, numpy_kwargs, dim=dim, initial=initial,
                            max_length=max_length)

    def argmax(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Position of the per-row maximum, int64 ``[B, *inner]``; -1 for empty rows."""
        return self._reduce("argmax", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def argmin(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Position of the per-row minimum, int64 ``[B, *inner]``; -1 for empty rows."""
        return self._reduce("argmin", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def logsumexp(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row ``log(sum(exp(x)))`` ``[B, *inner]``; -inf for empty rows."""
        return self._reduce("logsumexp", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def any(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row any, bool ``[B, *inner]``; False for empty rows."""
        return self._reduce("any", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def all(self, axis=1, *, dim=None, max_length=None, **numpy_kwargs):
        """Per-row all, bool ``[B, *inner]``; True for empty rows."""
        return self._reduce("all", axis, numpy_kwargs, dim=dim, max_length=max_length)

    def softmax(self, axis=1, *, dim=None, max_length=None):
        """Softmax over each row (JaggedArray); 0 past ``max_length`` and for all -inf rows."""
        from . import rowwise

        return rowwise.softmax(self, axis, dim=dim, max_length=max_length)

    def log_softmax(self, axis=1, *, dim=None, max_length=None):
        """Log-softmax over each row (JaggedArray)."""
        from . import rowwise

        return rowwise.log_softmax(self, axis, dim=dim, max_length=max_length)

    def cumsum(self, axis=1, dtype=None, out=None, *, dim=None, exclusive=False, reverse=False):
        """Cumulative sum along each row (JaggedArray; ``np.cumsum(x, axis=1)`` too: ``dtype``
        casts the result, ``out`` is not supported)."""
        from . import rowwise

        if out is not None:
            raise TypeError("cumsum() of a JaggedArray does not support out=")
        res = rowwise.cumsum(self, axis, dim=dim, exclusive=exclusive, reverse=reverse)
        return res if dtype is None else res.astype(dtype)

    def astype(self, dtype, copy=True):
        """The same rows with values cast to ``dtype`` (offsets shared)."""
        values = self._values.astype(dtype, copy=copy)
        return self if values is self._values else self._with_values(values)

    def round(self, decimals=0, out=None):
        """Values rounded to ``decimals`` (``np.round(x)``); ``out`` is not supported."""
        if out is not None:
            raise TypeError("round() of a JaggedArray does not support out=")
        return self._with_values(self.xp.round(self._values, decimals))

    def clip(self, min=None, max=None, out=None, **kwargs):  # noqa: A002
        """Values limited to ``[min, max]`` (``np.clip(x, a, b)``); the limits may be scalars,
        per-row ``[B, *inner]``, padded or jagged like the items of ``np.maximum``."""
        if out is not None or kwargs:
            raise TypeError("clip() of a JaggedArray supports min and max only")
        if min is None and max is None:
            raise ValueError("clip() needs min or max")
        res = self if min is None else np.maximum(self, min)
        return res if max is None else np.minimum(res, max)

    def sort(self, axis=1, *, dim=None, descending=False):
        """Stable sort within each row (JaggedArray)."""
        from . import rowwise

        return rowwise.sort(self, axis, dim=dim, descending=descending)

    def argsort(self, axis=1, *, dim=None, descending=False):
        """Stable argsort within each row (JaggedArray of int64 positions)."""
        from . import rowwise

        return rowwise.argsort(self, axis, dim=dim, descending=descending)

    def topk(self, k, axis=1, *, dim=None, largest=True):
        """``(values, indices)`` of the k largest (smallest) items of each row."""
        from . import rowwise

        return rowwise.topk(self, k, axis, dim=dim, largest=largest)

    # Operators (+ - * / // % ** divmod, comparisons, & | ^ << >> ~, unary - + abs, their
    # reflected and in-place forms) come from NDArrayOperatorsMixin, through __array_ufunc__.
    __hash__ = None  # element-wise == makes a JaggedArray unhashable, like an ndarray
