"""Zero-copy exchange of a :class:`JaggedArray`'s parts with PyTorch, JAX, Awkward and any DLPack
producer.

``__dlpack__`` carries one dense tensor, not offsets, so a jagged array travels as its two parts:
``values [T, *inner]`` and ``offsets [B+1]``. Every function here shares memory with its input
(no copy) except where noted:

* bfloat16 on the **CPU**: NumPy's DLPack has no bfloat16, so the bits travel as int16 and are
  viewed back (still zero-copy for PyTorch; JAX needs a ``bitcast_convert_type``, which copies).
* offsets given to PyTorch's nested tensors are int64 (int32 offsets are converted: ``B+1``
  integers).
* JAX without ``jax_enable_x64`` cannot hold int64: offsets are converted to int32 (``B+1``
  integers); 64-bit values are refused (JAX would cast them to 32 bits).
* JAX on the CPU copies a buffer that is not 64-byte aligned (NumPy aligns to 16 bytes).

PyTorch, JAX and Awkward are imported only when a function that needs them is called.

Streams: GPU arrays travel through DLPack's stream handshake (the consumer passes its current
stream; the producer orders its pending work before it), so no extra synchronisation is needed
when both sides use their default (legacy) streams.
"""

from __future__ import annotations

import numpy as np

from ._backend import bfloat16, cupy, is_gpu_array
from .jagged import JaggedArray

__all__ = [
    "from_dlpack_parts",
    "to_torch",
    "from_torch",
    "from_torch_nested",
    "to_torch_nested",
    "from_jax",
    "to_jax",
    "to_awkward",
    "from_awkward",
]

# DLPack device types (dlpack.h, DLDeviceType)
_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13


