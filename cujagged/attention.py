"""Jagged Flash Attention (forward): softmax attention within each row of a jagged batch.

``jagged_flash_attention(q, k, v, offsets)`` computes, for every row ``b`` and head ``h``::

    O_b = softmax(scale * Q_b K_b^T + bias_b + mask) V_b

on the flat jagged layout directly (``q, k, v`` values ``[T, H, D]``): no padding, no ``L x L``
score matrix in global memory. On CuPy arrays it runs the tensor-core kernel of
``cuda_src/attention.cu`` (bf16/fp16; fp32 through an exact FFMA kernel) — on Hopper (sm_90),
bf16/fp16 with head dim 64 or 128, no bias and ``scale > 0``, the ``wgmma`` kernel of
``cuda_src/attention_sm90.cu`` instead (``CUJAGGED_ATTENTION_SM90=0`` at import keeps the
``mma.sync`` one); on NumPy arrays the Numba twin of :mod:`cujagged.cpu.attention` (float64
accumulation).

Moving over from FBGEMM's ``jagged_flash_attention_basic(q, k, v, offsets, max_seq_len)``
(``q, k, v`` ``[ΣL, D]``, one head, no mask): it scores with scale 1 and divides the output by
``max_seq_len``. The same result, for head dims 32, 64, 96, 128 and 256, is::

    o = jagged_flash_attention(q[:, None], k[:, None], v[:, None], offsets,
                               max_seq_len=max_seq_len, scale=1.0)[:, 0] / max_seq_len
"""

from __future__ import annotations

import math
import operator
import os
from types import SimpleNamespace

import numpy as np

from ._backend import bfloat16, device_of, is_array, is_gpu_array, not_array, on_array_device, xp_of
from ._backend import cupy as _cupy
from ._kernels import KernelFamily
from .jagged import JaggedArray

__all__ = ["jagged_flash_attention", "jagged_flash_attention_backward", "HEAD_DIMS"]

HEAD_DIMS = (32, 64, 96, 128, 256)
_BM128_DIMS = (64, 128)  # head dims that also have a 128-query-row tile (long rows, no bias)
_BOOL = {False: "false", True: "true"}
_TNAME = {np.dtype(np.float16): "f16_t", bfloat16: "bf16_t", np.dtype(np.float32): "float"}
_NO_LIMIT = 2**62


def _mma_name(tname: str, d: int, bm: int, has_bias: bool) -> str:
    return f"jfa_fwd_mma<{tname}, {d}, {bm}, {_BOOL[has_bias]}>"


def _f32_name(d: int, has_bias: bool) -> str:
    return f"jfa_fwd_f32<{d}, {_BOOL[has_bias]}>"


def _instantiations():
    names = []
    for t in ("bf16_t", "f16_t", "float"):  # float: TF32 (allow_tf32=True)
        for d in HEAD_DIMS:
            for hb in (False, True):
                names.append(_mma_name(t, d, 64, hb))
            if d in _BM128_DIMS and t != "float":
                names.append(_mma_name(t, d, 128, False))
    for d in HEAD_DIMS:
        for hb in (False, True):
            names.append(_f32_name(d, hb))
    return names


_FAM = KernelFamily("attention.cu", _instantiations())
# the tile lists (cuda_src/jfa_tiles.cu): one launch of one block up to _PLAN_MAX_B rows, else
# CuPy's argsort / cumsum and jfa_tile_info
_ITYPE = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
_TILES = KernelFamily("jfa_tiles.cu", ["jfa_tile_info"] + [
    f"jfa_tile_plan<{a}, {b}>" for a in _ITYPE.values() for b in _ITYPE.values()])
_PLAN_MAX_B = 16384  # (one block: 12 us at 1024 rows, 42 at 8192, 440 at 65536 on an H200)

# Hopper (sm_90a) kernel family: wgmma, bf16/fp16, D in _SM90_DIMS, no bias; 64 query rows per
# warpgroup, 1 or 2 warpgroups per block, BN keys per step, K/V ring of ST stages
# (cuda_src/attention_sm90.cu). _SM90_CFG: head dim -> ((BN, ST) for rows up to _SM90_LONG
# keys, (BN, ST) for longer rows).
_SM90_DIMS = (64, 128)
_SCALE_MAX = 1e38  # |scale| * log2(e) must stay a finite float32
_SM90_CFG = {64: ((64, 2), (64, 2)), 128: ((32, 3), (64, 2))}
_SM90_LONG = 2048
_SM90_DEFAULT = True  # dispatched by default on sm_90 (bf16/fp16, D 64/128, no bias)
# CUJAGGED_ATTENTION_SM90=0 forces the mma.sync kernel on sm_90, =1 the wgmma one (read at import).
_SM90_ENABLED = os.environ.get("CUJAGGED_ATTENTION_SM90", "1" if _SM90_DEFAULT else "0") != "0"


def _sm90_name(tname: str, d: int, nwg: int, bn: int, st: int) -> str:
    return f"jfa_fwd_sm90<{tname}, {d}, {nwg}, {bn}, {st}>"


def _sm90_smem(d: int, nwg: int, bn: int, st: int) -> int:
    """Q tile + st K and st + 1 V tiles (16-bit), plus 1 KiB to align the swizzled panels to
    1024 bytes unless the device's dynamic shared memory starts aligned."""
    return (64 * nwg + (2 * st + 1) * bn) * d * 2 + _sm90_align_slack()


