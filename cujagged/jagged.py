"""``JaggedArray``: a batch of variable-length rows stored as flat ``values`` plus ``offsets``."""

from __future__ import annotations

import numpy as np

from ._backend import cupy, device_of, is_gpu_array, xp_of

__all__ = ["JaggedArray", "OFFSET_DTYPES"]

OFFSET_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _as_offsets(offsets, values, name: str):
    """``offsets`` as an int32/int64 1-D array on the device of ``values`` (lists are converted)."""
    xp = xp_of(values)
    if isinstance(offsets, (list, tuple, range)):
        offsets = xp.asarray(np.asarray(offsets, dtype=np.int64))
    if not hasattr(offsets, "dtype") or not hasattr(offsets, "ndim"):
        raise TypeError(f"{name} must be an array or a list of integers, got {type(offsets).__name__}")
    if is_gpu_array(offsets) != is_gpu_array(values) or (
        is_gpu_array(offsets) and offsets.device.id != values.device.id
    ):
        raise ValueError(
            f"{name} is on {device_of(offsets)} but values is on {device_of(values)}; "
            "move both to the same device"
        )
    if offsets.dtype not in OFFSET_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {offsets.dtype}")
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError(f"{name} must be 1-D with at least one element [B+1], got shape "
                         f"{tuple(offsets.shape)}")
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


class JaggedArray:
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

    def __init__(self, values, offsets=None, lengths=None, *, max_length=None, validate=True):
        if isinstance(values, (list, tuple)) or not hasattr(values, "dtype"):
            raise TypeError(f"values must be a NumPy or CuPy array, got {type(values).__name__}"
                            " (use JaggedArray.from_list for a list of rows)")
        if values.ndim < 1:
            raise ValueError(f"values must have at least 1 dimension [T, ...], got a scalar")
        xp = xp_of(values)
        values = xp.ascontiguousarray(values)
        if (offsets is None) == (lengths is None):
            raise TypeError("give exactly one of offsets= or lengths=")
        if lengths is not None:
            lengths = _as_offsets(lengths, values, "lengths")
            offsets = xp.zeros(lengths.shape[0] + 1, dtype=np.int64)
            xp.cumsum(lengths, out=offsets[1:])
            if validate and lengths.shape[0] and int(lengths.min()) < 0:
                raise ValueError("lengths must be non-negative")
        else:
            offsets = _as_offsets(offsets, values, "offsets")
        self._values = values
        self._offsets = offsets
        self._cache = {}
        self._max_length = None if max_length is None else int(max_length)
        if validate:
            self.validate()
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
        first, dmin, last, dmax = _offsets_summary(self._offsets)
        n = self._values.shape[0]
        if first != 0:
            raise ValueError(f"offsets[0] must be 0, got {first}")
        if dmin < 0:
            raise ValueError("offsets must be non-decreasing (a row would have negative length)")
        if last != n:
            raise ValueError(f"offsets[-1] must equal len(values) = {n}, got {last}")
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

    # ---- row-wise ops: arithmetic, ufuncs, reductions, softmax, cumsum, sort (rowwise.py) ------