def _require(module: str, extra: str):
    """Import an optional framework or raise an ``ImportError`` that says what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this cujagged function needs {module}, which is not installed ({e}); "
            f"install it with: pip install {extra}"
        ) from e


# ---- generic DLPack import -----------------------------------------------------------------------
def _framework(obj) -> str:
    """``"torch"``, ``"jax"``, ``"numpy"``, ``"cupy"`` or ``""`` from the type's module, without
    importing anything."""
    mod = type(obj).__module__ or ""
    for name in ("torch", "jax", "jaxlib", "numpy", "cupy"):
        if mod == name or mod.startswith(name + "."):
            return "jax" if name == "jaxlib" else name
    return ""


def _is_bf16(obj) -> bool:
    return "bfloat16" in str(getattr(obj, "dtype", ""))


def _bf16_bits(obj):
    """A 16-bit integer view (or, for JAX, bit-cast copy) of a bfloat16 tensor of a framework."""
    fw = _framework(obj)
    if fw == "torch":
        import torch

        return obj.view(torch.int16)
    if fw == "jax":
        import jax
        import jax.numpy as jnp

        return jax.lax.bitcast_convert_type(obj, jnp.int16)
    raise TypeError(
        f"cannot import a bfloat16 {type(obj).__name__} through DLPack here; "
        "convert it to float32 or to a NumPy/CuPy array first"
    )


def _import_one(obj, name: str):
    """One DLPack producer -> a NumPy (host) or CuPy (CUDA) array sharing its memory."""
    if isinstance(obj, np.ndarray) or is_gpu_array(obj):
        return obj
    if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
        raise TypeError(
            f"{name} must support DLPack (__dlpack__ and __dlpack_device__: a torch.Tensor, a JAX "
            f"array, a CuPy or NumPy array...), got {type(obj).__name__}"
        )
    dev_type, _ = obj.__dlpack_device__()
    dev_type = int(dev_type)
    on_gpu = dev_type in (_KDL_CUDA, _KDL_CUDA_MANAGED)
    if on_gpu and cupy is None:
        raise ImportError(f"{name} lives on a CUDA device but CuPy is not installed; "
                          "install cujagged[cuda12] or cujagged[cuda13]")
    if not on_gpu and dev_type not in (_KDL_CPU, _KDL_CUDA_HOST):
        raise ValueError(f"{name} is on DLPack device type {dev_type}; only CPU and CUDA tensors "
                         "can be imported")
    consume = cupy.from_dlpack if on_gpu else np.from_dlpack
    try:
        return consume(obj)
    except (BufferError, TypeError, ValueError, RuntimeError):
        # NumPy (and CuPy before 14) cannot import DLPack bfloat16: move the bits as int16.
        if not _is_bf16(obj):
            raise
        if bfloat16 is None:
            raise ImportError(f"{name} is bfloat16: install ml_dtypes to import it") from None
    return consume(_bf16_bits(obj)).view(bfloat16)


def from_dlpack_parts(values, offsets, *, max_length=None, validate=True) -> JaggedArray:
    """A :class:`JaggedArray` sharing the memory of two DLPack tensors.

    Args:
        values: ``[T, *inner]`` tensor of any DLPack producer (torch, JAX, CuPy, NumPy...). CUDA
            tensors become CuPy arrays (``cupy.from_dlpack``), CPU tensors NumPy arrays.
        offsets: ``[B+1]`` int32/int64 tensor on the same device.
        max_length: the longest row if known (saves a reduction and a device->host copy).
        validate: check the offsets (one small reduction).

    bfloat16 arrives as ``ml_dtypes.bfloat16``. Non-contiguous values are copied
    (``ascontiguousarray``).
    """
    v = _import_one(values, "values")
    o = _import_one(offsets, "offsets")
    return JaggedArray(v, o, max_length=max_length, validate=validate)


# ---- export helpers ------------------------------------------------------------------------------
def _export_bits(arr):
    """(array to hand over, is_bf16_bits): NumPy cannot export bfloat16 through DLPack, so a
    bfloat16 host array is handed over as its int16 view."""
    if bfloat16 is not None and arr.dtype == bfloat16 and not is_gpu_array(arr):
        return arr.view(np.int16), True
    return arr, False


def _torch_from(arr):
    import torch

    a, bits = _export_bits(arr)
    try:
        t = torch.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError, ValueError):
        if not (bfloat16 is not None and arr.dtype == bfloat16):
            raise
        # a CuPy without DLPack bfloat16 export: hand the bits over as int16
        t, bits = torch.from_dlpack(arr.view(np.int16)), True
    return t.view(torch.bfloat16) if bits else t


# ---- PyTorch -------------------------------------------------------------------------------------
def to_torch(x: JaggedArray):
    """``(values, offsets)`` as torch tensors sharing memory with ``x`` (same device, same dtype;
    bfloat16 -> ``torch.bfloat16``)."""
    _require("torch", "torch")
    if not isinstance(x, JaggedArray):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    return _torch_from(x.values), _torch_from(x.offsets)


def from_torch(values, offsets, *, max_length=None, validate=True) -> JaggedArray:
    """A :class:`JaggedArray` sharing memory with torch tensors ``values [T, *inner]`` and
    ``offsets [B+1]`` (CUDA -> CuPy, CPU -> NumPy)."""
    return from_dlpack_parts(values, offsets, max_length=max_length, validate=validate)


def from_torch_nested(njt, *, validate=True) -> JaggedArray:
    """A :class:`JaggedArray` sharing memory with a PyTorch nested tensor of ``layout=torch.jagged``
    (shape ``(B, j, *inner)``, ragged dimension 1).

    An NJT with holes (built with ``lengths=``, e.g. by ``narrow``) is made contiguous first (a
    copy). PyTorch lets the NJT's cached ``max_seqlen`` be an upper bound, so with ``validate``
    the longest row is measured; with ``validate=False`` the cached value is trusted as the
    longest row (no sync).
    """
    torch = _require("torch", "torch")
    if not isinstance(njt, torch.Tensor) or not getattr(njt, "is_nested", False):
        raise TypeError(f"njt must be a torch nested tensor, got {type(njt).__name__}")
    if njt.layout != torch.jagged:
        raise ValueError(
            f"njt must have layout=torch.jagged, got {njt.layout}; convert with "
            "torch.nested.nested_tensor(list(njt.unbind()), layout=torch.jagged)"
        )
    if getattr(njt, "_ragged_idx", 1) != 1:
        raise ValueError(f"the ragged dimension of njt must be 1, got {njt._ragged_idx}")
    if njt.lengths() is not None:  # holes between rows: no offsets-only view exists
        njt = njt.contiguous()
    max_len = None if validate else getattr(njt, "_maybe_max_seqlen", None)
    if max_len is not None and not isinstance(max_len, int):
        max_len = None
    return from_dlpack_parts(njt.values(), njt.offsets(), max_length=max_len, validate=validate)


def to_torch_nested(x: JaggedArray):
    """A PyTorch nested tensor (``layout=torch.jagged``, shape ``(B, j, *inner)``) sharing memory
    with ``x``'s values (offsets are int64; int32 offsets are converted)."""
    torch = _require("torch", "torch")
    values, offsets = to_torch(x)
    if offsets.dtype != torch.int64:
        offsets = offsets.to(torch.int64)
    try:
        return torch.nested.nested_tensor_from_jagged(values, offsets,
                                                      max_seqlen=x.max_length)
    except TypeError:  # an older torch without the max_seqlen keyword
        return torch.nested.nested_tensor_from_jagged(values, offsets)


# ---- JAX -----------------------------------------------------------------------------------------
def from_jax(values, offsets, *, max_length=None, validate=True) -> JaggedArray:
    """A :class:`JaggedArray` from JAX arrays ``values [T, *inner]`` and ``offsets [B+1]``
    (zero-copy through DLPack; GPU -> CuPy, CPU -> NumPy)."""
    return from_dlpack_parts(values, offsets, max_length=max_length, validate=validate)


