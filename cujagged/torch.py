"""PyTorch adapter: the differentiable jagged ops as ``torch.autograd.Function``s, usable inside a
model (``loss.backward()`` reaches ``values`` and the dense operands).

A jagged batch is passed as its torch parts, ``values [T, *inner]`` and ``offsets [B+1]`` (int32
or int64, the device of ``values``); results are torch tensors sharing memory with cujagged's
outputs (DLPack, no copy): jagged results are new ``values`` with the same ``offsets``. CUDA
tensors run the CUDA kernels on torch's current stream; CPU tensors the Numba backend.
``offsets`` are validated (a small reduction); CPU tensors on each call, CUDA tensors once per
offsets tensor, a device sync, which ``max_length`` (the longest row, trusted: give it only for
offsets known to be valid) skips. A CUDA offsets tensor's checked structure (and the attention
tile lists built from it) is kept while the tensor lives and is unchanged (torch's version
counter), so every layer of a model step over one batch, forward and backward, shares it.
Here ``max_length`` is that hint, as ``JaggedArray``'s constructor takes it, **not** the
truncation length that the row-wise methods' ``max_length`` is (truncate with
``JaggedArray.softmax(max_length=...)`` and the like); on CPU tensors it is checked against
the offsets. Backward functions are first-order (``once_differentiable``).

    import cujagged.torch as cjt
    y = cjt.softmax(values, offsets)                 # [T, *inner]
    s = cjt.sum(values, offsets)                     # [B, *inner]
    z = cjt.jagged_dense_bmm(values, offsets, w)     # [T, N] from [T, K] and w [B, K, N]

``jagged_flash_attention`` takes ``q [Tq, H, D]``, ``k``/``v [Tk, Hk, D]`` and their offsets;
its backward runs :func:`cujagged.jagged_flash_attention_backward` (CUDA kernels for CUDA
tensors, the float64 Numba reference for CPU tensors).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakIdKeyDictionary

from . import interaction as _ia
from . import rowwise as _rw
from ._backend import bfloat16, cupy
from .attention import jagged_flash_attention as _jfa
from .attention import jagged_flash_attention_backward as _jfa_bwd
from .interop import _torch_from, from_dlpack_parts
from .jagged import JaggedArray

__all__ = ["softmax", "log_softmax", "sum", "mean", "logsumexp", "cumsum", "jagged_dense_bmm",
           "jagged_jagged_bmm", "jagged_flash_attention", "jagged2_offsets",
           "jagged_jagged_bmm_jagged_out", "array_jagged_bmm_jagged_out", "jagged2_softmax",
           "jagged_self_subtraction"]


def _check(values, offsets, *dense, max_length=None):
    _check_max_length(max_length)
    for name, t in (("values", values), ("offsets", offsets), *dense):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__} (values and "
                            "offsets and the dense operands are torch tensors here)")
        if t.device != values.device:
            raise TypeError(f"{name} is on {t.device} but values on {values.device}")


def _check_max_length(max_length, name="max_length"):
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(
            max_length, int) or max_length < 0):
        raise ValueError(f"{name} must be None or an integer >= 0, got {max_length!r}")


def _jagged(values, offsets, max_length):
    """The cujagged view of torch parts (detached: DLPack does not export autograd tensors).
    Host offsets are always checked. CUDA offsets are checked (a device sync) once per offsets
    tensor, unless ``max_length`` is given: the structure (device offsets, longest row, cached
    tile lists) is kept for the tensor's lifetime, keyed by its identity, torch's version
    counter (an in-place change drops it), the values' length and the stream, so the layers of
    one model step over one batch, and their backwards, share one check and one tile list."""
    if not (values.is_cuda and isinstance(offsets, torch.Tensor)):
        return from_dlpack_parts(values.detach().contiguous(), offsets, max_length=max_length,
                                 validate=max_length is None or not values.is_cuda)
    try:  # (per stream too: the row-wise split reductions keep arrival counters in it)
        key = (offsets._version, offsets.data_ptr(), values.shape[0] if values.ndim else -1,
               torch.cuda.current_stream(values.device).cuda_stream)
    except RuntimeError:  # an inference tensor keeps no version counter: no cache
        key = None
    hit = _STRUCTS.get(offsets) if key is not None else None
    if hit is not None and hit[0] == key and max_length in (None, hit[1].max_length):
        return hit[1]._with_values(_dense(values))
    x = JaggedArray(_dense(values), _dense(offsets), max_length=max_length,
                    validate=max_length is None)
    if key is not None:
        _STRUCTS[offsets] = (key, x._with_values(None))  # (no reference to the values)
    return x


# offsets tensor -> ((version, data_ptr, T, stream), a JaggedArray of its structure without values)
_STRUCTS = WeakIdKeyDictionary()


# torch dtype -> (NumPy dtype of the CuPy array, bfloat16 view): CUDA tensors of these dtypes
# are wrapped by pointer (a few microseconds) rather than through DLPack (tens: torch's
# __dlpack__ looks up streams and devices each call); the tensor is the memory's owner
_BY_POINTER = {torch.float32: (np.float32, False), torch.float16: (np.float16, False),
               torch.float64: (np.float64, False), torch.bfloat16: (np.int16, True),
               torch.int32: (np.int32, False), torch.int64: (np.int64, False)}


def _dense(t):
    """A dense torch tensor as a NumPy/CuPy array (shared memory). CUDA tensors are used on
    the current stream, which the callers make torch's (:func:`_stream`)."""
    from .interop import _import_one

    t = t.detach().contiguous()
    kind = _BY_POINTER.get(t.dtype) if t.is_cuda and cupy is not None and t.numel() else None
    if kind is None or (kind[1] and bfloat16 is None):
        return _import_one(t, "tensor")
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), t.numel() * t.element_size(), t,
                                  t.device.index)
    a = cupy.ndarray(tuple(t.shape), kind[0], cupy.cuda.MemoryPointer(mem, 0))
    return a.view(bfloat16) if kind[1] else a


