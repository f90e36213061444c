"""Numba kernels of the jagged matmuls (feature interaction, DESIGN.md family 5): the CPU backend.

``xv``/``yv`` are 2-D values ``[T, K]`` (float32 or float64; the caller widens 16-bit floats),
``off`` the int32/int64 offsets ``[B+1]``; products and sums are float64, into float64 outputs
the caller allocates zeroed. Rows run in parallel (``prange``); every sum has a fixed order.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

__all__ = ["jagged_dense_bmm", "jagged_jagged_bmm"]

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
