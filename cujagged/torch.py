"""PyTorch adapter: the differentiable jagged ops as ``torch.autograd.Function``s, usable inside a
model (``loss.backward()`` reaches ``values`` and the dense operands).

A jagged batch is passed as its torch parts, ``values [T, *inner]`` and ``offsets [B+1]`` (int32
or int64, the device of ``values``); results are torch tensors sharing memory with cujagged's
outputs (DLPack, no copy): jagged results are new ``values`` with the same ``offsets``. CUDA
tensors run the CUDA kernels on torch's current stream; CPU tensors the Numba backend.
``offsets`` are validated on each call (a small reduction; on the GPU a device sync) unless
``max_length`` is given, which skips the check and the measurement of the longest row.

    import cujagged.torch as cjt
    y = cjt.softmax(values, offsets)                 # [T, *inner]
    s = cjt.sum(values, offsets)                     # [B, *inner]
    z = cjt.jagged_dense_bmm(values, offsets, w)     # [T, N] from [T, K] and w [B, K, N]

Forward only, so not here: attention (its backward is not written yet).
"""

from __future__ import annotations

import contextlib

import torch

from . import interaction as _ia
from . import rowwise as _rw
from ._backend import cupy
from .interop import _torch_from, from_dlpack_parts

__all__ = ["softmax", "log_softmax", "sum", "mean", "logsumexp", "cumsum", "jagged_dense_bmm",
           "jagged_jagged_bmm"]


def _check(values, offsets, *dense):
    for name, t in (("values", values), ("offsets", offsets), *dense):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__} (values and "
                            "offsets and the dense operands are torch tensors here)")
        if t.device != values.device:
            raise TypeError(f"{name} is on {t.device} but values on {values.device}")


def _jagged(values, offsets, max_length):
    """The cujagged view of torch parts (detached: DLPack does not export autograd tensors)."""
    return from_dlpack_parts(values.detach().contiguous(), offsets, max_length=max_length,
                             validate=max_length is None)


def _dense(t):
    """A dense torch tensor as a NumPy/CuPy array (shared memory)."""
    from .interop import _import_one

    return _import_one(t.detach().contiguous(), "tensor")


def _stream(t):
    """Run cujagged (CuPy) on torch's current stream for CUDA tensors."""
    if t.is_cuda and cupy is not None:
        return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream)
    return contextlib.nullcontext()


def _out(a):
    return _torch_from(a.values if hasattr(a, "offsets") else a)


class _RowOp(torch.autograd.Function):
    """Row-wise op ``kind`` of one jagged input (values, offsets)."""

    @staticmethod
    def forward(ctx, values, offsets, max_length, kind, opts):
        with _stream(values):
            x = _jagged(values, offsets, max_length)
            ml = x.max_length
            if kind in ("softmax", "log_softmax"):
                res = getattr(_rw, kind)(x)
            elif kind == "cumsum":
                res = _rw.cumsum(x, **opts)
            else:
                res = getattr(_rw, kind)(x, axis=1)
            out = _out(res)
        ctx.kind, ctx.opts, ctx.max_length = kind, opts, ml
        ctx.save_for_backward(values, offsets, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        values, offsets, out = ctx.saved_tensors
        kind, ml = ctx.kind, ctx.max_length
        with _stream(values):
            x = _jagged(values, offsets, ml)
            g = grad.detach().contiguous()
            if kind in ("softmax", "log_softmax", "cumsum"):
                gj = x._with_values(_dense(g))
                if kind == "cumsum":
                    dx = _rw.cumsum_backward(gj, **ctx.opts)
                else:
                    yj = x._with_values(_dense(out))
                    dx = getattr(_rw, f"{kind}_backward")(gj, yj)
            elif kind == "logsumexp":
                dx = _rw.logsumexp_backward(_dense(g), x, _dense(out))
            else:
                dx = getattr(_rw, f"{kind}_backward")(_dense(g), x)
            return _out(dx), None, None, None, None


def _row(kind, values, offsets, max_length=None, **opts):
    _check(values, offsets)
    return _RowOp.apply(values, offsets, max_length, kind, opts)


def softmax(values, offsets, *, max_length=None):
    """Softmax over each row, per column of ``inner``: ``[T, *inner]``."""
    return _row("softmax", values, offsets, max_length)


def log_softmax(values, offsets, *, max_length=None):
    """Log-softmax over each row: ``[T, *inner]``."""
    return _row("log_softmax", values, offsets, max_length)


def sum(values, offsets, *, max_length=None):  # noqa: A001
    """Per-row sum: ``[B, *inner]`` (0 for an empty row)."""
    return _row("sum", values, offsets, max_length)


def mean(values, offsets, *, max_length=None):
    """Per-row mean: ``[B, *inner]`` (NaN for an empty row)."""
    return _row("mean", values, offsets, max_length)


def logsumexp(values, offsets, *, max_length=None):
    """Per-row log-sum-exp: ``[B, *inner]`` (-inf for an empty row)."""
    return _row("logsumexp", values, offsets, max_length)


def cumsum(values, offsets, *, exclusive=False, reverse=False, max_length=None):
    """Per-row cumulative sum: ``[T, *inner]``."""
    return _row("cumsum", values, offsets, max_length, exclusive=exclusive, reverse=reverse)


class _DenseBmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, offsets, y, max_length):
        with _stream(values):
            x = _jagged(values, offsets, max_length)
            out = _out(_ia.jagged_dense_bmm(x, _dense(y)))
        ctx.max_length = x.max_length
        ctx.save_for_backward(values, offsets, y)
        return out

    @staticmethod
    def backward(ctx, grad):
        values, offsets, y = ctx.saved_tensors
        with _stream(values):
            x = _jagged(values, offsets, ctx.max_length)
            gx, gy = _ia.jagged_dense_bmm_backward(x._with_values(_dense(grad)), x, _dense(y))
            return _out(gx), None, _out(gy), None


class _JaggedBmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xv, yv, offsets, max_length):
        with _stream(xv):
            x = _jagged(xv, offsets, max_length)
            y = x._with_values(_dense(yv))
            out = _out(_ia.jagged_jagged_bmm(x, y))
        ctx.max_length = x.max_length
        ctx.save_for_backward(xv, yv, offsets)
        return out

    @staticmethod
    def backward(ctx, grad):
        xv, yv, offsets = ctx.saved_tensors
        with _stream(xv):
            x = _jagged(xv, offsets, ctx.max_length)
            gx, gy = _ia.jagged_jagged_bmm_backward(_dense(grad), x, x._with_values(_dense(yv)))
            return _out(gx), _out(gy), None, None


def jagged_dense_bmm(values, offsets, y, *, max_length=None):
    """Every item of row ``b`` times ``y[b]``: ``values [T, K]``, ``y [B, K, N]`` -> ``[T, N]``."""
    _check(values, offsets, ("y", y))
    return _DenseBmm.apply(values, offsets, y, max_length)


def jagged_jagged_bmm(x_values, y_values, offsets, *, max_length=None):
    """Per-row ``x_bᵀ @ y_b``: ``x_values [T, M]``, ``y_values [T, N]`` (one structure) ->
    ``[B, M, N]``."""
    _check(x_values, offsets, ("y_values", y_values))
    if y_values.shape[0] != x_values.shape[0]:
        raise ValueError(f"y_values must have the items of x_values (one structure: the same "
                         f"offsets), got {y_values.shape[0]} and {x_values.shape[0]} items")
    return _JaggedBmm.apply(x_values, y_values, offsets, max_length)
