"""Numba twins of ``cuda_src/rowwise.cu``: per-row reductions, softmax, cumsum (CPU backend).

Every function takes ``v`` as a 2-D ``[T, C]`` array (``C = prod(inner)``; float16/bfloat16 are
converted to float32 by the caller), ``off`` the int32/int64 offsets ``[B+1]`` and ``trunc`` the
truncation length (only the first ``trunc`` items of each row take part). Floats accumulate in
float64, integers in int64. Rows run in parallel (``prange``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

__all__ = ["reduce_sum", "reduce_prod", "reduce_prod_float", "reduce_max", "reduce_maxval",
           "reduce_lse", "softmax_rows", "softmax_backward_rows", "cumsum_rows"]

_JIT = dict(cache=True, nogil=True)


@numba.njit(parallel=True, **_JIT)
def reduce_sum(v, off, trunc, out):
    """out[b, c] += sum of v[off[b] : off[b] + min(L_b, trunc), c] (out zero-initialised)."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        if C == 1:  # eight independent chains (fixed order: deterministic)
            a0 = out[b, 0]
            a1 = a2 = a3 = a4 = a5 = a6 = a7 = a0 - a0
            i = s
            while i + 8 <= e:
                a0 += v[i, 0]
                a1 += v[i + 1, 0]
                a2 += v[i + 2, 0]
                a3 += v[i + 3, 0]
                a4 += v[i + 4, 0]
                a5 += v[i + 5, 0]
                a6 += v[i + 6, 0]
                a7 += v[i + 7, 0]
                i += 8
            while i < e:
                a0 += v[i, 0]
                i += 1
            out[b, 0] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
        else:
            for i in range(s, e):
                for c in range(C):
                    out[b, c] += v[i, c]


@numba.njit(parallel=True, **_JIT)
def reduce_prod(v, off, trunc, out):
    """out[b, c] *= product over the (truncated) row (out one-initialised; integers)."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        for i in range(s, e):
            for c in range(C):
                out[b, c] *= v[i, c]


@numba.njit(parallel=True, **_JIT)
def reduce_prod_float(v, off, trunc, out):
    """As :func:`reduce_prod` for floats, with the GPU kernel's order-free special values: NaN
    if an item is NaN or a zero meets an infinity, else ±inf if an item is infinite, else ±0
    if one is zero, else the product of the finite items (the sign is always the product of
    the signs), so that a partial product that under- or overflowed cannot turn inf into NaN."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        flags = np.zeros(C, dtype=np.int32)
        for i in range(s, e):
            for c in range(C):
                x = out.dtype.type(v[i, c])
                if x == 0 or np.isinf(x):
                    flags[c] |= 1 if x == 0 else 2
                    x = np.copysign(out.dtype.type(1), x)
                out[b, c] *= x
        for c in range(C):
            a = out[b, c]
            if np.isnan(a) or flags[c] == 3:
                out[b, c] = np.nan
            elif flags[c] == 2:
                out[b, c] = np.copysign(np.inf, a)
            elif flags[c] == 1:
                out[b, c] = np.copysign(0.0, a)


@numba.njit(parallel=True, **_JIT)
def reduce_max(v, off, trunc, is_min, outv, outi):
    """Max (or min) and its first index within the row; NaN wins (first NaN), as in NumPy.

    ``outi`` must be -1-initialised and ``outv`` hold the empty-row fill; rows that have items
    overwrite both.
    """
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        if C == 1:
            if e > s:
                best = v[s, 0]
                bi = 0
                for i in range(s + 1, e):
                    x = v[i, 0]
                    if best == best and (x != x or (x < best if is_min else x > best)):
                        best = x
                        bi = i - s
                outv[b, 0] = best
                outi[b, 0] = bi
        else:
            for i in range(s, e):
                for c in range(C):
                    x = v[i, c]
                    best = outv[b, c]
                    if outi[b, c] < 0 or (
                        best == best and (x != x or (x < best if is_min else x > best))
                    ):
                        outv[b, c] = x
                        outi[b, c] = i - s


@numba.njit(**_JIT)
def _better(x, m, is_min):
    return x != x or (x < m if is_min else x > m)


