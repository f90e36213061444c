"""Numba twins of ``cuda_src/layout.cu`` (the CPU backend and the reference of the GPU tests).

Every function moves raw item payloads: callers view ``values [T, *inner]`` as flat unsigned
words (uint64/32/16/8, the widest that divides one item's bytes: :func:`word_view`), so one
compiled function per word type serves every dtype, bf16/fp16 included.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["to_padded", "gather_rows", "row_ids", "positions", "word_view", "WORD_TYPES"]

WORD_TYPES = (np.dtype(np.uint64), np.dtype(np.uint32), np.dtype(np.uint16), np.dtype(np.uint8))


def word_view(a: np.ndarray, lead: int = 1):
    """``(flat, words)``: C-contiguous ``a`` viewed as a flat 1-D array of unsigned words, and the
    number of words per item (an item = ``a[i]`` for the ``lead`` leading indices)."""
    elems = int(np.prod(a.shape[lead:], dtype=np.int64))
    item_bytes = elems * a.dtype.itemsize
    w = next((w for w in WORD_TYPES if item_bytes % w.itemsize == 0), WORD_TYPES[-1])
    if item_bytes == 0:
        return np.zeros(0, w), 0
    u8 = np.ascontiguousarray(a).reshape(-1, elems).view(np.uint8)
    return u8.view(w).reshape(-1), item_bytes // w.itemsize


@numba.njit(cache=True, nogil=True)
def to_padded(src, offsets, out, pad, w):
    """``out[b, j] = src[offsets[b] + j]`` for ``j < min(len_b, max_len)``, else ``pad``.

    src: flat words of ``[T, w]``; offsets ``[B+1]``; out: ``[B, max_len * w]`` words;
    pad ``[w]`` words (same word type); w: words per item.
    """
    nrows, row_total = out.shape
    max_len = row_total // w if w > 0 else 0
    for b in range(nrows):
        start = offsets[b]
        n = max(min(offsets[b + 1] - start, max_len), 0)
        o = out[b]
        o[: n * w] = src[start * w: (start + n) * w]
        for j in range(n, max_len):
            o[j * w: (j + 1) * w] = pad


@numba.njit(cache=True, nogil=True)
def gather_rows(src, out, out_offsets, row_base, row_stride, item_step, w):
    """Output item ``t`` of row ``b`` is source item
    ``row_base[b] + b * row_stride + (t - out_offsets[b]) * item_step`` (``row_base`` may be
    empty: then 0). src: flat words of ``[S, w]``; out: flat words of ``[T_out, w]``."""
    nrows = out_offsets.shape[0] - 1
    has_base = row_base.shape[0] > 0
    for b in range(nrows):
        o0 = out_offsets[b]
        n = out_offsets[b + 1] - o0
        base = b * row_stride
        if has_base:
            base += row_base[b]
        if item_step == 1:
            out[o0 * w: (o0 + n) * w] = src[base * w: (base + n) * w]
        else:
            for i in range(n):
                s = (base + i * item_step) * w
                out[(o0 + i) * w: (o0 + i + 1) * w] = src[s: s + w]


@numba.njit(cache=True, nogil=True)
def row_ids(offsets, out):
    """``out[t] = b`` for every item ``t`` of row ``b``."""
    for b in range(offsets.shape[0] - 1):
        for t in range(offsets[b], offsets[b + 1]):
            out[t] = b


@numba.njit(cache=True, nogil=True)
def positions(offsets, out):
    """``out[t] = t - offsets[b]`` (the position of item ``t`` within its row)."""
    for b in range(offsets.shape[0] - 1):
        o0 = offsets[b]
        for t in range(o0, offsets[b + 1]):
            out[t] = t - o0
