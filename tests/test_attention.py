"""Jagged Flash Attention forward: Numba twin vs a plain NumPy loop, GPU kernels vs the twin."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import lengths, make_offsets, rel_error

import cujagged
from cujagged import JaggedArray, bfloat16, jagged_flash_attention
from cujagged.attention import HEAD_DIMS


# ---- plain float64 NumPy loop -------------------------------------------------------------------
def naive_attention(q, k, v, lq, lk, msl, scale, causal, bias):
    """Row by row with padded-free NumPy: softmax(scale q kᵀ + bias + mask) v, float64."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    H = q.shape[1]
    g = H // k.shape[1]
    out = np.zeros(q.shape)
    lse = np.full(q.shape[:2], -np.inf)
    qo, ko = make_offsets(lq), make_offsets(lk)
    msl = 1 << 60 if msl is None else msl
    for b in range(len(lq)):
        nq, nk = min(lq[b], msl), min(lk[b], msl)
        for h in range(H):
            Q = q[qo[b]:qo[b] + nq, h]
            K = k[ko[b]:ko[b] + nk, h // g]
            V = v[ko[b]:ko[b] + nk, h // g]
            s = scale * Q @ K.T
            if bias is not None:
                s = s + np.asarray(bias[b, h if bias.shape[1] > 1 else 0, :nq, :nk], np.float64)
            if causal:
                i, j = np.meshgrid(np.arange(nq), np.arange(nk), indexing="ij")
                s = np.where(j <= i + nk - nq, s, -np.inf)
            for i in range(nq):
                m = s[i].max(initial=-np.inf)
                if m == -np.inf:
                    continue
                p = np.exp(s[i] - m)
                out[qo[b] + i, h] = p @ V / p.sum()
                lse[qo[b] + i, h] = m + math.log(p.sum())
    return out, lse


@st.composite
def problems(draw, max_len=40, dtypes=(np.float64,), dims=(32,)):
    lq = draw(lengths(max_rows=6, max_len=max_len))
    cross = draw(st.booleans())
    lk = draw(st.lists(st.integers(0, 2 * max_len), min_size=len(lq), max_size=len(lq))) \
        if cross else lq
    H = draw(st.sampled_from([1, 2, 4]))
    Hk = draw(st.sampled_from([d for d in (1, 2, 4) if H % d == 0]))
    return dict(
        lq=lq, lk=lk, cross=cross, H=H, Hk=Hk,
        D=draw(st.sampled_from(dims)),
        dtype=np.dtype(draw(st.sampled_from(dtypes))),
        causal=draw(st.booleans()),
        msl=draw(st.one_of(st.none(), st.integers(0, 2 * max_len))),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
        bias=draw(st.booleans()),
        bias_heads=draw(st.sampled_from(["H", 1])),
        off_dtype=draw(st.sampled_from([np.int32, np.int64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_inputs(p):
    rng = np.random.default_rng(p["seed"])
    Tq, Tk = sum(p["lq"]), sum(p["lk"])
    q = rng.standard_normal((Tq, p["H"], p["D"])).astype(np.float32).astype(p["dtype"])
    k = rng.standard_normal((Tk, p["Hk"], p["D"])).astype(np.float32).astype(p["dtype"])
    v = rng.standard_normal((Tk, p["Hk"], p["D"])).astype(np.float32).astype(p["dtype"])
    bias = None
    if p["bias"]:
        mq, mk = max(p["lq"], default=0) + 1, max(p["lk"], default=0) + 2
        B = len(p["lq"])
        bias = rng.standard_normal((B, p["H"] if p["bias_heads"] == "H" else 1, mq, mk))
        bias = bias.astype(np.float32).astype(p["dtype"])
    return q, k, v, bias


def call(p, q, k, v, bias, xp=np, **kw):
    qo = xp.asarray(make_offsets(p["lq"], p["off_dtype"]))
    ko = xp.asarray(make_offsets(p["lk"], p["off_dtype"]))
    args = dict(max_seq_len=p["msl"], scale=p["scale"], causal=p["causal"], return_lse=True,
                bias=None if bias is None else xp.asarray(bias), **kw)
    if p["cross"]:
        args["kv_offsets"] = ko
    return jagged_flash_attention(xp.asarray(q), xp.asarray(k), xp.asarray(v), qo, **args)


# ---- CPU: Numba twin vs the NumPy loop ----------------------------------------------------------
@given(problems())
def test_numba_twin_matches_numpy_loop(p):
    q, k, v, bias = make_inputs(p)
    out, lse = call(p, q, k, v, bias)
    scale = 1 / math.sqrt(p["D"]) if p["scale"] is None else p["scale"]
    ref, ref_lse = naive_attention(q, k, v, p["lq"], p["lk"], p["msl"], scale, p["causal"], bias)
    assert out.dtype == np.float64 and lse.dtype == np.float32
    assert np.allclose(out, ref, rtol=1e-9, atol=1e-12)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.allclose(lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-5)
    assert not np.isnan(out).any() and not np.isnan(lse).any()


def test_cpu_dtypes_and_jagged_layout():
    lq = [3, 0, 5, 1]
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float16, bfloat16):
        q = rng.standard_normal((9, 2, 32)).astype(np.float32).astype(dt)
        qj = JaggedArray(q, lengths=lq)
        o = jagged_flash_attention(qj, qj, qj)
        assert isinstance(o, JaggedArray) and o.values.dtype == np.dtype(dt)
        ref, _ = naive_attention(q, q, q, lq, lq, None, 1 / math.sqrt(32), False, None)
        assert rel_error(o.values, ref) < 1e-2


def test_fbgemm_basic_recipe():
    """FBGEMM jagged_flash_attention_basic (no mask): softmax(q kᵀ) v / max_seq_len, rows and
    keys truncated at max_seq_len, queries past it zero."""
    rng = np.random.default_rng(1)
    lq, D, msl = [5, 0, 9, 2], 32, 6
    T = sum(lq)
    q, k, v = (rng.standard_normal((T, D)) for _ in range(3))
    off = make_offsets(lq)
    ref = np.zeros((T, D))
    for b in range(len(lq)):
        n = min(lq[b], msl)
        if n == 0:
            continue
        s = q[off[b]:off[b] + n] @ k[off[b]:off[b] + n].T
        p = np.exp(s - s.max(1, keepdims=True))
        ref[off[b]:off[b] + n] = (p / p.sum(1, keepdims=True)) @ v[off[b]:off[b] + n] / msl
    o = jagged_flash_attention(q[:, None], k[:, None], v[:, None], off, max_seq_len=msl,
                               scale=1.0)[:, 0] / msl
    np.testing.assert_allclose(o, ref, rtol=1e-10, atol=1e-12)


def test_validation_errors():
    q = np.zeros((4, 2, 32), np.float32)
    off = [0, 4]
    with pytest.raises(ValueError, match="head dim"):
        jagged_flash_attention(q[..., :24], q[..., :24], q[..., :24], off)
    with pytest.raises(ValueError, match="divide"):
        jagged_flash_attention(np.zeros((4, 3, 32), np.float32), q, q, off)
    with pytest.raises(TypeError, match="offsets"):
        jagged_flash_attention(q, q, q)
    with pytest.raises(TypeError, match="dtype"):
        jagged_flash_attention(q, q.astype(np.float16), q, off)
    with pytest.raises(ValueError, match="bias"):
        jagged_flash_attention(q, q, q, off, bias=np.zeros((1, 2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="rows"):
        jagged_flash_attention(q, q[:3], q[:3], off)
    with pytest.raises(ValueError, match="max_seq_len"):
        jagged_flash_attention(q, q, q, off, max_seq_len=-1)
    with pytest.raises(TypeError, match="max_seq_len"):
        jagged_flash_attention(q, q, q, off, max_seq_len=1.9)
    qj = JaggedArray(q, off)
    with pytest.raises(TypeError, match="offsets"):
        jagged_flash_attention(qj, qj, qj, off)
    with pytest.raises(ValueError, match="offsets of k"):
        jagged_flash_attention(qj, qj, JaggedArray(q, [0, 1, 4]))
    # errors in kv_offsets name it (JaggedArray's own messages say "offsets")
    with pytest.raises(ValueError, match=r"^kv_offsets \(of k\): .*non-decreasing"):
        jagged_flash_attention(q, q, q, off, kv_offsets=np.array([0, 3, 2, 4]))
    with pytest.raises(TypeError, match=r"^kv_offsets \(of k\): .*int32 or int64"):
        jagged_flash_attention(q, q, q, off, kv_offsets=np.array([0.0, 4.0]))
    with pytest.raises(TypeError, match="scale"):
        jagged_flash_attention(q, q, q, off, scale="a")
    with pytest.raises(ValueError, match="scale must be finite"):
        jagged_flash_attention(q, q, q, off, scale=float("inf"))
    with pytest.raises(ValueError, match="scale must be at most"):
        jagged_flash_attention(q, q, q, off, scale=-1e39)
    # a foreign array (a torch tensor, say) is named, with the way to pass it
    tensor = type("Tensor", (), {"__module__": "torch", "dtype": q.dtype, "ndim": 3,
                                 "shape": q.shape})()
    for args in ((tensor, q, q, off), (q, tensor, q, off), (q, q, tensor, off)):
        with pytest.raises(TypeError, match=r"must be a JaggedArray or a NumPy/CuPy array .*got "
                                            r"torch.Tensor; .*from_dlpack"):
            jagged_flash_attention(*args)
    with pytest.raises(TypeError, match=r"^offsets \(of q\): offsets must be a NumPy/CuPy array"):
        jagged_flash_attention(q, q, q, tensor)
    with pytest.raises(TypeError, match="bias must be an array"):
        jagged_flash_attention(q, q, q, off, bias=tensor)


def test_huge_max_seq_len_means_no_truncation():
    import sys

    rng = np.random.default_rng(0)
    q = rng.standard_normal((7, 2, 32)).astype(np.float32)
    off = [0, 3, 3, 7]
    np.testing.assert_array_equal(jagged_flash_attention(q, q, q, off, max_seq_len=sys.maxsize),
                                  jagged_flash_attention(q, q, q, off))


def test_empty_batch_and_empty_rows():
    q = np.zeros((0, 1, 64), np.float32)
    o, lse = jagged_flash_attention(q, q, q, [0, 0, 0], return_lse=True)
    assert o.shape == (0, 1, 64) and lse.shape == (0, 1)


# ---- the given forward output, bias and row-count checks, GQA heads, causal cross rows -------
def test_backward_uses_the_given_out():
    """``dS = P (dP - sum_d dO * out)`` takes the ``out`` given to the backward (the GPU's
    rounded one, say) on the reference path too: with out = 0, dq and dk come from P dP alone
    (a float64 NumPy check), while dv = Pᵀ dO does not depend on it."""
    from cujagged import jagged_flash_attention_backward

    rng = np.random.default_rng(3)
    L, D, scale = 5, 32, 0.3
    q, k, v, g = (rng.standard_normal((L, 1, D)) for _ in range(4))
    s = scale * q[:, 0] @ k[:, 0].T
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ds = p * (g[:, 0] @ v[:, 0].T)  # dS with sum_d dO * out = 0
    _, lse = jagged_flash_attention(q, k, v, [0, L], scale=scale, return_lse=True)
    dq, dk, dv = jagged_flash_attention_backward(g, q, k, v, [0, L], scale=scale,
                                                 out=np.zeros_like(q), lse=lse)
    np.testing.assert_allclose(dq[:, 0], scale * ds @ k[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dk[:, 0], scale * ds.T @ q[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dv[:, 0], p.T @ g[:, 0], rtol=1e-10, atol=1e-12)


def test_bias_needs_only_the_truncated_lengths():
    """With ``max_seq_len``, a bias [B, H, Mq, Mk] of Mq = Mk = max_seq_len suffices (rows are
    longer) and is used as given; one short in the key dimension is refused."""
    rng = np.random.default_rng(4)
    lens, msl = [5, 3], 2
    q, k, v = (rng.standard_normal((8, 1, 32)) for _ in range(3))
    bias = rng.standard_normal((2, 1, msl, msl))
    off = make_offsets(lens)
    o = jagged_flash_attention(q, k, v, off, max_seq_len=msl, bias=bias, causal=True)
    ref, _ = naive_attention(q, k, v, lens, lens, msl, 1 / math.sqrt(32), True, bias)
    np.testing.assert_allclose(o, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"bias must be \[B=2, H=1 or 1, Mq>=5, Mk>=5\]"):
        jagged_flash_attention(q, k, v, off, bias=np.zeros((2, 1, 5, 4)))
    with pytest.raises(ValueError, match=r"Mk>=2\], got shape \(2, 1, 2, 1\)"):
        jagged_flash_attention(q, k, v, off, max_seq_len=msl, bias=np.zeros((2, 1, 2, 1)))


def test_cross_attention_row_counts_must_match():
    """kv_offsets with another number of rows than q's offsets is a ValueError, not rows of one
    paired with rows of the other."""
    q = np.zeros((4, 1, 32))
    for kv_off in ([0, 2, 4], [0, 4, 4]):
        with pytest.raises(ValueError, match=r"q has 1 rows but k/v have 2"):
            jagged_flash_attention(q, q, q, [0, 4], kv_offsets=kv_off)


def test_grouped_query_heads_use_their_groups_key_head():
    """GQA: with H = 4 query heads over Hk = 2 key/value heads, query head h reads key head
    h // 2 (heads 0, 1 -> 0; 2, 3 -> 1), as the float64 NumPy loop does."""
    rng = np.random.default_rng(6)
    lens = [4, 0, 6]
    q = rng.standard_normal((10, 4, 32))
    k, v = (rng.standard_normal((10, 2, 32)) for _ in range(2))
    for causal in (False, True):
        o = jagged_flash_attention(q, k, v, make_offsets(lens), causal=causal)
        ref, _ = naive_attention(q, k, v, lens, lens, None, 1 / math.sqrt(32), causal, None)
        np.testing.assert_allclose(o, ref, rtol=1e-10, atol=1e-12)


def test_causal_cross_attention_aligns_the_truncated_rows():
    """Causal cross-attention with ``max_seq_len``: the mask is end-aligned on the truncated
    lengths (query i sees key j when j <= i + min(Lk, msl) - min(Lq, msl))."""
    rng = np.random.default_rng(7)
    lq, lk, msl = [3, 5], [6, 2], 4
    q = rng.standard_normal((8, 1, 32))
    k, v = (rng.standard_normal((8, 1, 32)) for _ in range(2))
    o = jagged_flash_attention(q, k, v, make_offsets(lq), kv_offsets=make_offsets(lk),
                               max_seq_len=msl, causal=True)
    ref, _ = naive_attention(q, k, v, lq, lk, msl, 1 / math.sqrt(32), True, None)
    np.testing.assert_allclose(o, ref, rtol=1e-10, atol=1e-12)


# ---- GPU: kernels vs the Numba twin ------------------------------------------------------------
GPU_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2, bfloat16: 1e-2}
TF32_TOL = 4e-3  # 10-bit mantissa: unit roundoff 2**-11, Q, K, V and P each rounded once


def check_gpu(p, **kw):
    """Run p on the GPU and compare with the float64 Numba twin; returns (out, lse)."""
    import cupy

    q, k, v, bias = make_inputs(p)
    out, lse = call(p, q, k, v, bias, xp=cupy, **kw)
    out, lse = cupy.asnumpy(out), cupy.asnumpy(lse)
    ref, ref_lse = call(p, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                        None if bias is None else bias.astype(np.float64))
    tol = TF32_TOL if kw.get("allow_tf32") else GPU_TOL[p["dtype"]]
    assert not np.isnan(out.astype(np.float32)).any(), "NaN in O"
    assert not np.isnan(lse).any(), "NaN in lse"
    assert rel_error(out, ref) <= tol, (rel_error(out, ref), p)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)), p
    fin = np.isfinite(ref_lse)
    if kw.get("allow_tf32"):
        # TF32 rounds Q and K (2**-11 each): a score is off by up to ~2**-10 · scale · Σ|q||k|
        # and the LSE, a smooth max of scores, by as much. That error is absolute (an LSE near 0
        # keeps it), bounded by the LSE of |q|, |k| without bias.
        _, mag = call(p, *(np.abs(a).astype(np.float64) for a in (q, k)), v.astype(np.float64),
                      None)
        bound = tol * mag[fin] + 1e-5 * (1 + np.abs(ref_lse[fin]))
        assert np.all(np.abs(lse[fin] - ref_lse[fin]) <= bound), p
    else:
        assert rel_error(lse[fin], ref_lse[fin]) <= max(tol / 10, 1e-5), p
    assert np.all(out[~fin] == 0)
    return out, lse


@pytest.mark.gpu
@given(problems(max_len=80, dtypes=(np.float16, bfloat16, np.float32), dims=HEAD_DIMS))
def test_gpu_matches_numba(p):
    check_gpu(p)


@pytest.mark.gpu
@given(problems(max_len=80, dtypes=(np.float32,), dims=HEAD_DIMS))
def test_gpu_tf32_matches_numba(p):
    check_gpu(p, allow_tf32=True)


@pytest.mark.gpu
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_gpu_tf32_is_opt_in(D):
    """allow_tf32 switches kernels: TF32 rounding changes the bits, the default stays exact."""
    lq = [0, 37, 200, 1, 64]
    p = dict(lq=lq, lk=lq, cross=False, H=2, Hk=2, D=D, dtype=np.dtype(np.float32),
             causal=False, msl=None, scale=None, bias=False, bias_heads=1, off_dtype=np.int64,
             seed=D)
    exact, _ = check_gpu(p)
    tf32, _ = check_gpu(p, allow_tf32=True)
    assert not np.array_equal(exact, tf32)
    assert rel_error(tf32, exact) > 1e-6


@pytest.mark.gpu
@given(problems(max_len=150, dtypes=(np.float16, bfloat16), dims=(64, 128)))
def test_gpu_tile128_matches_numba(p):
    if p["bias"]:
        p["bias"] = False
    check_gpu(p, _bm=128)


@pytest.mark.gpu
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [bfloat16, np.float16, np.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_long_rows(D, dtype, causal):
    lq = [0, 1, 700, 64, 129, 333, 1000, 5]
    p = dict(lq=lq, lk=lq, cross=False, H=2, Hk=1, D=D, dtype=np.dtype(dtype), causal=causal,
             msl=900, scale=None, bias=False, bias_heads=1, off_dtype=np.int32, seed=D)
    check_gpu(p)
    if dtype == np.float32:
        check_gpu(p, allow_tf32=True)


def _work_class(w):
    """cuda_src/jfa_tiles.cu's work_class: 0, else 1 + 4 floor(log2 w) + the next two bits."""
    if w <= 0:
        return 0
    lg = int(w).bit_length() - 1
    frac = (w >> (lg - 2)) & 3 if lg >= 2 else (w << (2 - lg)) & 3
    return 1 + 4 * lg + frac


@pytest.mark.gpu
@pytest.mark.parametrize("plan", [True, False])
@pytest.mark.parametrize("case", ["empty", "one", "mixed", "many", "long"])
def test_gpu_tile_list_covers_every_tile_once_in_work_order(plan, case, monkeypatch):
    """The tile list (the one-block plan kernel, and the argsort path past _PLAN_MAX_B rows):
    every query tile of every row has exactly one record with the row's starts and lengths,
    records past the count are untouched (poisoned), tile_off counts each row's tiles in list
    order, and rows come in descending work (the plan: by work class, row order within one)."""
    import cupy

    from cujagged import attention as A

    rng = np.random.default_rng(len(case) + plan)
    lq = {"empty": [], "one": [1], "mixed": [0, 3, 64, 65, 0, 700, 1, 128, 200],
          "many": list(rng.integers(0, 40, 3000)), "long": [0, 5000, 17, 129]}[case]
    lk = [n if i % 3 else n // 2 + (i % 5) for i, n in enumerate(lq)]
    if not plan:
        monkeypatch.setattr(A, "_PLAN_MAX_B", -1)
    B = len(lq)
    for bm, msl, qd, kd in ((64, A._NO_LIMIT, np.int32, np.int64), (16, 50, np.int64, np.int32)):
        qo, ko = make_offsets(lq).astype(qd), make_offsets(lk).astype(kd)
        nt = [(n + bm - 1) // bm for n in lq]
        bound = (int(qo[-1]) + bm - 1) // bm + B
        real_empty = cupy.empty
        poisoned = lambda shape, dtype: cupy.full(shape, -7, dtype)  # noqa: E731
        monkeypatch.setattr(cupy, "empty", poisoned)
        try:
            info, off = A._tile_list(cupy, cupy.asarray(qo), cupy.asarray(ko), bm, msl, None,
                                     bound)
        finally:
            monkeypatch.setattr(cupy, "empty", real_empty)
        info, off = cupy.asnumpy(info), cupy.asnumpy(off)
        total = sum(nt)
        assert off[0] == 0 and off[-1] == total and (np.diff(off) >= 0).all()
        assert (info[total:] == -7).all()
        starts = info[:total, :4].copy().view(np.int64)  # (q start, k start) a record
        seen = {}
        order = []
        for t in range(total):
            lqr, lkr, tq, row = info[t, 4:]
            assert (starts[t, 0], starts[t, 1]) == (qo[row], ko[row])
            assert (lqr, lkr) == (lq[row], lk[row])
            seen.setdefault(row, set()).add(int(tq))
            if not order or order[-1] != row:
                order.append(int(row))
        assert seen == {r: set(range(n)) for r, n in enumerate(nt) if n}
        assert len(order) == len(seen)  # a row's tiles are contiguous
        pos = np.searchsorted(off, np.arange(total), side="right") - 1
        assert [int(info[off[p], 7]) for p in sorted(set(pos))] == order
        work = [nt[r] * (min(lk[r], msl) + 1) for r in order]
        if plan:
            key = [(-_work_class(w), r) for w, r in zip(work, order)]
            assert key == sorted(key)
        else:
            assert work == sorted(work, reverse=True)


@pytest.mark.gpu
def test_gpu_jagged_input_caches_tile_list():
    import cupy

    lq = [5, 0, 130, 77]
    rng = np.random.default_rng(3)
    x = cupy.asarray(rng.standard_normal((sum(lq), 1, 128)).astype(bfloat16))
    qj = JaggedArray(x, lengths=cupy.asarray(np.array(lq)))
    o1 = jagged_flash_attention(qj, qj, qj, causal=True)
    assert any(isinstance(key, tuple) and key[0] == "jfa_tiles" for key in qj._cache)
    o2 = jagged_flash_attention(qj, qj, qj, causal=True)
    assert isinstance(o1, JaggedArray)
    assert cupy.array_equal(o1.values, o2.values)
    assert any(isinstance(key, tuple) and key[0] == "jfa_plan" for key in qj._cache)
    # cached launch plans are per option set
    o3, lse3 = jagged_flash_attention(qj, qj, qj, return_lse=True)
    o4, lse4 = jagged_flash_attention(qj, qj, qj, return_lse=True)
    assert cupy.array_equal(o3.values, o4.values) and cupy.array_equal(lse3, lse4)
    assert not cupy.array_equal(o1.values, o3.values)
    cpu = jagged_flash_attention(JaggedArray(cupy.asnumpy(x), lengths=lq),
                                 cupy.asnumpy(x), cupy.asnumpy(x), causal=True)
    assert rel_error(cupy.asnumpy(o1.values), cpu.values) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [None, 0.125])
def test_gpu_cached_plan_still_checks_v(scale):
    """A cached launch plan (also with the default scale, whose key is the caller's None) is
    taken only for v of the structure it was checked with: another v is checked again."""
    import cupy

    rng = np.random.default_rng(4)
    x = cupy.asarray(rng.standard_normal((8, 1, 64)).astype(bfloat16))
    kx = x[:6]
    q, k = JaggedArray(x, [0, 3, 8]), JaggedArray(kx, [0, 2, 6])
    v1, v2 = JaggedArray(kx, [0, 2, 6]), JaggedArray(kx, [0, 4, 6])
    o1 = jagged_flash_attention(q, k, v1, scale=scale)
    assert any(isinstance(key, tuple) and key[0] == "jfa_plan" for key in q._cache)
    o2 = jagged_flash_attention(q, k, v1, scale=scale)  # v1's offsets differ from k's by identity
    assert cupy.array_equal(o1.values, o2.values)
    with pytest.raises(ValueError, match="offsets of k"):
        jagged_flash_attention(q, k, v2, scale=scale)


@pytest.mark.gpu
def test_gpu_scale_as_0d_array_skips_the_plan_cache():
    """A 0-d array scale is valid but unhashable: the call runs (uncached), twice, equal to the
    float scale's."""
    import cupy

    rng = np.random.default_rng(6)
    x = cupy.asarray(rng.standard_normal((8, 1, 64)).astype(bfloat16))
    q = JaggedArray(x, [0, 3, 8])
    ref = jagged_flash_attention(q, q, q, scale=0.125).values
    for sc in (np.array(0.125), cupy.array(0.125), np.array(0.125)):
        assert cupy.array_equal(jagged_flash_attention(q, q, q, scale=sc).values, ref)


def test_exported():
    assert cujagged.jagged_flash_attention is jagged_flash_attention


def check_growing_scores(D, dtype, causal, **kw):
    """Later key tiles raise the running max far above the first ones (the rescaling path):
    the GPU kernel chosen by ``kw`` (``_bm``, ``_impl``) against the float64 Numba twin."""
    import cupy

    lq = [300, 0, 77, 520, 1]
    rng = np.random.default_rng(D)
    T = sum(lq)
    q = np.abs(rng.standard_normal((T, 1, D))).astype(np.float32)
    k = np.abs(rng.standard_normal((T, 1, D))).astype(np.float32)
    pos = np.concatenate([np.arange(n) for n in lq]).astype(np.float32)
    k *= (1 + pos / 20)[:, None, None] / math.sqrt(D)
    v = rng.standard_normal((T, 1, D)).astype(np.float32)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    off = make_offsets(lq)
    o, lse = jagged_flash_attention(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v),
                                    cupy.asarray(off), causal=causal, return_lse=True, **kw)
    ref, ref_lse = jagged_flash_attention(q.astype(np.float64), k.astype(np.float64),
                                          v.astype(np.float64), off, causal=causal,
                                          return_lse=True)
    assert rel_error(cupy.asnumpy(o), ref) <= 1e-2
    lse = cupy.asnumpy(lse)
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin)
    assert rel_error(lse[fin], ref_lse[fin]) <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("dtype", [bfloat16, np.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bm", [None, 64, 128])
def test_gpu_scores_growing_along_the_row(D, dtype, causal, bm):
    if bm == 128 and D == 256:
        pytest.skip("no 128-row tile for D=256")
    check_growing_scores(D, dtype, causal, _bm=bm)


# ---- backward (Numba, float64) -------------------------------------------------------------
@settings(max_examples=25)
@given(problems(max_len=12))
def test_backward_is_the_directional_derivative(p):
    """<grad, O(x + e d) - O(x - e d)> / (2 e) = <dx, d> for x in q, k, v, bias (float64)."""
    from cujagged import jagged_flash_attention_backward

    q, k, v, bias = make_inputs(p)
    rng = np.random.default_rng(p["seed"] + 1)
    g = rng.standard_normal(q.shape)
    qo, ko = make_offsets(p["lq"], p["off_dtype"]), make_offsets(p["lk"], p["off_dtype"])
    kw = dict(max_seq_len=p["msl"], scale=p["scale"], causal=p["causal"])
    if p["cross"]:
        kw["kv_offsets"] = ko

    def loss(q, k, v, bias):
        return float(np.sum(jagged_flash_attention(q, k, v, qo, bias=bias, **kw) * g))

    grads = jagged_flash_attention_backward(g, q, k, v, qo, bias=bias, **kw)
    assert len(grads) == (4 if bias is not None else 3)
    args = [q, k, v, bias]
    e = 1e-6
    for n, dx in enumerate(grads):
        assert dx.shape == args[n].shape and dx.dtype == args[n].dtype
        d = rng.standard_normal(args[n].shape)
        plus, minus = list(args), list(args)
        plus[n], minus[n] = args[n] + e * d, args[n] - e * d
        fd = (loss(*plus) - loss(*minus)) / (2 * e)
        assert np.isclose(float(np.sum(dx * d)), fd, rtol=1e-6, atol=1e-7), (n, p)


def test_backward_layouts_and_errors():
    from cujagged import jagged_flash_attention_backward

    rng = np.random.default_rng(0)
    off = make_offsets([3, 0, 5])
    q = JaggedArray(rng.standard_normal((8, 2, 32)).astype(bfloat16), off)
    g = q._with_values(rng.standard_normal((8, 2, 32)).astype(bfloat16))
    dq, dk, dv = jagged_flash_attention_backward(g, q, q, q)
    assert all(isinstance(a, JaggedArray) and a.same_structure(q) and a.dtype == bfloat16
               for a in (dq, dk, dv))
    with pytest.raises(ValueError, match="grad must be like q"):
        jagged_flash_attention_backward(np.zeros((8, 2, 16)), q, q, q)
    with pytest.raises(ValueError, match="structure"):
        jagged_flash_attention_backward(JaggedArray(g.values, make_offsets([4, 0, 4])), q, q, q)
    with pytest.raises(TypeError, match="grad must be"):
        jagged_flash_attention_backward([1.0], q, q, q)
    with pytest.raises(TypeError, match="dtype of q"):
        jagged_flash_attention_backward(g.values.astype(np.float32), q, q, q)
    # the forward's own out / lse change nothing on the reference path
    q64, g64 = q._with_values(q.values.astype(np.float64)), g.values.astype(np.float64)
    o, lse = jagged_flash_attention(q64, q64, q64, return_lse=True)
    for a, b in zip(jagged_flash_attention_backward(g64, q64, q64, q64, out=o, lse=lse),
                    jagged_flash_attention_backward(g64, q64, q64, q64)):
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="together"):
        jagged_flash_attention_backward(g64, q64, q64, q64, out=o)
    with pytest.raises(ValueError, match="lse must be"):
        jagged_flash_attention_backward(g64, q64, q64, q64, out=o, lse=lse[:, :1])
    with pytest.raises(TypeError, match="lse must be"):
        jagged_flash_attention_backward(g64, q64, q64, q64, out=o, lse=lse.astype(np.float64))
    with pytest.raises(TypeError, match="out must be"):
        jagged_flash_attention_backward(g64, q64, q64, q64, out=o.values.astype(np.float32),
                                        lse=lse)
    with pytest.raises(TypeError, match="out must be"):
        jagged_flash_attention_backward(g64, q64, q64, q64, out=[0.0], lse=lse)
    with pytest.raises(ValueError, match="out must have the structure"):
        jagged_flash_attention_backward(g64, q64, q64, q64, lse=lse,
                                        out=JaggedArray(o.values, make_offsets([4, 0, 4])))


def test_bias_is_rounded_to_the_dtype_of_q():
    """The CPU backend adds the bias as the GPU does: rounded to q's dtype first (a float32
    -1e5 is -inf in float16: every key masked, O = 0 and lse = -inf), then in float64."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 1, 32)).astype(np.float16)
    o, lse = jagged_flash_attention(q, q, q, [0, 3], bias=np.full((1, 1, 3, 3), -1e5, np.float32),
                                    return_lse=True)
    assert (o == 0).all() and np.isneginf(lse).all()
    b = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    o1 = jagged_flash_attention(q, q, q, [0, 3], bias=b)
    o2 = jagged_flash_attention(q, q, q, [0, 3], bias=b.astype(np.float16))
    np.testing.assert_array_equal(o1, o2)
    with pytest.raises(ValueError, match="at least one head"):
        jagged_flash_attention(q[:, :0], q[:, :0], q[:, :0], [0, 3])


def check_gpu_backward(p, tol=None, bias=None):
    """The CUDA backward against the float64 Numba reference, both given the GPU forward's
    output and LSE: dq, dk, dv (and dbias with ``p["bias"]``, or the given ``bias``) norm-wise,
    no NaN; returns the relative errors.

    (Both take ``Σ_d dO·O`` from the same rounded O: against a reference with the exact O,
    dq's error grows without bound where ``dP − Σ dO·O`` cancels, e.g. one query whose softmax
    is nearly one-hot — the algorithm's sensitivity, which FlashAttention shares. Even given the
    same O, the kernel's fp32 dP carries rounding of the size of its terms, so where dS cancels
    to almost nothing, e.g. a row of one query and one key (P = 1, dS = dO·V − dO·O = 0 up to
    rounding), dq and dk are rounding noise: float32 errors are judged against an RMS of at
    least 0.1 a gradient element, the scale of the unit-normal inputs' gradients, less what the
    reference itself moves by under a float32 ulp of O. The 16-bit tolerance covers it.)"""
    import cupy

    from cujagged import jagged_flash_attention_backward

    q, k, v, drawn = make_inputs(p)
    bias = drawn if bias is None else bias
    g = np.random.default_rng(p["seed"] + 1).standard_normal(q.shape).astype(np.float32)
    g = g.astype(p["dtype"])
    qo, ko = make_offsets(p["lq"], p["off_dtype"]), make_offsets(p["lk"], p["off_dtype"])
    kw = dict(max_seq_len=p["msl"], scale=p["scale"], causal=p["causal"])
    dev = [cupy.asarray(a) for a in (g, q, k, v, qo)]
    kv = {"kv_offsets": cupy.asarray(ko)} if p["cross"] else {}
    db = {} if bias is None else {"bias": cupy.asarray(bias)}
    o, lse = jagged_flash_attention(*dev[1:], **kw, **kv, **db, return_lse=True)
    got = jagged_flash_attention_backward(*dev, **kw, **kv, **db, out=o, lse=lse)
    def reference(out):  # float64, given the GPU forward's output (perturbed) and LSE
        return jagged_flash_attention_backward(
            *(a.astype(np.float64) for a in (g, q, k, v)), qo, **kw,
            **({"kv_offsets": ko} if p["cross"] else {}),
            **({} if bias is None else {"bias": bias.astype(np.float64)}), out=out,
            lse=cupy.asnumpy(lse))

    o64 = cupy.asnumpy(o).astype(np.float64)
    ref = reference(o64)
    assert len(got) == len(ref) == (3 if bias is None else 4)
    if bias is not None:
        assert got[3].shape == bias.shape and got[3].dtype == bias.dtype
    # float32: where dS = P (dO·V − dO·O) cancels (one key shared by its queries: P = 1, O = V)
    # the reference is ~0 and the kernel's dq, dk are the rounding of its two float32 sums of D
    # products; dk adds that up over every query of the key. So the part of the error the
    # reference itself moves by under a float32 ulp of O (times 4 √D: the sums' rounding) is
    # not counted. On ordinary rows that part is 1-2% of the tolerance (rows of 80, 40, 3
    # keys, D 32 to 256); a row of one key and 200 queries gave dk 4.3e-5 against 2e-5
    # without it (H200), and it allows 9.7× the tolerance there.
    # The floor of 0.1 an element counts every element of dq, dk, dv (an exact float64
    # cancellation leaves them 0) and only dbias's visible pairs (not its zero padding).
    noise = [0.0] * len(ref)
    if p["dtype"] == np.float32:
        ulp = np.random.default_rng(p["seed"] + 2).choice([-1.0, 1.0], o64.shape) * 2.0**-24
        noise = [4 * np.sqrt(p["D"]) * np.linalg.norm(r2 - r)
                 for r, r2 in zip(ref, reference(o64 * (1 + ulp)))]
    # the float32 tolerance grows with D; dbias is returned in the bias's dtype, so a 16-bit
    # bias's rounding counts for it
    tol = tol or GPU_TOL[p["dtype"]] * (p["D"] / 16 if p["dtype"] == np.float32 else 1)
    errs = []
    for name, a, r, e in zip(("dq", "dk", "dv", "dbias"), got, ref, noise):
        a = cupy.asnumpy(a).astype(np.float64)
        assert a.shape == r.shape and not np.isnan(a).any(), (name, p)
        n = np.count_nonzero(r) if name == "dbias" else r.size
        errs.append(rel_error(a, r) if p["dtype"] != np.float32 or r.size == 0 else
                    float(max(0.0, np.linalg.norm(a - r) - e)
                          / max(np.linalg.norm(r), 0.1 * np.sqrt(max(1, n)))))
        limit = max(tol, GPU_TOL.get(np.dtype(got[3].dtype), 0)) if name == "dbias" else tol
        assert errs[-1] <= limit, (name, errs[-1], p)
    return errs

BWD_KERNELS = ("mma", "sm90", "sm90_bk128")


@contextlib.contextmanager
def backward_kernel(kernel):
    """The CUDA backward with one kernel: "mma" (mma.sync), "sm90" (Hopper wgmma where the device
    has it, D 64 / 128, by its own choice of key block), "sm90_bk128" (wgmma, 128-key blocks for
    every D = 128 call)."""
    from cujagged import attention as A

    saved = A._BWD_SM90, A._BWD90_LONG
    A._BWD_SM90 = kernel != "mma"
    if kernel == "sm90_bk128":
        A._BWD90_LONG = 0
    try:
        yield
    finally:
        A._BWD_SM90, A._BWD90_LONG = saved


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", BWD_KERNELS)
@given(problems(max_len=80, dtypes=(np.float16, bfloat16), dims=(32, 64, 96, 128)))
def test_gpu_backward_matches_numba(kernel, p):
    """Every option (cross, causal, truncation, GQA, bias of every head or of one, empty rows,
    rows of 1), outputs poisoned by the test allocator (dk, dv: every row is written; dq, dbias:
    from zeroed buffers); every kernel."""
    with backward_kernel(kernel):
        check_gpu_backward(p)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", BWD_KERNELS)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_long_rows(D, causal, kernel):
    """Rows of 700 / 1,100 keys (many key tiles and query steps), GQA and cross-attention."""
    for cross in (False, True):
        p = dict(lq=[700, 0, 1, 1100], lk=[300, 5, 0, 1000] if cross else [700, 0, 1, 1100],
                 cross=cross, H=4, Hk=2, D=D, dtype=np.dtype(np.float16), causal=causal,
                 msl=None if cross else 1000, scale=None, bias=False, bias_heads="H",
                 off_dtype=np.int64, seed=3)
        with backward_kernel(kernel):
            check_gpu_backward(p)


@pytest.mark.gpu
@pytest.mark.parametrize("with_bias", [False, True])
def test_gpu_backward_without_out_runs_the_forward(with_bias):
    """Without out / lse the backward runs the forward itself, with the same bias: the float64
    reference given that forward's output agrees (a forward without the bias would give other
    P and delta, so dq, dk and dbias would be off by O(1))."""
    import cupy

    from cujagged import jagged_flash_attention_backward

    rng = np.random.default_rng(5)
    off = make_offsets([70, 0, 1, 130])
    q, k, v, g = (JaggedArray(cupy.asarray(rng.standard_normal((201, 2, 64), dtype=np.float32))
                              .astype(bfloat16), cupy.asarray(off)) for _ in range(4))
    bias = (3 * rng.standard_normal((4, 2, 130, 130))).astype(bfloat16) if with_bias else None
    kw = {"causal": True, "bias": None if bias is None else cupy.asarray(bias)}
    o, lse = jagged_flash_attention(q, k, v, **kw, return_lse=True)
    got = jagged_flash_attention_backward(g, q, k, v, **kw)

    def host(a):
        return cupy.asnumpy(getattr(a, "values", a)).astype(np.float64)

    ref = jagged_flash_attention_backward(
        *(JaggedArray(host(a), off) for a in (g, q, k, v)), causal=True,
        bias=None if bias is None else bias.astype(np.float64), out=host(o),
        lse=cupy.asnumpy(lse))
    assert len(got) == len(ref) == (3 if bias is None else 4)
    for a, r in zip(got, ref):
        assert rel_error(host(a), host(r)) <= GPU_TOL[bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", BWD_KERNELS)
@pytest.mark.parametrize("heads, bias_dtype", [("H", bfloat16), ("H", np.float32),
                                               (1, np.float32)])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_backward_bias_long_rows(D, heads, bias_dtype, kernel):
    """A bias on rows of 700 / 1,100 keys (many key tiles and query steps), GQA, causal, with
    -inf entries: a few keys, and every key of query 0 of row 0 (its log-sum-exp is -inf: P, dS
    and all its gradients 0, never NaN). Every way to dbias: a bias per head in bf16 or float32
    (one writer an element: stored) and a float32 bias of one head (added up in float32)."""
    p = dict(lq=[700, 0, 1, 1100], lk=[700, 0, 1, 1100], cross=False, H=4, Hk=2, D=D,
             dtype=np.dtype(bfloat16), causal=True, msl=1000, scale=None, bias=False,
             bias_heads=heads, off_dtype=np.int32, seed=4)
    rng = np.random.default_rng(7)
    bias = rng.standard_normal((4, 4 if heads == "H" else 1, 1000, 1003)).astype(np.float32)
    bias[:, :, rng.integers(0, 1000, 50), rng.integers(0, 1000, 50)] = -np.inf
    bias[0, :, 0, :] = -np.inf
    bias = bias.astype(bfloat16).astype(bias_dtype)  # what the kernels add: q's dtype
    with backward_kernel(kernel):
        check_gpu_backward(p, bias=bias)


@pytest.mark.gpu
@pytest.mark.parametrize("dt", [bfloat16, np.float16])
def test_gpu_backward_cast_rounds_every_element(dt):
    """The backward's float32 -> 16-bit cast (dq, and dbias of a shared or float32 bias): 8
    elements a thread plus a tail one at a time, so sizes around multiples of 8, each element
    rounded to nearest even as NumPy does (specials included), nothing past the end written."""
    import cupy

    from cujagged.attention import _cast_f32

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 2053):
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32)
        x[: n // 3] = rng.choice(np.array([np.inf, -np.inf, 0.0, -0.0, 1e30, 1e-40], np.float32),
                                 n // 3)
        out = cupy.asnumpy(_cast_f32(cupy.asarray(x), dt))
        assert out.dtype == np.dtype(dt) and out.shape == (n,)
        with np.errstate(over="ignore"):  # (float16: past 65504 is inf, as on the GPU)
            ref = x.astype(dt)
        np.testing.assert_array_equal(out.view(np.uint16), ref.view(np.uint16))


@pytest.mark.gpu
@given(problems(max_len=80, dtypes=(np.float32,), dims=(32, 64, 96, 128))
       | problems(max_len=80, dtypes=(np.float32, np.float16, bfloat16), dims=(256,)))
def test_gpu_backward_ffma_matches_numba(p):
    """The FFMA backward (float32 at every head dim, and head dim 256 at every dtype): every
    option, bias included, against the float64 reference."""
    check_gpu_backward(p)


@pytest.mark.gpu
@pytest.mark.parametrize("D, dt, bias_dt", [(64, np.float32, np.float32),
                                            (128, np.float32, bfloat16),
                                            (96, np.float32, np.float64),
                                            (256, bfloat16, bfloat16),
                                            (256, bfloat16, np.float32)])
def test_gpu_backward_ffma_long_rows(D, dt, bias_dt):
    """The FFMA backward on rows of 700 / 1,100 keys (many key tiles and query steps), GQA,
    causal, truncation, a bias per head with -inf entries: in q's dtype (dbias stored in it)
    and in another (dbias stored in float32, then cast to the bias's dtype)."""
    p = dict(lq=[700, 0, 1, 1100], lk=[700, 0, 1, 1100], cross=False, H=4, Hk=2, D=D,
             dtype=np.dtype(dt), causal=True, msl=1000, scale=None, bias=False,
             bias_heads="H", off_dtype=np.int64, seed=6)
    rng = np.random.default_rng(8)
    bias = rng.standard_normal((4, 4, 1000, 1001)).astype(np.float32)
    bias[:, :, rng.integers(0, 1000, 50), rng.integers(0, 1000, 50)] = -np.inf
    check_gpu_backward(p, bias=bias.astype(dt).astype(bias_dt))  # (what the kernels add)


@pytest.mark.parametrize("kw, match", [
    (dict(causal="no"), "causal must be True or False"),
    (dict(causal=2), "causal must be True or False"),
    (dict(causal=np.float64(1)), "causal must be True or False"),
    (dict(max_seq_len=True), "max_seq_len must be an integer"),
    (dict(scale=True), "scale must be a real number"),
    (dict(bias=np.zeros((2, 1, 4, 4), np.int64)), "bias must have a floating dtype"),
])
def test_option_types_are_checked(kw, match):
    from cujagged import jagged_flash_attention_backward

    q = JaggedArray(np.ones((5, 1, 32)), make_offsets([2, 3]))
    with pytest.raises(TypeError, match=match):
        jagged_flash_attention(q, q, q, **kw)
    with pytest.raises(TypeError, match=match):
        jagged_flash_attention_backward(q, q, q, q, **kw)