def _stream(t):
    """Run cujagged (CuPy) on torch's current stream for CUDA tensors (through the CUDA stream
    protocol where CuPy and torch both have it; ExternalStream, deprecated in CuPy 14, else)."""
    if t.is_cuda and cupy is not None:
        ts = torch.cuda.current_stream(t.device)
        if hasattr(cupy.cuda.Stream, "from_external") and hasattr(ts, "__cuda_stream__"):
            return cupy.cuda.Stream.from_external(ts)
        return cupy.cuda.ExternalStream(ts.cuda_stream)
    return contextlib.nullcontext()


def _out(a):
    return _torch_from(a.values if hasattr(a, "offsets") else a)


class _RowOp(torch.autograd.Function):
    """Row-wise op ``kind`` of one jagged input (values, offsets). The backward of a sum / mean
    broadcasts over each row in torch (no saved values); softmax and log-softmax keep their
    output, logsumexp its input and output, cumsum nothing but the offsets."""

    @staticmethod
    def forward(ctx, values, offsets, max_length, kind, opts):
        with _stream(values):
            x = _jagged(values, offsets, max_length)
            if kind in ("softmax", "log_softmax"):
                res = getattr(_rw, kind)(x)
            elif kind == "cumsum":
                res = _rw.cumsum(x, **opts)
            else:
                res = getattr(_rw, kind)(x, axis=1)
            out = _out(res)
        ctx.kind, ctx.opts, ctx.max_length, ctx.T = kind, opts, x.max_length, values.shape[0]
        saved = {"softmax": (offsets, out), "log_softmax": (offsets, out),
                 "logsumexp": (offsets, values, out)}.get(kind, (offsets,))
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        kind, ml = ctx.kind, ctx.max_length
        offsets = ctx.saved_tensors[0]
        if kind in ("sum", "mean"):
            lens = offsets[1:] - offsets[:-1]
            g = grad / lens.clamp(min=1).to(grad.dtype).reshape(-1, *[1] * (grad.ndim - 1)) \
                if kind == "mean" else grad
            return (torch.repeat_interleave(g, lens, dim=0, output_size=ctx.T), None, None, None,
                    None)
        g = grad.detach().contiguous()
        with _stream(g):
            if kind == "logsumexp":
                _, values, out = ctx.saved_tensors
                dx = _rw.logsumexp_backward(_dense(g), _jagged(values, offsets, ml), _dense(out))
            else:
                gj = _jagged(g, offsets, ml)
                if kind == "cumsum":
                    dx = _rw.cumsum_backward(gj, **ctx.opts)
                else:
                    dx = getattr(_rw, f"{kind}_backward")(gj, gj._with_values(
                        _dense(ctx.saved_tensors[1])))
            return _out(dx), None, None, None, None


