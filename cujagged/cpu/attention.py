"""Numba twin of ``cuda_src/attention.cu``: jagged attention forward with float64 accumulation.

It is the CPU backend of :func:`cujagged.jagged_flash_attention` and the reference of the GPU
tests. Inputs arrive as float32 or float64 (bf16/fp16 are widened by the caller).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _scores(q, k, qs, ks, i, h, hk, b, nk, scale, bias, has_bias, s):
    """s[j] = scale q[qs + i, h] . k[ks + j, hk] (+ bias[b, h, i, j]) for j < nk, in float64;
    returns their max (NaN if one is: max() would drop it and hide it)."""
    D = q.shape[2]
    m = -np.inf
    for j in range(nk):
        dot = 0.0
        for d in range(D):
            dot += np.float64(q[qs + i, h, d]) * np.float64(k[ks + j, hk, d])
        x = dot * scale
        if has_bias:
            x += bias[b, h, i, j]
        s[j] = x
        if x > m or x != x:
            m = x
    return m


@numba.njit(cache=True, parallel=True)
def attention_fwd(q, k, v, q_off, k_off, max_seq_len, scale, causal, bias, has_bias, out, lse):
    """One softmax-attention per (row, head, query).

    Args:
        q: ``[Tq, H, D]``; k, v: ``[Tk, Hk, D]`` (``Hk`` divides ``H``).
        q_off, k_off: int64 ``[B+1]``.
        max_seq_len: only the first ``max_seq_len`` queries/keys of each row take part.
        scale: multiplies ``q·k``.
        causal: key j is seen by query i when ``j <= i + Lk - Lq`` (end-aligned).
        bias: float64 ``[B, H, Mq, Mk]`` (ignored unless ``has_bias``).
        out: float64 ``[Tq, H, D]``, written in full (zeros where a query sees no key).
        lse: float64 ``[Tq, H]``, natural-log log-sum-exp (``-inf`` where a query sees no key).
    """
    B = q_off.shape[0] - 1
    H = q.shape[1]
    D = q.shape[2]
    group = H // k.shape[1]
    for bh in numba.prange(B * H):
        b = bh // H
        h = bh % H
        hk = h // group
        qs = q_off[b]
        lq_full = q_off[b + 1] - qs
        lq = min(lq_full, max_seq_len)
        ks = k_off[b]
        lk = min(k_off[b + 1] - ks, max_seq_len)
        s = np.empty(max(lk, 1), dtype=np.float64)
        acc = np.empty(D, dtype=np.float64)
        for i in range(lq_full):
            for d in range(D):
                out[qs + i, h, d] = 0.0
            lse[qs + i, h] = -np.inf
            if i >= lq:
                continue
            nk = lk
            if causal:
                nk = min(lk, i + lk - lq + 1)
            if nk <= 0:
                continue
            m = _scores(q, k, qs, ks, i, h, hk, b, nk, scale, bias, has_bias, s)
            if m == -np.inf:  # every score -inf (an all -inf bias): no key
                continue
            total = 0.0
            for d in range(D):
                acc[d] = 0.0
            for j in range(nk):
                p = math.exp(s[j] - m)
                total += p
                for d in range(D):
                    acc[d] += p * np.float64(v[ks + j, hk, d])
            for d in range(D):
                out[qs + i, h, d] = acc[d] / total
            lse[qs + i, h] = m + math.log(total)


@numba.njit(cache=True, parallel=True)
def attention_bwd(q, k, v, g, q_off, k_off, max_seq_len, scale, causal, bias, has_bias,
                  out, has_out, dq, dk, dv, dbias):
    """Gradients of :func:`attention_fwd`'s ``out`` given ``g = dL/dout`` (float64 throughout;
    the forward is recomputed): with ``P = softmax(S)``, ``S = scale q kᵀ + bias``,
    ``dS = P (g vᵀ − Σ_d g out)``: ``dq += scale dS k``, ``dk += scale dSᵀ q``, ``dv += Pᵀ g``,
    ``dbias += dS``. With ``has_out``, ``Σ_d g out`` takes the given forward output ``out``
    (``[Tq, H, D]``, e.g. the GPU's rounded one) instead of the recomputed one: the gradient
    that a kernel given that output should produce. ``dq``/``dk``/``dv``/``dbias``
    (``[B, H, Mq, Mk]``, ignored unless ``has_bias``) arrive zeroed. Work is split by (row, key
    head), so the query heads of a group add into their key head's ``dk``/``dv`` without a
    race.
    """
    B = q_off.shape[0] - 1
    D = q.shape[2]
    Hk = k.shape[1]
    group = q.shape[1] // Hk
    for bk in numba.prange(B * Hk):
        b = bk // Hk
        hk = bk % Hk
        qs = q_off[b]
        lq = min(q_off[b + 1] - qs, max_seq_len)
        ks = k_off[b]
        lk = min(k_off[b + 1] - ks, max_seq_len)
        p = np.empty(max(lk, 1), dtype=np.float64)
        o = np.empty(D, dtype=np.float64)
        for h in range(hk * group, (hk + 1) * group):
            for i in range(lq):
                nk = min(lk, i + lk - lq + 1) if causal else lk
                if nk <= 0:
                    continue
                m = _scores(q, k, qs, ks, i, h, hk, b, nk, scale, bias, has_bias, p)
                if m == -np.inf:  # the query sees no key: its output is 0 whatever the inputs
                    continue
                total = 0.0
                for j in range(nk):
                    p[j] = math.exp(p[j] - m)
                    total += p[j]
                for d in range(D):
                    o[d] = 0.0
                for j in range(nk):
                    p[j] /= total
                    for d in range(D):
                        o[d] += p[j] * v[ks + j, hk, d]
                di = 0.0
                for d in range(D):
                    di += g[qs + i, h, d] * (out[qs + i, h, d] if has_out else o[d])
                for j in range(nk):
                    dp = 0.0
                    for d in range(D):
                        dp += g[qs + i, h, d] * v[ks + j, hk, d]
                    ds = p[j] * (dp - di)
                    if has_bias:
                        dbias[b, h, i, j] += ds
                    for d in range(D):
                        dq[qs + i, h, d] += scale * ds * k[ks + j, hk, d]
                        dk[ks + j, hk, d] += scale * ds * q[qs + i, h, d]
                        dv[ks + j, hk, d] += p[j] * g[qs + i, h, d]
