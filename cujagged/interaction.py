"""Jagged matmuls (feature interaction, DESIGN.md kernel family 5), forward and backward.

``jagged_dense_bmm``: X ``[B, None, K]`` (values ``[ΣL, K]``) times a dense ``[B, K, N]`` -> a
JaggedArray ``[B, None, N]`` (every item of row b times matrix b: FBGEMM's
``jagged_dense_bmm``). ``jagged_jagged_bmm``: X ``[B, None, M]`` and Y ``[B, None, N]`` of one
structure -> dense ``[B, M, N]``, ``Σ_i X_b[i]ᵀ Y_b[i]`` (the weight gradient of the former; an
empty row gives zeros). Each one's backward is the other, exposed as ``*_backward``.

Backends: NumPy values run the Numba kernels of ``cujagged.cpu.interaction`` (float64
accumulation, results in the inputs' dtype). CuPy values take a host round trip through the same
kernels (correct, not fast): the CUDA kernels of this family are not built yet.

Dtypes: float16, bfloat16, float32, float64; both operands of one dtype (as ``torch.bmm``).
"""

from __future__ import annotations

import numpy as np

from ._backend import bfloat16, cupy, is_array, is_gpu_array, not_array, on_array_device
from .cpu import interaction as _cpu

__all__ = ["jagged_dense_bmm", "jagged_dense_bmm_backward", "jagged_jagged_bmm",
           "jagged_jagged_bmm_backward"]

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


def _wide(a):
    """Host values for the Numba kernels: 16-bit floats widened to float32."""
    return a.astype(np.float32) if a.dtype in (np.dtype(np.float16), bfloat16) else a


def _host(a):
    return cupy.asnumpy(a) if is_gpu_array(a) else a


def _dense_bmm(x, y):
    xv, off, yh = _host(x.values), _host(x.offsets), _host(y)
    out = np.zeros((xv.shape[0], yh.shape[2]), dtype=np.float64)
    _cpu.jagged_dense_bmm(_wide(xv), off, _wide(yh), out)
    out = out.astype(x.dtype)
    return x._with_values(cupy.asarray(out) if x.is_gpu else out)


def _jj_bmm(x, y):
    xv, yv, off = _host(x.values), _host(y.values), _host(x.offsets)
    out = np.zeros((x.nrows, xv.shape[1], yv.shape[1]), dtype=np.float64)
    _cpu.jagged_jagged_bmm(_wide(xv), _wide(yv), off, out)
    out = out.astype(x.dtype)
    return cupy.asarray(out) if x.is_gpu else out


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