def _row(kind, values, offsets, max_length=None, **opts):
    _check(values, offsets, max_length=max_length)
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


class _Bmm(torch.autograd.Function):
    """The two jagged matmuls: ``dense`` (x jagged, b dense ``[B, K, N]``) or not (b jagged of
    x's structure); each one's backward is the matching ``*_backward``."""

    @staticmethod
    def _operands(a, b, offsets, max_length, dense):
        x = _jagged(a, offsets, max_length)
        return x, (_dense(b) if dense else x._with_values(_dense(b)))

    @staticmethod
    def forward(ctx, dense, a, b, offsets, max_length):
        with _stream(a):
            x, y = _Bmm._operands(a, b, offsets, max_length, dense)
            out = _out((_ia.jagged_dense_bmm if dense else _ia.jagged_jagged_bmm)(x, y))
        ctx.dense, ctx.max_length = dense, x.max_length
        ctx.save_for_backward(a, b, offsets)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, offsets = ctx.saved_tensors
        with _stream(a):
            x, y = _Bmm._operands(a, b, offsets, ctx.max_length, ctx.dense)
            if ctx.dense:  # grad is jagged like the output
                ga, gb = _ia.jagged_dense_bmm_backward(x._with_values(_dense(grad)), x, y)
            else:
                ga, gb = _ia.jagged_jagged_bmm_backward(_dense(grad), x, y)
            return None, _out(ga), _out(gb), None, None


def jagged_dense_bmm(values, offsets, y, *, max_length=None):
    """Every item of row ``b`` times ``y[b]``: ``values [T, K]``, ``y [B, K, N]`` -> ``[T, N]``."""
    _check(values, offsets, ("y", y), max_length=max_length)
    return _Bmm.apply(True, values, y, offsets, max_length)


def jagged_jagged_bmm(x_values, y_values, offsets, *, max_length=None):
    """Per-row ``x_bᵀ @ y_b``: ``x_values [T, M]``, ``y_values [T, N]`` (one structure) ->
    ``[B, M, N]``."""
    _check(x_values, offsets, ("y_values", y_values), max_length=max_length)
    if y_values.shape[0] != x_values.shape[0]:
        raise ValueError(f"y_values must have the items of x_values (one structure: the same "
                         f"offsets), got {y_values.shape[0]} and {x_values.shape[0]} items")
    return _Bmm.apply(False, x_values, y_values, offsets, max_length)


