"""Numba kernels of the jagged matmuls (feature interaction, DESIGN.md family 5): the CPU backend.

``xv``/``yv`` are 2-D values ``[T, K]`` (float32 or float64; the caller widens 16-bit floats),
``off`` the int32/int64 offsets ``[B+1]``; products and sums are float64, into float64 outputs
the caller allocates zeroed. Rows run in parallel (``prange``); every sum has a fixed order.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

__all__ = ["jagged_dense_bmm", "jagged_jagged_bmm", "jagged_jagged_bmm_jagged_out",
           "array_jagged_bmm_jagged_out"]

_JIT = dict(cache=True, nogil=True)


@numba.njit(parallel=True, **_JIT)
def jagged_dense_bmm(xv, off, y, out):
    """out[t] = xv[t] @ y[b] for every item t of row b: xv [T, K], y [B, K, N], out [T, N]
    (zero-initialised)."""
    B = off.shape[0] - 1
    K = xv.shape[1]
    N = y.shape[2]
    for b in prange(B):
        for t in range(off[b], off[b + 1]):
            for k in range(K):
                a = np.float64(xv[t, k])
                for n in range(N):
                    out[t, n] += a * y[b, k, n]


@numba.njit(parallel=True, **_JIT)
def jagged_jagged_bmm(xv, yv, off, out):
    """out[b] = xv[rows b]^T @ yv[rows b]: xv [T, M], yv [T, N], out [B, M, N] (zero-initialised;
    an empty row leaves zeros)."""
    B = off.shape[0] - 1
    M = xv.shape[1]
    N = yv.shape[1]
    for b in prange(B):
        for t in range(off[b], off[b + 1]):
            for m in range(M):
                a = np.float64(xv[t, m])
                for n in range(N):
                    out[b, m, n] += a * yv[t, n]


# ---- jagged2: one L_b x L_b matrix per row, row-major, at off2[b] = sum of L_c^2 for c < b -------
@numba.njit(parallel=True, **_JIT)
def jagged_jagged_bmm_jagged_out(xv, yv, off, off2, out):
    """out[off2[b] + i L + j] = xv[s + i] . yv[s + j] (rows b of L items from s = off[b])."""
    B = off.shape[0] - 1
    D = xv.shape[1]
    for b in prange(B):
        s = off[b]
        L = off[b + 1] - s
        for i in range(L):
            for j in range(L):
                acc = 0.0
                for d in range(D):
                    acc += np.float64(xv[s + i, d]) * yv[s + j, d]
                out[off2[b] + i * L + j] = acc


@numba.njit(parallel=True, **_JIT)
def array_jagged_bmm_jagged_out(mv, off2, xv, off, trans, out):
    """out[s + i] = sum_k M_b[i, k] xv[s + k] with M_b[i, k] = mv[off2[b] + i L + k] (its
    transpose when trans): mv [ΣL²], xv [T, N], out [T, N] (zero-initialised)."""
    B = off.shape[0] - 1
    N = xv.shape[1]
    for b in prange(B):
        s = off[b]
        L = off[b + 1] - s
        o2 = off2[b]
        for i in range(L):
            for k in range(L):
                a = np.float64(mv[o2 + k * L + i] if trans else mv[o2 + i * L + k])
                for n in range(N):
                    out[s + i, n] += a * xv[s + k, n]