@numba.njit(parallel=True, **_JIT)
def reduce_maxval(v, off, trunc, is_min, outv):
    """Max (or min) value of each (truncated) row; NaN propagates. ``outv`` holds the empty-row
    fill (-inf / +inf, or the integer dtype's min / max) and is updated in place."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        if C == 1:  # four independent chains; a NaN sticks to its chain
            m0 = outv[b, 0]
            m1 = m2 = m3 = m0
            i = s
            if is_min:
                while i + 4 <= e:
                    x0, x1, x2, x3 = v[i, 0], v[i + 1, 0], v[i + 2, 0], v[i + 3, 0]
                    m0 = x0 if (x0 < m0 or x0 != x0) else m0
                    m1 = x1 if (x1 < m1 or x1 != x1) else m1
                    m2 = x2 if (x2 < m2 or x2 != x2) else m2
                    m3 = x3 if (x3 < m3 or x3 != x3) else m3
                    i += 4
            else:
                while i + 4 <= e:
                    x0, x1, x2, x3 = v[i, 0], v[i + 1, 0], v[i + 2, 0], v[i + 3, 0]
                    m0 = x0 if (x0 > m0 or x0 != x0) else m0
                    m1 = x1 if (x1 > m1 or x1 != x1) else m1
                    m2 = x2 if (x2 > m2 or x2 != x2) else m2
                    m3 = x3 if (x3 > m3 or x3 != x3) else m3
                    i += 4
            while i < e:
                x = v[i, 0]
                if m0 == m0 and _better(x, m0, is_min):
                    m0 = x
                i += 1
            for m in (m1, m2, m3):
                if m0 == m0 and _better(m, m0, is_min):
                    m0 = m
            outv[b, 0] = m0
        else:
            for i in range(s, e):
                for c in range(C):
                    x = v[i, c]
                    m = outv[b, c]
                    if m == m and _better(x, m, is_min):
                        outv[b, c] = x


@numba.njit(parallel=True, **_JIT)
def reduce_lse(v, off, trunc, out):
    """log(sum(exp(x))) over the (truncated) row in float64; empty or all -inf rows give -inf."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = min(off[b + 1], s + trunc)
        for c in range(C):
            m = -np.inf
            nan = False
            for i in range(s, e):
                x = np.float64(v[i, c])
                if x != x:
                    nan = True
                elif x > m:
                    m = x
            if nan:
                out[b, c] = np.nan
            elif m == -np.inf or m == np.inf:
                out[b, c] = m
            else:
                acc = 0.0
                for i in range(s, e):
                    acc += np.exp(np.float64(v[i, c]) - m)
                out[b, c] = m + np.log(acc)


@numba.njit(parallel=True, **_JIT)
def softmax_rows(v, off, trunc, log, out):
    """(log-)softmax of each column over the first ``trunc`` items of each row, float64 math.

    Items past ``trunc`` and rows whose items are all -inf give 0.
    """
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        full = off[b + 1]
        e = min(full, s + trunc)
        for c in range(C):
            m = -np.inf
            for i in range(s, e):
                x = np.float64(v[i, c])
                if x > m or x != x:
                    m = x
            acc = 0.0
            if m != -np.inf:
                for i in range(s, e):
                    acc += np.exp(np.float64(v[i, c]) - m)
            for i in range(s, e):
                if m == -np.inf:
                    out[i, c] = 0.0
                elif log:
                    out[i, c] = np.float64(v[i, c]) - m - np.log(acc)
                else:
                    out[i, c] = np.exp(np.float64(v[i, c]) - m) / acc
            for i in range(e, full):
                out[i, c] = 0.0


@numba.njit(parallel=True, **_JIT)
def softmax_backward_rows(g, y, off, trunc, log, out):
    """Gradient of (log-)softmax: ``y * (g - sum(g * y))`` or ``g - exp(y) * sum(g)`` per row
    and column, 0 past ``trunc``. A log-softmax row that was all -inf has output 0 whatever the
    input, so gradient 0: such a row of n >= 2 items starts with two outputs of 0, which no
    log-softmax row holds (its exps sum to 1), and that is the test (as ``lsm_dead_rows`` in
    ``rowwise.cu``)."""
    B = off.shape[0] - 1
    C = g.shape[1]
    for b in prange(B):
        s = off[b]
        full = off[b + 1]
        e = min(full, s + trunc)
        for c in range(C):
            acc = 0.0
            for i in range(s, e):
                if log:
                    acc += np.float64(g[i, c])
                else:
                    acc += np.float64(g[i, c]) * np.float64(y[i, c])
            dead = log and e - s >= 2 and y[s, c] == 0 and y[s + 1, c] == 0
            for i in range(s, e):
                gi = np.float64(g[i, c])
                yi = np.float64(y[i, c])
                if dead:
                    out[i, c] = 0.0
                elif log:
                    out[i, c] = gi - np.exp(yi) * acc
                else:
                    out[i, c] = yi * (gi - acc)
            for i in range(e, full):
                out[i, c] = 0.0


@numba.njit(parallel=True, **_JIT)
def cumsum_rows(v, off, exclusive, reverse, zero, out):
    """Inclusive/exclusive cumulative sum of each column along each row (from the row's end when
    ``reverse``), accumulated in the type of ``zero`` (a 0 of the accumulator dtype)."""
    B = off.shape[0] - 1
    C = v.shape[1]
    for b in prange(B):
        s = off[b]
        e = off[b + 1]
        n = e - s
        for c in range(C):
            acc = zero
            for k in range(n):
                i = e - 1 - k if reverse else s + k
                x = v[i, c]
                if exclusive:
                    out[i, c] = acc
                    acc += x
                else:
                    acc += x
                    out[i, c] = acc