def _jax_from(arr):
    jax = _require("jax", "jax")
    import jax.numpy as jnp

    a, bits = _export_bits(arr)
    try:
        out = jnp.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError, ValueError):
        if not (bfloat16 is not None and arr.dtype == bfloat16):
            raise
        out, bits = jnp.from_dlpack(arr.view(np.int16)), True
    return jax.lax.bitcast_convert_type(out, jnp.bfloat16) if bits else out


def to_jax(x: JaggedArray):
    """``(values, offsets)`` as JAX arrays (zero-copy through DLPack where JAX takes the buffer: a
    bfloat16 host array needs a bit-cast copy, and JAX on the CPU copies a buffer that is not
    64-byte aligned). Without ``jax_enable_x64`` int64 offsets become int32 (``B+1`` integers)
    and 64-bit values raise ``ValueError`` (JAX would silently cast them to 32 bits)."""
    jax = _require("jax", "jax")
    if not isinstance(x, JaggedArray):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    if jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype:  # 64-bit without jax_enable_x64
        raise ValueError(f"x has {x.dtype} values and jax_enable_x64 is off (JAX would cast them "
                         f"to 32 bits); enable it with jax.config.update('jax_enable_x64', True)"
                         f" or cast first: x.astype(...)")
    offsets = x.offsets
    if offsets.dtype == np.int64 and not jax.config.read("jax_enable_x64"):
        if x.values.shape[0] >= 2**31:
            raise ValueError("offsets exceed int32 and jax_enable_x64 is off; enable it with "
                             "jax.config.update('jax_enable_x64', True)")
        offsets = offsets.astype(np.int32)
    return _jax_from(x.values), _jax_from(offsets)


# ---- Awkward Array -------------------------------------------------------------------------------
def to_awkward(x: JaggedArray):
    """An ``ak.Array`` of type ``B * var * inner`` (a ``ListOffsetArray`` over a ``NumpyArray``)
    sharing memory with ``x``. Awkward has no bfloat16: cast the values first."""
    ak = _require("awkward", "awkward")
    if not isinstance(x, JaggedArray):
        raise TypeError(f"x must be a JaggedArray, got {type(x).__name__}")
    if bfloat16 is not None and x.dtype == bfloat16:
        raise TypeError("awkward has no bfloat16 dtype; cast the values first, e.g. "
                        "JaggedArray(x.values.astype('float32'), x.offsets)")
    index = ak.index.Index64 if x.offsets.dtype == np.int64 else ak.index.Index32
    layout = ak.contents.ListOffsetArray(index(x.offsets), ak.contents.NumpyArray(x.values))
    return ak.Array(layout)


def from_awkward(arr, *, validate=True) -> JaggedArray:
    """A :class:`JaggedArray` from an awkward array of type ``B * var * inner`` (one ragged
    dimension, numeric leaves, no missing values).

    Zero-copy for a ``ListOffsetArray`` with int32/int64 offsets starting at 0; other list layouts
    (``ListArray``, offsets not starting at 0, unsigned offsets) are converted first (a copy).
    """
    ak = _require("awkward", "awkward")
    layout = ak.to_layout(arr)
    if isinstance(layout, ak.contents.RegularArray):
        layout = layout.to_ListOffsetArray64(False)
    if not isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.ListArray)):
        raise ValueError(f"arr must be a list of variable-length rows (type 'B * var * ...'), got "
                         f"{type(layout).__name__} of type {ak.type(arr)}")
    if isinstance(layout, ak.contents.ListArray) or layout.offsets.dtype not in (
            np.dtype(np.int32), np.dtype(np.int64)):
        layout = layout.to_ListOffsetArray64(True)
    nplike = layout.backend.nplike
    offsets = nplike.asarray(layout.offsets.data)
    first = int(offsets[0]) if offsets.shape[0] else 0
    if first != 0:
        layout = layout.to_ListOffsetArray64(True)
        offsets = nplike.asarray(layout.offsets.data)
    content = layout.content
    if not isinstance(content, (ak.contents.NumpyArray, ak.contents.RegularArray)):
        raise ValueError(
            f"the rows of arr must hold numbers or fixed-size arrays of numbers (one ragged "
            f"dimension), got {type(content).__name__} of type {ak.type(arr)}"
        )
    try:
        values = content.to_backend_array(allow_missing=False)
    except ValueError as e:
        raise ValueError(f"arr must have no missing values or nested ragged dimensions: {e}") from e
    total = int(offsets[-1]) if offsets.shape[0] else 0
    if values.shape[0] != total:
        values = values[:total]
    if cupy is not None and isinstance(values, cupy.ndarray):
        offsets = cupy.asarray(offsets)
    else:
        values, offsets = np.asarray(values), np.asarray(offsets)
    return JaggedArray(values, offsets, validate=validate)