class _Attention(torch.autograd.Function):
    """Attention over torch parts: the jagged q (and, for cross-attention, k) of the offsets'
    cached structures (:func:`_jagged`); the backward takes the same structures (the longest
    rows the forward found as hints: no device sync) and runs the CUDA backward on the saved O
    and log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, bias, offsets, kv_offsets, opts, lengths):
        with _stream(q):
            qj = _named(q, offsets, lengths[0], "offsets", "q")
            if kv_offsets is None:  # (checked here: k and v take q's structure unchecked)
                if k.shape[:1] != q.shape[:1]:
                    raise ValueError(f"k has {k.shape[0] if k.ndim else 0} rows but q has "
                                     f"{q.shape[0]}; give kv_offsets for cross-attention")
                kj = qj._with_values(_dense(k))
            else:
                kj = _named(k, kv_offsets, lengths[1], "kv_offsets", "k")
            # (JaggedArrays of cached structures: from the second call on, the launch plan
            # cached on them skips the argument checks and the tile list)
            out, lse = _jfa(qj, kj, kj._with_values(_dense(v)),
                            bias=None if bias is None else _dense(bias), return_lse=True,
                            **opts)
            out, lse = _torch_from(out.values), _torch_from(lse)
        ctx.opts = opts
        ctx.lengths = (qj.max_length, None if kv_offsets is None else kj.max_length)
        # O and its log-sum-exp spare the backward a second forward (as torch's own flash
        # attention, an in-place edit of the returned O is then refused at backward time)
        ctx.save_for_backward(q, k, v, bias, offsets, kv_offsets, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, bias, offsets, kv_offsets, out, lse = ctx.saved_tensors
        opts = {n: ctx.opts[n] for n in ("max_seq_len", "scale", "causal")}
        with _stream(q):
            # the forward validated these offsets and found their longest rows: trusted here
            qj = _jagged(q, offsets, ctx.lengths[0])
            kj = qj._with_values(_dense(k)) if kv_offsets is None else _jagged(
                k, kv_offsets, ctx.lengths[1])
            grads = _jfa_bwd(qj._with_values(_dense(grad)), qj, kj, kj._with_values(_dense(v)),
                             bias=None if bias is None else _dense(bias), out=_dense(out),
                             lse=_dense(lse), **opts)
            grads = [_torch_from(a.values if hasattr(a, "offsets") else a) for a in grads]
        dbias = grads[3] if bias is not None else None
        return grads[0], grads[1], grads[2], dbias, None, None, None, None


def _named(values, offsets, max_length, off_name, name):
    """:func:`_jagged`, its errors naming ``off_name`` (of ``name``)."""
    try:
        return _jagged(values, offsets, max_length)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{off_name} (of {name}): {e}") from None


def jagged_flash_attention(q, k, v, offsets, *, kv_offsets=None, max_seq_len=None, scale=None,
                           causal=False, bias=None, allow_tf32=False, max_length=None,
                           kv_max_length=None):
    """:func:`cujagged.jagged_flash_attention` on torch tensors, differentiable in ``q``, ``k``,
    ``v`` and ``bias``: ``q [Tq, H, D]``, ``k``/``v [Tk, Hk, D]``, ``offsets [B+1]`` (and
    ``kv_offsets`` for cross-attention) -> ``O [Tq, H, D]``.

    ``max_seq_len`` truncates every row (as in :func:`cujagged.jagged_flash_attention`);
    ``max_length`` / ``kv_max_length`` are the longest query / key row when known (trusted
    hints, as the module's other ``max_length``: on CUDA tensors they skip the offsets'
    validation, a device sync the first time an offsets tensor is seen). The backward reuses
    what the forward found and does not synchronise."""
    dense = [("k", k), ("v", v)] + [(n, t) for n, t in (("kv_offsets", kv_offsets),
                                                         ("bias", bias)) if t is not None]
    _check(q, offsets, *dense, max_length=max_length)
    _check_max_length(kv_max_length, "kv_max_length")
    if kv_max_length is not None and kv_offsets is None:
        raise ValueError("kv_max_length is the longest row of kv_offsets (cross-attention); "
                         "self-attention takes max_length alone")
    opts = dict(max_seq_len=max_seq_len, scale=scale, causal=causal, allow_tf32=allow_tf32)
    return _Attention.apply(q, k, v, bias, offsets, kv_offsets, opts,
                            (max_length, kv_max_length))


# ---- jagged2 (one L_b x L_b matrix a row, values [ΣL_b², *inner]; offsets: jagged2_offsets) --
# (on CUDA each call reads the number of jagged2 items back to the host: one sync, max_length
# or not)
def jagged2_offsets(offsets):
    """The offsets ``cumsum(L_b²)`` of the jagged2 values of rows with ``offsets`` (int64, the
    device of ``offsets``)."""
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch tensor, got {type(offsets).__name__}")
    lens = (offsets[1:] - offsets[:-1]).to(torch.int64)
    return torch.cat([lens.new_zeros(1), torch.cumsum(lens * lens, 0)])


def _m(x, m_values, name="m_values"):
    """A jagged2 JaggedArray of x's rows over the torch tensor ``m_values`` (checked: it must
    hold ``ΣL_b²`` items)."""
    off2 = _ia.jagged2_offsets(x)
    n = int(off2[-1])
    if m_values.ndim < 1 or m_values.shape[0] != n:
        raise ValueError(f"{name} must hold one L_b x L_b matrix a row: {n} items (the sum of "
                         f"the squared row lengths), got shape {tuple(m_values.shape)}")
    ml = x.max_length
    return type(x)(_dense(m_values), off2, max_length=ml * ml, validate=False)


class _J2(torch.autograd.Function):
    """The jagged2 ops; ``kind`` picks the op, ``a``/``b`` its tensor operands."""

    @staticmethod
    def forward(ctx, a, b, offsets, max_length, kind, axis):
        with _stream(a):
            if kind == "bmm_out":  # a = x values [T, D], b = y values [T, D]
                x = _jagged(a, offsets, max_length)
                res = _ia.jagged_jagged_bmm_jagged_out(x, x._with_values(_dense(b)))
            elif kind == "array_bmm":  # a = m values [ΣL²], b = x values [T, N]
                x = _jagged(b, offsets, max_length)
                res = _ia.array_jagged_bmm_jagged_out(_m(x, a), x)
            elif kind == "softmax":  # a = m values
                x = _jagged(offsets.new_zeros(int(offsets[-1])), offsets, max_length)
                res = _ia.jagged2_softmax(_m(x, a), x, axis)
            else:  # "self_sub": a = x values
                x = _jagged(a, offsets, max_length)
                res = _ia.jagged_self_subtraction(x)
            out = _out(res)
        ctx.kind, ctx.axis, ctx.max_length = kind, axis, x.max_length
        ctx.save_for_backward(*((a, b, offsets) if kind in ("bmm_out", "array_bmm") else
                                (offsets, out) if kind == "softmax" else (offsets, a)))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        kind, ml = ctx.kind, ctx.max_length
        g = grad.detach().contiguous()
        with _stream(g):
            if kind == "bmm_out":
                a, b, offsets = ctx.saved_tensors
                x = _jagged(a, offsets, ml)
                ga, gb = _ia.jagged_jagged_bmm_jagged_out_backward(_m(x, g), x,
                                                                   x._with_values(_dense(b)))
                return _out(ga), _out(gb), None, None, None, None
            if kind == "array_bmm":
                a, b, offsets = ctx.saved_tensors
                x = _jagged(b, offsets, ml)
                ga, gb = _ia.array_jagged_bmm_jagged_out_backward(x._with_values(_dense(g)),
                                                                  _m(x, a), x)
                return _out(ga), _out(gb), None, None, None, None
            offsets, saved = ctx.saved_tensors
            if kind == "softmax":
                x = _jagged(offsets.new_zeros(int(offsets[-1])), offsets, ml)
                ga = _ia.jagged2_softmax_backward(_m(x, g), _m(x, saved), x, ctx.axis)
            else:
                x = _jagged(saved, offsets, ml)
                ga = _ia.jagged_self_subtraction_backward(_m(x, g), x)
            return _out(ga), None, None, None, None, None


def jagged_jagged_bmm_jagged_out(x_values, y_values, offsets, *, max_length=None):
    """Per-row ``x_b @ y_bᵀ`` as jagged2 values ``[ΣL_b²]`` (``x_values``/``y_values [T, D]``)."""
    _check(x_values, offsets, ("y_values", y_values), max_length=max_length)
    if y_values.shape[0] != x_values.shape[0]:
        raise ValueError(f"y_values must have the items of x_values (one structure: the same "
                         f"offsets), got {y_values.shape[0]} and {x_values.shape[0]} items")
    return _J2.apply(x_values, y_values, offsets, max_length, "bmm_out", 1)


def array_jagged_bmm_jagged_out(m_values, x_values, offsets, *, max_length=None):
    """Per-row ``m_b @ x_b``: jagged2 ``m_values [ΣL_b²]`` and ``x_values [T, N]`` -> ``[T, N]``."""
    _check(x_values, offsets, ("m_values", m_values), max_length=max_length)
    return _J2.apply(m_values, x_values, offsets, max_length, "array_bmm", 1)


def jagged2_softmax(m_values, offsets, *, axis=1, max_length=None):
    """Softmax within every ``L_b × L_b`` matrix (``axis`` 1: along its rows, 0: its columns) of
    jagged2 ``m_values [ΣL_b², *inner]``, for rows with ``offsets``."""
    _check(m_values, offsets, max_length=max_length)
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError(f"offsets must be [B+1] with B >= 0, got shape {tuple(offsets.shape)}")
    return _J2.apply(m_values, None, offsets, max_length, "softmax", axis)


def jagged_self_subtraction(values, offsets, *, max_length=None):
    """Pairwise ``x_b[i] − x_b[j]`` within each row: jagged2 values ``[ΣL_b², *inner]``."""
    _check(values, offsets, max_length=max_length)
    return _J2.apply(values, None, offsets, max_length, "self_sub", 1)