_SLACK: dict = {}


def _sm90_align_slack() -> int:
    """0 when the dynamic shared memory of a kernel without static shared memory starts on a
    1024-byte boundary on the current device (probed once per device), else 1024."""
    dev = _cupy.cuda.runtime.getDevice()
    slack = _SLACK.get(dev)
    if slack is None:
        out = _cupy.full(1, 1, dtype=np.uint32)
        _FAM90.get("jfa_sm90_smem_offset")((1,), (32,), (out,), shared_mem=1024)
        slack = _SLACK[dev] = 0 if int(out.get()[0]) == 0 else 1024
    return slack


_FAM90 = KernelFamily("attention_sm90.cu",
                      ["jfa_sm90_smem_offset"]
                      + [_sm90_name(t, d, w, *c) for t in ("bf16_t", "f16_t")
                         for d in _SM90_DIMS for w in (1, 2) for c in sorted(set(_SM90_CFG[d]))],
                      options=("-default-device",), arch="sm_90a")


# the CUDA backward (attention_bwd.cu): jfa_bwd_mma for bf16 / fp16 with these head dims,
# jfa_bwd_f32 (FFMA) for float32 and head dim 256; each with or without a bias (4 dbias modes)
_BWD_DIMS = (32, 64, 96, 128)
_BWD_F32 = [("float", d) for d in HEAD_DIMS] + [("bf16_t", 256), ("f16_t", 256)]
_FAMB = KernelFamily("attention_bwd.cu",
                     [f"jfa_bwd_mma<{t}, {d}, {b}>" for t in ("bf16_t", "f16_t")
                      for d in _BWD_DIMS for b in range(4)]
                     + [f"jfa_bwd_f32<{t}, {d}, {b}>" for t, d in _BWD_F32 for b in range(4)]
                     + [f"jfa_bwd_prep<{t}, {d}>" for t in ("bf16_t", "f16_t") for d in _BWD_DIMS]
                     + [f"jfa_bwd_prep<{t}, {d}>" for t, d in _BWD_F32]
                     + [f"jfa_bwd_cast<{t}>" for t in ("bf16_t", "f16_t")])


# its Hopper twin (attention_bwd_sm90.cu): wgmma, the same arguments, D 64 / 128; dispatched on
# sm_90 like the forward's wgmma kernel (CUJAGGED_ATTENTION_SM90=0 keeps jfa_bwd_mma). Blocks of
# 64 keys (one warpgroup); D = 128 with keys rows of _BWD90_LONG or more: 128 keys (two).
_BWD90_CFG = ((64, 1), (128, 1), (128, 2))  # (D, warpgroups)
_BWD90_LONG = 2048
_FAMB90 = KernelFamily("attention_bwd_sm90.cu",
                       [f"jfa_bwd_sm90<{t}, {d}, {w}, {b}>" for t in ("bf16_t", "f16_t")
                        for d, w in _BWD90_CFG for b in range(3)],
                       options=("-default-device",), arch="sm_90a")
_BWD_SM90 = _SM90_ENABLED
_BWD90_BQ = 32  # queries a step (JFB90_BQ)


def _bwd90_smem(d: int, nwg: int) -> int:
    """Dynamic shared memory of ``jfa_bwd_sm90`` (Jfb90Smem): K, V, two Q and dO tiles, dS, lse
    and delta, plus the alignment slack of the swizzled panels."""
    bq = _BWD90_BQ
    return ((2 * 64 * nwg + 4 * bq) * d * 2 + nwg * bq * 128 + 4 * bq * 4
            + _sm90_align_slack())


def _bwd_f32_smem(d: int) -> int:
    """Dynamic shared memory of ``jfa_bwd_f32`` (JfbF32 in attention_bwd.cu)."""
    bk, bq, sd = (16 if d > 128 else 32), 16, d + 4
    return (2 * bk * sd + 2 * bq * sd + 2 * bk * (bq + 1) + 2 * bq) * 4


def _bwd_smem(d: int) -> int:
    """Dynamic shared memory of ``jfa_bwd_mma`` (JfbSmem in attention_bwd.cu)."""
    return ((2 * 64 + 4 * 32) * (d + 8) + 64 * 40) * 2 + 4 * 32 * 4


