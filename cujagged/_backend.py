"""Array-module dispatch: NumPy arrays run on the Numba backend, CuPy arrays on the CUDA kernels."""

from __future__ import annotations

import functools

import numpy as np

try:  # CuPy is optional: without it every op runs on the CPU (Numba) backend.
    import cupy
except Exception:  # ImportError, or a CuPy wheel that cannot load its CUDA libraries
    cupy = None

try:
    import ml_dtypes

    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a hard dependency
    bfloat16 = None

__all__ = ["cupy", "bfloat16", "gpu_available", "is_gpu_array", "is_array", "not_array",
           "xp_of", "device_of", "on_array_device"]


@functools.cache
def gpu_available() -> bool:
    """True when CuPy is importable and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_gpu_array(a) -> bool:
    """True for a CuPy ndarray (device memory)."""
    return cupy is not None and isinstance(a, cupy.ndarray)


def is_array(a) -> bool:
    """True for the arrays cujagged's functions take: a NumPy or a CuPy ndarray."""
    return isinstance(a, np.ndarray) or is_gpu_array(a)


_FOREIGN_HINT = {
    "torch": "; a torch tensor crosses zero-copy with cupy.from_dlpack / np.from_dlpack, or as "
             "a JaggedArray with cujagged.from_torch",
    "jax": "; a JAX array crosses zero-copy with cupy.from_dlpack / np.from_dlpack, or as a "
           "JaggedArray with cujagged.from_jax",
}
_FOREIGN_HINT["jaxlib"] = _FOREIGN_HINT["jax"]


def not_array(name: str, a, what: str = "a NumPy or CuPy array") -> TypeError:
    """The TypeError for an argument that is not one of cujagged's arrays (naming the argument,
    what was expected, and for a torch / JAX array how to pass it)."""
    t = type(a)
    tname = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    hint = _FOREIGN_HINT.get(t.__module__.split(".")[0], "")
    return TypeError(f"{name} must be {what}, got {tname}{hint}")


def xp_of(a):
    """The array module (``numpy`` or ``cupy``) that owns ``a``."""
    return cupy if is_gpu_array(a) else np


def device_of(a) -> str:
    """``"cpu"`` or ``"cuda:<id>"``."""
    return f"cuda:{a.device.id}" if is_gpu_array(a) else "cpu"


def on_array_device(fn):
    """Decorator: run ``fn`` with the CUDA device of its first GPU argument (a CuPy array, or a
    JaggedArray of CuPy arrays) as the current device. CuPy allocates and launches on the
    current device, so without it an array on GPU 1 would be worked on from GPU 0 (peer reads,
    or an error). Costs one ``cudaGetDevice`` when the device is already current."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for a in args:
            v = getattr(a, "_values", a)
            if is_gpu_array(v):
                dev = v.device.id
                if dev != cupy.cuda.runtime.getDevice():
                    with cupy.cuda.Device(dev):
                        return fn(*args, **kwargs)
                break
        return fn(*args, **kwargs)

    return wrapper
