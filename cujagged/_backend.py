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

__all__ = ["cupy", "bfloat16", "gpu_available", "is_gpu_array", "xp_of", "device_of",
           "on_array_device"]


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