def _grid_stride(n: int, threads: int = 256) -> tuple:
    return (max(1, min((n + threads - 1) // threads, 8192)),)


def _gpu_backward(P, gv, causal, fwd=None, bias_dtype=None):
    """dq, dk, dv (values arrays) and dbias (``bias_dtype``, the shape of ``P.bias``; None without
    a bias) by ``jfa_bwd_mma`` / ``jfa_bwd_sm90`` (bf16 / fp16, head dims 32 to 128) or
    ``jfa_bwd_f32`` (float32, head dim 256). ``fwd``: the forward's (output values, lse), else
    the forward runs here."""
    cp = _cupy

    def aligned(a):  # contiguous, 16-byte aligned (a copy otherwise)
        a = cp.ascontiguousarray(a)
        return a if a.data.ptr % 16 == 0 else a.copy()

    qv, kv, vv, go = (aligned(a) for a in (P.qv, P.kv, P.vv, gv))
    T, H, D = qv.shape
    Tk, Hk = kv.shape[:2]
    B, tn = P.B, _TNAME[P.dt]
    bias = P.bias if P.bias is None else cp.ascontiguousarray(P.bias)  # dbias's layout
    f32 = P.dt == np.float32 or D not in _BWD_DIMS
    sm90 = not f32 and _BWD_SM90 and D in (64, 128) and _FAMB90.supported()
    nwg = 2 if sm90 and D == 128 and min(P.kj.max_length, P.msl) >= _BWD90_LONG else 1
    bk = (16 if D > 128 else 32) if f32 else 64 * nwg  # (JfbF32::BK)
    bound = (Tk + bk - 1) // bk + B
    if bound * Hk >= 2**31 or ((T + 63) // 64 + B) * H >= 2**31:
        raise ValueError("batch too large for one launch (tile count * heads >= 2**31)")
    dk, dv = cp.empty_like(kv), cp.empty_like(vv)
    dq32 = cp.zeros((T, H, D), dtype=np.float32)
    # dbias (BIAS of attention_bwd.cu): where each element has one writer (a bias per head)
    # stored in q's dtype (2) or float32 (3), else added up in float32 by atomics (1); cast
    # to the bias's dtype where that differs
    bias_mode = 0 if bias is None else 1 if bias.shape[1] != H else (
        2 if np.dtype(bias_dtype) == P.dt else 3)
    dbias = None if bias is None else cp.zeros(bias.shape, P.dt if bias_mode == 2 else np.float32)
    if T and Tk and B:
        if fwd is None:
            o, lse = jagged_flash_attention(P.qj._with_values(qv), P.kj._with_values(kv),
                                            P.kj._with_values(vv), max_seq_len=P.msl,
                                            scale=P.scale, causal=causal, bias=P.bias,
                                            return_lse=True)
            fwd = (o.values, lse)
        ov, lse = aligned(fwd[0]), cp.ascontiguousarray(fwd[1])
        delta = cp.empty((T, H), dtype=np.float32)
        lse2 = cp.empty((T, H), dtype=np.float32)
        _FAMB.get(f"jfa_bwd_prep<{tn}, {D}>")(  # (a thread per 16-byte vector at most)
            _grid_stride(T * H * D * ov.itemsize // 16), (256,),
            (ov, go, lse, delta, lse2, np.int64(T * H)))
        info, tile_off = _tile_list(cp, P.kj.offsets, P.qj.offsets, bk, P.msl, P.kj._cache,
                                    bound)
        # the element strides of bias and dbias (sh = 0: one bias head serves every head)
        sb, sh, si = ((s // dbias.itemsize for s in dbias.strides[:3]) if bias is not None
                      else (0, 0, 0))
        args = (qv, kv, vv, go, lse2, delta, dq32, dk, dv, info, tile_off, np.int64(B),
                np.int32(H), np.int32(Hk), np.int64(P.msl),
                np.float32(P.scale * math.log2(math.e)), np.float32(P.scale),
                np.int32(bool(causal)), bias if bias is not None else qv, np.int64(sb),
                np.int64(sh if bias is not None and bias.shape[1] > 1 else 0), np.int64(si),
                dbias if bias is not None else dq32)
        if sm90:  # (no float32 stores of dbias: atomics on the zeroed buffer do the same)
            mode = 1 if bias_mode == 3 else bias_mode
            kern = _FAMB90.get(f"jfa_bwd_sm90<{tn}, {D}, {nwg}, {mode}>")
            smem = _bwd90_smem(D, nwg)
        elif f32:
            kern, smem = _FAMB.get(f"jfa_bwd_f32<{tn}, {D}, {bias_mode}>"), _bwd_f32_smem(D)
        else:
            kern, smem = _FAMB.get(f"jfa_bwd_mma<{tn}, {D}, {bias_mode}>"), _bwd_smem(D)
        kern.allow_shared(smem)
        kern((bound * Hk,), (128 * nwg,), args, shared_mem=smem)
    else:
        dk[...] = 0
        dv[...] = 0
    if bias_mode in (1, 3):
        dbias = _cast_f32(dbias, bias_dtype)
    return _cast_f32(dq32, qv.dtype), dk, dv, dbias


def _cast_f32(a, dtype):
    """A float32 CuPy array as ``dtype`` (16-bit types by the backward's cast kernel, which
    needs ``a`` contiguous and 16-byte aligned: the backward's own fresh buffers)."""
    dtype = np.dtype(dtype)
    if dtype not in _TNAME or dtype == np.float32:
        return a.astype(dtype, copy=False)
    out = _cupy.empty(a.shape, dtype=dtype)
    if a.size:
        _FAMB.get(f"jfa_bwd_cast<{_TNAME[dtype]}>")(_grid_stride(-(-a.size // 8)), (256,),
                                                    (a, out, np.int64(a.size)))
    return out


def _mma_bn(d: int, itemsize: int = 2) -> int:
    """Keys per step of the tensor-core kernel (JfaCfg::BN in attention.cu)."""
    if itemsize == 4 and d == 256:
        return 16
    return 64 if d in (64, 96) else 32


def _mma_threads(d: int, bm: int) -> int:
    """Threads per block (JFA_MT in attention.cu): a warp owns 32 query rows for D = 64..128,
    16 for D = 32 and D = 256."""
    return bm // (32 if 64 <= d <= 128 else 16) * 32


def _mma_stages(d: int) -> int:
    """K/V tiles in the shared-memory ring (JFA_STAGES in attention.cu)."""
    return 2


def _mma_smem(d: int, bm: int, itemsize: int = 2) -> int:
    """Dynamic shared memory: Q tile + a ring of K and V tiles, rows padded by 16 bytes."""
    return (bm + 2 * _mma_stages(d) * _mma_bn(d, itemsize)) * (d * itemsize + 16)


def _f32_smem(d: int) -> int:
    return (16 * d + 32 * (d + 1) + 32 * d) * 4


def _as_jagged(x, offsets, name: str, off_name: str) -> JaggedArray:
    if isinstance(x, JaggedArray):
        if offsets is not None:
            raise TypeError(f"{off_name} must not be given when {name} is a JaggedArray "
                            f"(its own offsets are used)")
        return x
    if not is_array(x):
        raise not_array(name, x, "a JaggedArray or a NumPy/CuPy array [T, H, D]")
    if offsets is None:
        raise TypeError(f"{off_name} is required when {name} is a plain array")
    try:
        return JaggedArray(x, offsets)
    except (TypeError, ValueError) as e:  # name the argument: its messages say "offsets"
        raise type(e)(f"{off_name} (of {name}): {e}") from None


def _tile_list(xp, q_off, k_off, bm: int, msl: int, cache, bound: int):
    """(tile_info int32 [bound, 8], tile_off int32 [B+1]).

    Rows in order of work (query tiles x (keys + 1), most first); ``tile_off`` counts their
    query tiles cumulatively and ``tile_info[t]`` is tile t's record (q start, k start as int64;
    query and key lengths, query tile, row: see ``cuda_src/jfa_tiles.cuh``); ``bound``
    (host-known) >= the tile count. Built on the device without a host sync (one launch up to
    ``_PLAN_MAX_B`` rows); cached in the JaggedArray's ``_cache``."""
    key = ("jfa_tiles", bm, msl, bound)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit[0] is k_off:
            return hit[1]
    B = q_off.shape[0] - 1
    info = xp.empty((bound, 8), dtype=np.int32)
    tile_off = xp.empty(B + 1, dtype=np.int32)
    if B <= _PLAN_MAX_B:
        perm = xp.empty(max(B, 1), dtype=np.int32)
        _TILES.get(f"jfa_tile_plan<{_ITYPE[q_off.dtype]}, {_ITYPE[k_off.dtype]}>")(
            (1,), (1024,), (q_off, k_off, np.int64(B), np.int32(bm), np.int64(msl), perm,
                            tile_off, info))
    else:
        qo = q_off.astype(np.int64, copy=False)
        ko = k_off.astype(np.int64, copy=False)
        nt = (qo[1:] - qo[:-1] + (bm - 1)) // bm
        work = nt * (xp.minimum(ko[1:] - ko[:-1], msl) + 1)
        perm = xp.argsort(-work).astype(np.int32)
        tile_off[0] = 0
        tile_off[1:] = xp.cumsum(nt[perm])
        _TILES.get("jfa_tile_info")((max(1, min((B + 127) // 128, 1024)),), (128,),
                                    (qo, ko, perm, tile_off, np.int64(B), info))
    out = (info, tile_off)
    if cache is not None:
        cache[key] = (k_off, out)
    return out


def _plan_key(q, k, v, max_seq_len, scale, causal, return_lse, allow_tf32, bm, impl):
    """The launch-plan cache key of these arguments, or None (not cached) where ``scale`` is not
    None or a plain scalar (a 0-d array is valid but not hashable)."""
    if scale is not None and not isinstance(scale, (int, float, np.integer, np.floating)):
        return None
    qv, kv, vv = q._values, k._values, v._values
    return ("jfa_plan", qv.shape, qv.dtype, kv.shape, kv.dtype, vv.shape, vv.dtype,
            qv.device.id, max_seq_len, scale, bool(causal), bool(return_lse), bool(allow_tf32),
            bm, impl)


def _launch_plan(plan, q, k, v, return_lse):
    """Launch a cached, already validated configuration (see the end of the slow path)."""
    _, _, kern, grid, threads, smem, tail = plan
    qv = q._values
    T, H, _ = qv.shape
    out = _cupy.empty(qv.shape, dtype=qv.dtype)
    lse = _cupy.empty((T, H), dtype=np.float32) if return_lse else out
    kern((grid,), (threads,), (qv, k._values, v._values, out, lse) + tail, shared_mem=smem)
    o = q._with_values(out)
    return (o, lse) if return_lse else o


def _check_options(causal, max_seq_len, scale):
    """Type checks that must come before the launch-plan cache (True == 1 == 1.0 as keys)."""
    if not (isinstance(causal, (bool, np.bool_)) or (
            isinstance(causal, (int, np.integer)) and causal in (0, 1))):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if isinstance(max_seq_len, (bool, np.bool_)):
        raise TypeError(f"max_seq_len must be an integer or None, got {max_seq_len!r}")
    if isinstance(scale, (bool, np.bool_, str, bytes)):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")


def _prepare(q, k, v, offsets, kv_offsets, max_seq_len, scale, bias):
    """Validate and normalise the arguments of :func:`jagged_flash_attention` (and of its
    backward): the jagged q and k, the contiguous v values, the truncation, the scale, and the
    bias with its element strides."""
    qj = _as_jagged(q, offsets, "q", "offsets")
    if isinstance(k, JaggedArray) or kv_offsets is not None:
        kj = _as_jagged(k, kv_offsets, "k", "kv_offsets")
    else:
        if not is_array(k):
            raise not_array("k", k, "a JaggedArray or a NumPy/CuPy array [T, Hk, D]")
        if k.ndim < 1 or k.shape[0] != qj.values.shape[0]:
            raise ValueError(f"k has {k.shape[0] if k.ndim else 0} rows but q has "
                             f"{qj.values.shape[0]}; give kv_offsets for cross-attention")
        kj = qj._with_values(xp_of(k).ascontiguousarray(k))
    if isinstance(v, JaggedArray) and not kj.same_structure(v):
        raise ValueError("v must have the offsets of k (row b's values belong to row b's keys)")
    vv = v.values if isinstance(v, JaggedArray) else v
    qv, kv = qj.values, kj.values
    if not is_array(vv):
        raise not_array("v", v, "a JaggedArray or a NumPy/CuPy array [T, Hk, D]")
    gpu = is_gpu_array(qv)
    for name, a in (("k", kv), ("v", vv)):
        if is_gpu_array(a) != gpu or (gpu and a.device.id != qv.device.id):
            raise ValueError(f"{name} must be on the same device as q")
    if qv.ndim != 3:
        raise ValueError(f"q values must be [T, H, D], got shape {tuple(qv.shape)}")
    if kv.ndim != 3 or tuple(vv.shape) != tuple(kv.shape):
        raise ValueError(f"k and v values must both be [Tk, Hk, D], got {tuple(kv.shape)} and "
                         f"{tuple(vv.shape)}")
    T, H, D = qv.shape
    Tk, Hk, Dk = kv.shape
    if Dk != D:
        raise ValueError(f"q has head dim {D} but k/v have {Dk}")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim D={D} is not supported; supported: {HEAD_DIMS}")
    if H < 1 or Hk < 1:
        raise ValueError(f"q and k/v need at least one head, got {H} and {Hk}")
    if H % Hk:
        raise ValueError(f"k/v have {Hk} heads, which must divide the {H} heads of q")
    dt = qv.dtype
    if kv.dtype != dt or vv.dtype != dt:
        raise TypeError(f"q, k, v must share one dtype, got {qv.dtype}, {kv.dtype}, {vv.dtype}")
    if dt not in (np.dtype(np.float16), bfloat16, np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dt}")
    if gpu and dt == np.float64:
        raise TypeError("float64 attention runs on the CPU backend only; cast to float32")
    if qj.nrows != kj.nrows:
        raise ValueError(f"q has {qj.nrows} rows but k/v have {kj.nrows}")
    B = qj.nrows
    if max_seq_len is None:
        msl = _NO_LIMIT
    else:
        try:
            if isinstance(max_seq_len, (bool, np.bool_)):
                raise TypeError
            msl = operator.index(max_seq_len)
        except TypeError:
            raise TypeError(f"max_seq_len must be an integer or None, got "
                            f"{type(max_seq_len).__name__}") from None
        if msl < 0:
            raise ValueError(f"max_seq_len must be >= 0, got {max_seq_len}")
        msl = min(msl, _NO_LIMIT)  # offsets + limit must not overflow int64
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    else:
        try:
            if isinstance(scale, (bool, np.bool_, str, bytes)):
                raise TypeError
            scale = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a real number or None, got {scale!r}") from None
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        if abs(scale) > _SCALE_MAX:
            raise ValueError(f"scale must be at most {_SCALE_MAX:.3g} in magnitude (the kernels "
                             f"take scale * log2(e) as a float32), got {scale}")
    vv = xp_of(vv).ascontiguousarray(vv)
    xp = xp_of(qv)

    sb = sh = si = 0
    if bias is not None:
        if not is_array(bias):
            raise not_array("bias", bias, f"an array [B, H, Mq, Mk] on {device_of(qv)}")
        if device_of(bias) != device_of(qv):
            raise TypeError(f"bias must be on the device of q ({device_of(qv)}), got "
                            f"{device_of(bias)}")
        mq = min(qj.max_length, msl)
        mk = min(kj.max_length, msl)
        if bias.ndim != 4 or bias.shape[0] != B or bias.shape[1] not in (1, H) or (
                bias.shape[2] < mq or bias.shape[3] < mk):
            raise ValueError(f"bias must be [B={B}, H={H} or 1, Mq>={mq}, Mk>={mk}], got shape "
                             f"{tuple(bias.shape)}")
        if not (bias.dtype.kind == "f" or bias.dtype == bfloat16):
            raise TypeError(f"bias must have a floating dtype (float16, bfloat16, float32, "
                            f"float64), got {bias.dtype}")
        # rounded to q's dtype as documented (a float32 -1e5 is -inf for float16 q); the CPU
        # backend then adds it in float64, like the scores
        with np.errstate(over="ignore"):
            bias = bias.astype(dt, copy=False)
        if not gpu:
            bias = bias.astype(np.float64, copy=False)
        if bias.strides[3] != bias.itemsize:
            bias = xp.ascontiguousarray(bias)
        sb, sh, si = (s // bias.itemsize for s in bias.strides[:3])
        if bias.shape[1] == 1:
            sh = 0

    return SimpleNamespace(qj=qj, kj=kj, qv=qv, kv=kv, vv=vv, T=T, H=H, D=D, Hk=Hk, dt=dt, B=B,
                           msl=msl, scale=scale, bias=bias, sb=sb, sh=sh, si=si, gpu=gpu, xp=xp)


@on_array_device
def jagged_flash_attention(q, k, v, offsets=None, *, kv_offsets=None, max_seq_len=None,
                           scale=None, causal=False, bias=None, return_lse=False,
                           allow_tf32=False, _bm=None, _impl=None):
    """Softmax attention within each row of a jagged batch (forward).

    Args:
        q: queries, a :class:`JaggedArray` with values ``[Tq, H, D]``, or the values with
            ``offsets [B+1]``.
        k, v: keys and values ``[Tk, Hk, D]`` (JaggedArrays, or arrays with ``kv_offsets``;
            without either they share the query offsets: self-attention). ``Hk`` may be smaller
            than ``H`` when it divides it (grouped-query: query head ``h`` uses key head
            ``h // (H // Hk)``). Cross-attention: the queries of row ``b`` attend to the keys
            of row ``b`` (``Lq`` and ``Lk`` may differ, e.g. a few targets over a history).
        offsets: query offsets ``[B+1]`` (int32/int64) when ``q`` is a plain array.
        kv_offsets: key/value offsets ``[B+1]`` when ``k``/``v`` are plain arrays.
        max_seq_len: only the first ``min(L, max_seq_len)`` queries and keys of every row take
            part (FBGEMM's truncation); query positions past it get ``O = 0`` and
            ``lse = -inf``. ``None``: no truncation.
        scale: multiplies ``q·k``; default ``1/sqrt(D)``. The scaled scores must stay in
            float32 range (``|scale·q·k| < 3.4e38``): past it they overflow (``lse`` inf).
        causal: query ``i`` sees key ``j`` only when ``j <= i + Lk - Lq`` (aligned to the end of
            the row when the lengths differ, as FlashAttention-2; with ``max_seq_len``, ``Lq``
            and ``Lk`` are the truncated lengths). Queries that see no key (possible when
            ``Lq > Lk``) get ``O = 0`` and ``lse = -inf``.
        bias: optional additive bias, padded layout ``[B, H or 1, Mq, Mk]`` with
            ``Mq >= min(max query length, max_seq_len)`` and likewise ``Mk`` for keys; element
            ``[b, h, i, j]`` is added to the scaled score of query ``i``, key ``j`` of row ``b``
            (``-inf`` masks). Cast to the dtype of ``q`` (bf16/fp16/fp32) before use; the last
            axis must be unit-stride (otherwise it is copied).
        return_lse: also return the fp32 natural-log log-sum-exp of the scores ``[Tq, H]``.
        allow_tf32: float32 inputs on the GPU run on tensor cores in TF32 (Q, K, V and P rounded
            to 10 mantissa bits, fp32 accumulation; like ``torch.backends.cuda.matmul
            .allow_tf32``): faster, relative error ~1e-3. Default: the exact
            fp32 FFMA kernel. No effect on other dtypes or on the CPU backend (always exact).

    Returns:
        ``O`` with the layout of ``q`` (a JaggedArray when ``q`` is one, else values
        ``[Tq, H, D]``), and ``lse`` (float32 ``[Tq, H]``) when ``return_lse``.

    Head dims 32, 64, 96, 128, 256. dtypes: bfloat16, float16 (tensor cores ``mma.sync``
    m16n8k16, fp32 accumulation, P rounded to the input dtype for P·V), float32 (exact fp32 FFMA
    kernel, or TF32 tensor cores m16n8k8 with ``allow_tf32``), float64 (CPU backend only).
    Tiles: 64 query rows per block (128 when the longest row is >= 512, or >= 1024 with
    ``causal``; bf16/fp16, head dims 64/128 only, no bias), 64 keys per step (32 for D >= 128,
    16 for TF32 D = 256); only real tiles are launched, longest rows first. Extra device
    memory: the output, the LSE when asked, and a cached tile list of ``8 * (T/BM + B)`` bytes.
    Empty rows are fine. On the GPU no host synchronisation happens when ``q``/``k`` are
    JaggedArrays (their tile list is cached); plain arrays with offsets are validated once (one
    small transfer).
    """
    _check_options(causal, max_seq_len, scale)
    if (bias is None and offsets is None and kv_offsets is None and type(q) is JaggedArray
            and type(k) is JaggedArray and type(v) is JaggedArray and is_gpu_array(q._values)):
        key = _plan_key(q, k, v, max_seq_len, scale, causal, return_lse, allow_tf32, _bm, _impl)
        plan = q._cache.get(key) if key is not None else None
        if plan is not None and plan[0] is k._offsets and plan[1] is v._offsets:
            return _launch_plan(plan, q, k, v, return_lse)
    scale_arg = scale  # (the plan's key: the caller's arguments)
    P = _prepare(q, k, v, offsets, kv_offsets, max_seq_len, scale, bias)
    qj, kj, qv, kv, vv, T, H, D, Hk, dt, B = (P.qj, P.kj, P.qv, P.kv, P.vv, P.T, P.H, P.D, P.Hk,
                                              P.dt, P.B)
    msl, scale, bias, sb, sh, si, gpu, xp = (P.msl, P.scale, P.bias, P.sb, P.sh, P.si, P.gpu,
                                             P.xp)

    if not gpu:
        from .cpu.attention import attention_fwd

        f = np.float64
        out = np.empty((T, H, D), dtype=f)
        lse = np.empty((T, H), dtype=f)
        bias_arr = (np.broadcast_to(bias, (B, H) + bias.shape[2:]) if bias is not None
                    else np.zeros((1, 1, 1, 1)))
        attention_fwd(qv.astype(f), kv.astype(f), vv.astype(f),
                      qj.offsets.astype(np.int64), kj.offsets.astype(np.int64), msl, scale,
                      bool(causal), bias_arr, bias is not None, out, lse)
        out = out.astype(dt)
        lse = lse.astype(np.float32)
    else:
        out = xp.empty((T, H, D), dtype=dt)
        lse = xp.empty((T, H), dtype=np.float32) if return_lse else out
        if T and B:
            has_bias = bias is not None
            fam = _FAM
            if _impl not in (None, "mma", "sm90"):
                raise ValueError(f"_impl must be None, 'mma' or 'sm90', got {_impl!r}")
            # (the wgmma kernel folds scale * log2 e into its exps: a normal positive float32)
            sm90_ok = (dt != np.float32 and not has_bias and D in _SM90_DIMS
                       and scale * math.log2(math.e) >= np.finfo(np.float32).tiny)
            if _impl == "sm90" and not (sm90_ok and _FAM90.supported()):
                raise ValueError("_impl='sm90' needs an sm_90 device, bf16/fp16, D in "
                                 f"{_SM90_DIMS}, no bias and scale > 0")
            if dt == np.float32 and not allow_tf32:
                bm, name, smem, threads = 16, _f32_name(D, has_bias), _f32_smem(D), 128
                sc = scale
            elif dt == np.float32:  # TF32 tensor cores, 64-row tiles
                bm, name = 64, _mma_name("float", D, 64, has_bias)
                smem, threads = _mma_smem(D, 64, 4), _mma_threads(D, 64)
                sc = scale * math.log2(math.e)
            elif sm90_ok and (_impl == "sm90" or (_impl is None and _SM90_ENABLED
                                                  and _FAM90.supported())):
                bm = _bm or 64
                if bm not in (64, 128):
                    raise ValueError(f"_bm must be 64 or 128 for the sm90 kernel, got {bm}")
                cfg = _SM90_CFG[D][min(kj.max_length, msl) >= _SM90_LONG]
                fam, name = _FAM90, _sm90_name(_TNAME[dt], D, bm // 64, *cfg)
                smem, threads = _sm90_smem(D, bm // 64, *cfg), bm * 2
                sc = scale * math.log2(math.e)
            else:
                # 128-row tiles pay off when long rows carry the work (measured on H200)
                mq = min(qj.max_length, msl)
                bm = _bm or (128 if (D in _BM128_DIMS and not has_bias
                                     and (mq >= 1024 or (mq >= 512 and not causal))) else 64)
                name = _mma_name(_TNAME[dt], D, bm, has_bias)
                smem, threads = _mma_smem(D, bm), _mma_threads(D, bm)
                sc = scale * math.log2(math.e)
            kern = fam.get(name)
            kern.allow_shared(smem)
            bound = (T + bm - 1) // bm + B
            grid = bound * H
            if grid >= 2**31:
                raise ValueError("batch too large for one launch (tile count * heads >= 2**31)")
            info, tile_off = _tile_list(xp, qj.offsets, kj.offsets, bm, msl, qj._cache, bound)
            tail = (info, tile_off, np.int64(B), np.int32(H), np.int32(Hk),
                    np.int64(msl), np.float32(sc), np.int32(bool(causal)))
            kern((grid,), (threads,),
                 (qv, kv, vv, out, lse, *tail, bias if has_bias else qv, np.int64(sb),
                  np.int64(sh), np.int64(si), np.int32(bool(return_lse))),
                 shared_mem=smem)
            key = (_plan_key(q, k, v, max_seq_len, scale_arg, causal, return_lse, allow_tf32,
                             _bm, _impl)
                   if (not has_bias and isinstance(q, JaggedArray) and isinstance(k, JaggedArray)
                       and isinstance(v, JaggedArray) and vv is v.values) else None)
            if key is not None:
                # every check above passed for these shapes/dtypes/options: later calls with the
                # same arrays' structure skip straight to the launch
                q._cache[key] = (
                    k._offsets, v._offsets, kern, grid, threads, smem,
                    tail + (tile_off, np.int64(0), np.int64(0), np.int64(0),
                            np.int32(bool(return_lse))))
        elif return_lse:
            lse = xp.full((T, H), -np.inf, dtype=np.float32)
            out[...] = 0
        else:
            out[...] = 0
    o = qj._with_values(out) if isinstance(q, JaggedArray) else out
    return (o, lse) if return_lse else o


@on_array_device
def jagged_flash_attention_backward(grad, q, k, v, offsets=None, *, kv_offsets=None,
                                    max_seq_len=None, scale=None, causal=False, bias=None,
                                    out=None, lse=None):
    """Gradients of :func:`jagged_flash_attention`'s output with respect to its inputs.

    Args:
        grad: ``dL/dO`` in the layout of ``q`` (a JaggedArray of ``q``'s structure, or values
            ``[Tq, H, D]``), the dtype of ``q``.
        q, k, v, offsets, kv_offsets, max_seq_len, scale, causal, bias: as given to the forward.
        out, lse: optionally, the forward's output (values ``[Tq, H, D]`` or a JaggedArray) and
            its ``return_lse`` log-sum-exp ``[Tq, H]`` for these inputs; the CUDA kernel then
            skips running the forward again. ``dS = P (dP − Σ_d dO·out)`` takes this ``out``
            on either path (the reference recomputes the rest in float64).

    Returns:
        ``(dq, dk, dv)`` in the layouts of ``q``, ``k``, ``v`` (JaggedArrays where the inputs
        were), plus ``dbias`` (the shape and dtype of ``bias``; a bias of one head gets the sum
        over heads) when ``bias`` is given. Queries past ``max_seq_len`` or seeing no key, and
        keys past ``max_seq_len``, get zeros.

    On the GPU it runs a CUDA kernel (FlashAttention-2's backward on the key-major jagged tile
    list; without ``out`` / ``lse`` it runs the forward first; dq is accumulated in float32 with
    atomics, so its last bits may differ from run to run, and so are dbias's where one bias head
    serves several heads): bf16 / fp16 with head dims 64 and 128 on sm_90 (Hopper) take the
    wgmma kernel of ``cuda_src/attention_bwd_sm90.cu`` (blocks of 64 keys; of 128 keys at head
    dim 128 when a row has 2048 keys or more), other bf16 / fp16 calls with head dims 32 to 128
    the mma.sync kernel of ``cuda_src/attention_bwd.cu`` (``CUJAGGED_ATTENTION_SM90=0`` at
    import keeps it on Hopper too), float32 and head dim 256 its exact FFMA kernel (fp32
    arithmetic, no TF32). On NumPy arrays the float64 Numba reference runs.
    """
    from .cpu.attention import attention_bwd

    _check_options(causal, max_seq_len, scale)
    P = _prepare(q, k, v, offsets, kv_offsets, max_seq_len, scale, bias)

    def like_q(name, a):
        """The values of ``a`` (grad, or the forward's out), checked to be like q's."""
        av = a.values if isinstance(a, JaggedArray) else a
        if not is_array(av):
            raise not_array(name, a, "a JaggedArray or an array [Tq, H, D] like q")
        if tuple(av.shape) != tuple(P.qv.shape) or device_of(av) != device_of(P.qv):
            raise ValueError(f"{name} must be like q: shape {tuple(P.qv.shape)} on "
                             f"{device_of(P.qv)}; got {tuple(av.shape)} on {device_of(av)}")
        if isinstance(a, JaggedArray) and not a.same_structure(P.qj):
            raise ValueError(f"{name} must have the structure (offsets) of q")
        if av.dtype != P.dt:
            raise TypeError(f"{name} must be of the dtype of q ({P.dt}), got {av.dtype}")
        return av

    gv = like_q("grad", grad)

    def wrap(a, like):
        return like._with_values(a) if isinstance(like, JaggedArray) else a

    if (out is None) != (lse is None):
        raise ValueError("give out and lse together (both from the forward), or neither")
    if out is not None:
        ov = like_q("out", out)
        want = f"the forward's float32 log-sum-exp ({P.T}, {P.H}) on {device_of(P.qv)}"
        if not is_array(lse):
            raise not_array("lse", lse, want)
        if tuple(lse.shape) != (P.T, P.H) or device_of(lse) != device_of(P.qv):
            raise ValueError(f"lse must be {want}; got {tuple(lse.shape)} on {device_of(lse)}")
        if lse.dtype != np.float32:
            raise TypeError(f"lse must be {want}; got {lse.dtype}")
        out = (ov, lse)
    res = _gpu_backward(P, gv, causal, out, None if bias is None else bias.dtype) if P.gpu \
        else None
    if res is not None:
        grads = tuple(wrap(a, like) for a, like in zip(res, (q, k, v)))
        return grads if bias is None else (*grads, res[3])

    def host64(a):
        return np.asarray(_cupy.asnumpy(a) if is_gpu_array(a) else a).astype(np.float64)

    qh, kh, vh, gh = host64(P.qv), host64(P.kv), host64(P.vv), host64(gv)
    B, H = P.B, P.H
    dq, dk, dv = np.zeros_like(qh), np.zeros_like(kh), np.zeros_like(vh)
    if bias is not None:
        bh = np.broadcast_to(host64(P.bias), (B, H) + P.bias.shape[2:])
        dbias = np.zeros((B, H) + P.bias.shape[2:], dtype=np.float64)
    else:
        bh = dbias = np.zeros((1, 1, 1, 1))
    attention_bwd(qh, kh, vh, gh, np.asarray(_cupy.asnumpy(P.qj.offsets) if P.gpu else
                                             P.qj.offsets, np.int64),
                  np.asarray(_cupy.asnumpy(P.kj.offsets) if P.gpu else P.kj.offsets, np.int64),
                  P.msl, P.scale, bool(causal), bh, bias is not None,
                  host64(out[0]) if out is not None else np.zeros((1, 1, 1)), out is not None,
                  dq, dk, dv, dbias)

    def back(a, like, dtype):
        a = a.astype(dtype)
        return wrap(_cupy.asarray(a) if P.gpu else a, like)

    out = (back(dq, q, P.dt), back(dk, k, P.dt), back(dv, v, P.dt))
    if bias is None:
        return out
    if bias.shape[1] == 1:
        dbias = dbias.sum(axis=1, keepdims=True)
    return (*out, back(dbias, None, bias.dtype))
