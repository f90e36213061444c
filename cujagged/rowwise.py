"""Row-wise ops on :class:`~cujagged.JaggedArray`: reductions over the jagged axis, softmax,
cumsum, sort, and elementwise arithmetic / NumPy ufuncs.

Shapes: ``x`` is ``[B, None, *inner]`` with values ``[T, *inner]``. Reductions return a dense
``[B, *inner]`` array; softmax, cumsum, sort and elementwise ops return a JaggedArray.

Backends: CuPy values of dtype float32 / float16 / bfloat16 run the CUDA kernels of
``cuda_src/rowwise.cu`` (fp32 accumulation). NumPy values run the Numba twins in
``cujagged.cpu.rowwise`` (float64 / int64 accumulation), which are also the test reference. CuPy
values of other dtypes (float64, integers, bool) take a host round trip through the Numba backend
(correct, not fast).

Empty rows (DESIGN.md): ``sum`` -> 0, ``prod`` -> 1, ``max`` -> -inf / ``min`` -> +inf for floats
(integers: the dtype's min / max; or ``initial=``), ``argmax``/``argmin`` -> -1, ``mean`` -> nan,
``logsumexp`` -> -inf, ``any`` -> False, ``all`` -> True. Identical on CPU and GPU.

``max_length`` (where accepted) truncates: only the first ``max_length`` items of each row take
part; softmax and the backward functions give 0 for the items past it.

NaN: ``max``/``min``/``argmax``/``argmin`` propagate NaN like NumPy (the first NaN wins).
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from ._backend import bfloat16, cupy, is_array, is_gpu_array, not_array, on_array_device
from ._kernels import KernelFamily, pow2_at_least
from .cpu import rowwise as _cpu

__all__ = [
    "sum", "mean", "prod", "max", "min", "argmax", "argmin", "logsumexp", "any", "all",
    "sum_backward", "mean_backward", "max_backward", "min_backward", "logsumexp_backward",
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "cumsum", "cumsum_backward", "sort", "argsort", "topk", "elementwise", "array_ufunc",
    "jagged_dense_elementwise_add", "jagged_dense_elementwise_mul",
]

_builtin_any, _builtin_all, _builtin_max, _builtin_min = any, all, max, min

# ---- kernel family -------------------------------------------------------------------------
_TNAME = {np.dtype(np.float32): ("float", 4), np.dtype(np.float16): ("f16_t", 8)}
if bfloat16 is not None:
    _TNAME[bfloat16] = ("bf16_t", 8)
K_SUM, K_PROD, K_MAX, K_LSE, K_DOT, K_MAXV = range(6)  # K_MAXV: max without the index
(E_ADD, E_SUB, E_RSUB, E_MUL, E_DIV, E_RDIV, E_MAXIMUM, E_MINIMUM) = range(8)
(E_BCAST, E_BCAST_MEAN, E_SELECT, E_LSE_BWD, E_SOFTMAX, E_LOGSOFTMAX, E_SOFTMAX_BWD,
 E_LOGSOFTMAX_BWD) = range(10, 18)
OUT_T, OUT_BOOL, OUT_I64, OUT_F32 = range(4)


def _instantiations():
    names = []
    for tn, vec in _TNAME.values():
        for v in (1, vec):
            names += [f"reduce_rows<{tn}, {k}, {v}>" for k in range(6)]
            names += [f"fused_rows<{tn}, {k}, {v}>" for k in (K_SUM, K_LSE, K_DOT)]
            names += [f"rowbcast<{tn}, {v}>"]
            names += [f"cumsum_rows<{tn}, {v}, {sp}>" for sp in ("false", "true")]
    return names + ["unit_carries"]


# cumsum of long rows: items per lane and step of its two-stage cp.async ring (CJ_SCAN_U; the
# ring takes 2 * _SCAN_U * 4 KB of dynamic shared memory). The scan's time follows its number of
# steps (H200, bf16, reference shape: 100 / 75 / 63 / 51 / 48 / 52 us with 2 / 3 / 4 / 6 / 8 / 12
# items; 12 leaves 2 blocks per SM).
_SCAN_U = 8
_FAM = KernelFamily("rowwise.cu", _instantiations(), options=(f"-DCJ_SCAN_U={_SCAN_U}",))
_BLOCK = 256
_NULL = np.uint64(0)
_NOTRUNC = 1 << 62
_KB = 1024


# ---- validation helpers --------------------------------------------------------------------
_JCLS = []


def _jagged_cls():
    if not _JCLS:
        from .jagged import JaggedArray

        _JCLS.append(JaggedArray)
    return _JCLS[0]


_KERNELS: dict = {}


def _kern(name: str):
    """``_FAM.get(name)`` memoised per device (the launch path stays cheap)."""
    key = (name, cupy.cuda.runtime.getDevice())
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = _FAM.get(name)
    return k


def _check_jagged(x, name="x"):
    if not isinstance(x, _jagged_cls()):
        raise TypeError(f"{name} must be a JaggedArray, got {type(x).__name__}")


def _check_numeric(x, name="x"):
    """A JaggedArray whose values the reductions, softmax, scans and sorts can take."""
    _check_jagged(x, name)
    dt = x.dtype
    if not ((dt.kind in "biuf" or dt == bfloat16) and dt.isnative):
        raise TypeError(f"{name} has values of dtype {dt}: row-wise ops take bool, integer or "
                        "floating values in native byte order")


def _check_axis(x, axis, dim):
    if dim is not None:
        if axis not in (None, 1) and axis != dim:
            raise TypeError(f"got both axis={axis} and dim={dim}; give one")
        axis = dim
    if axis is None:
        raise ValueError("axis=None (over every item of every row) is not supported: axis=1 "
                         "works per row; x.values holds every item")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    given = axis
    if axis < 0:
        axis += x.ndim
    if axis != 1:
        raise ValueError(f"axis must be 1 (the jagged axis) for an array of shape {x.shape}, "
                         f"got {given}")


def _trunc(max_length) -> int:
    if max_length is None:
        return _NOTRUNC
    try:
        ml = operator.index(max_length)
    except TypeError:
        raise TypeError(f"max_length must be an integer or None, got "
                        f"{type(max_length).__name__}") from None
    if ml < 0:
        raise ValueError(f"max_length must be >= 0, got {ml}")
    return ml if ml < _NOTRUNC else _NOTRUNC  # a huge "no limit": offsets + it must not overflow


def _check_same(x, y, xname, yname):
    _check_jagged(y, yname)
    if x.is_gpu != y.is_gpu:
        raise TypeError(f"{xname} is on {x.device} but {yname} is on {y.device}")
    if not x.same_structure(y):
        raise ValueError(f"{xname} and {yname} must have the same structure (equal offsets); "
                         f"got {x.nrows} and {y.nrows} rows with different offsets")
    if x.inner_shape != y.inner_shape:
        raise ValueError(f"{xname} and {yname} must have the same inner shape, got "
                         f"{x.inner_shape} and {y.inner_shape}")


def _ncols(x) -> int:
    c = 1
    for d in x.inner_shape:
        c *= d
    return c


def _flat(x):
    return x.values.reshape(x.values.shape[0], _ncols(x))


def _kernel_ok(x) -> bool:
    return x.is_gpu and x.dtype in _TNAME


def _to_host(x):
    J = _jagged_cls()
    return J(cupy.asnumpy(x.values), cupy.asnumpy(x.offsets), max_length=x.max_length,
             validate=False)


def _to_dev(res, like):
    J = _jagged_cls()
    if isinstance(res, tuple):
        return tuple(_to_dev(r, like) for r in res)
    if isinstance(res, J):
        offsets = like.offsets if res.offsets.shape == like.offsets.shape and res.values.shape[
            0] == like.values.shape[0] and res.max_length == like.max_length else cupy.asarray(
            res.offsets)
        return J(cupy.asarray(res.values), offsets, max_length=res.max_length, validate=False)
    return cupy.asarray(res)


def _host_arg(a):
    if isinstance(a, _jagged_cls()):
        return _to_host(a) if a.is_gpu else a
    return cupy.asnumpy(a) if is_gpu_array(a) else a


def _via_host(fn, x, *args, **kw):
    """Run ``fn`` on host copies (GPU arrays of dtypes without a CUDA kernel)."""
    res = fn(_to_host(x), *(_host_arg(a) for a in args),
             **{k: _host_arg(v) for k, v in kw.items()})
    return _to_dev(res, x)


# ---- cached structure (shared by every array of the same offsets) ----------------------------
def _off64(x):
    c = x._cache
    o = c.get("rowwise.off64")
    if o is None:
        o = x.offsets.astype(np.int64, copy=False)
        c["rowwise.off64"] = o
    return o


def _rows_pos(x):
    """(row id, position in row) of every item, int64 ``[T]`` each (cached)."""
    c = x._cache
    r = c.get("rowwise.rowpos")
    if r is None:
        xp = x.xp
        off = _off64(x)
        t = xp.arange(x.values.shape[0], dtype=np.int64)
        rid = xp.searchsorted(off[1:], t, side="right").astype(np.int64)
        r = (rid, t - off[rid])
        c["rowwise.rowpos"] = r
    return r


@functools.cache
def _sm_count(dev: int) -> int:
    return int(cupy.cuda.Device(dev).attributes["MultiProcessorCount"])


def _geom(C: int, dtype, *arrays, tile_bytes: int | None = None):
    """(V, CT, column tiles): V columns per thread (16-byte vectors when C and the pointers
    allow), CT column threads per block (power of two; at most ``tile_bytes`` of an item), tiles
    over the columns (grid y)."""
    vec = 16 // dtype.itemsize
    ok = C % vec == 0 and _builtin_all(a.data.ptr % 16 == 0 for a in arrays if a is not None)
    V = vec if ok else 1
    cv = C // V
    ct_max = _BLOCK if tile_bytes is None else \
        _builtin_max(1, _builtin_min(_BLOCK, tile_bytes // (V * dtype.itemsize)))
    CT = _builtin_min(pow2_at_least(ct_max + 1) // 2, pow2_at_least(cv))
    return V, CT, -(-cv // CT)


# Scheduling thresholds in bytes (tests shrink them to exercise the split paths on small data).
# A block owns whole rows up to 512 KB (one kernel, no combine: faster than splitting at the
# reference shape, H200: splitting rows over 64 KB cut bf16 sum from 72% to 58% of copy); fused
# softmax reads its rows twice (the second time from the row's end, mostly from L2), up to 1 MB
# (both inputs of the backward counted: fp32 softmax bwd 364 -> 299 us on an H100 against the
# split reduction + rewrite of rows over 512 KB, the forward unchanged). Longer rows are split in
# units of split_min .. split_max (about 8 per SM), larger where a row would have more than
# split_units of them (H200, one row of 10**6 bf16 items: sum 93 -> 72 us with 256), combined
# by the last block of each row. A fused block reads at most fused_tile bytes of each item
# (wider items: column tiles over grid y): fewer bytes of the rows in flight wait in L2 for
# their second read (H100, D=128 fp32 softmax bwd 197 -> 179 us, fwd 120 -> 118 us; 128 bytes:
# bf16 / fp32 fwd 66 -> 72 / 120 -> 140 us).
_SCHED = {"whole_reduce": 512 * _KB, "whole_fused": 1024 * _KB, "whole_scan": 512 * _KB,
          "small_row": 32 * _KB, "lane_items": 8, "lane_scan": 64, "split_min": 64 * _KB,
          "split_max": 1024 * _KB, "split_units": 256, "bcast_chunk": 64 * _KB,
          "scan_chunk": 64 * _KB, "fused_tile": 256, "fused_cache": 96 * _KB}
# A fused block with one row (rows of >= 8 items per lane) keeps each lane's first items of the
# row in a row cache in shared memory: those are read from DRAM once, where the second read of
# the softmax otherwise hopes for L2. Its size: the most that leaves the kernel's occupancy as it
# is (registers set it), at most fused_cache bytes (0: no cache). Measured on an H200 (copy 4.2
# TB/s, reference shape): fp32 softmax 94.4 -> 89.1 us with 96 KB (2 blocks/SM), bf16 50.8 ->
# 49.7 us with 24 KB (3 blocks/SM; 48 KB leaves 2: 55.0 us). _FUSED_UW: the items a lane rewrites
# per group (CJ_UW in rowwise.cu); the cache holds whole groups.
_FUSED_UW = 6


def _schedule(x, kind: str, item_bytes: int, trunc: int, CT: int):
    """Work split of x's rows (cached per structure): (chunk, nunits, LPR, split, blocks,
    chunk_off, units).

    ``kind``: "reduce" (a block may own whole rows up to 512 KB, longer rows are split in
    units of 64 KB .. 1 MB, at most ~``split_units`` per row, combined by the last block),
    "fused" (the same with whole rows up to 1 MB: softmax in one kernel), "bcast" (chunks of
    at most 64 KB, no combine) or "scan" (whole rows up to 512 KB, else chunks of >= 64 KB, at
    most ~``split_units`` per row, with carries). LPR lanes per unit, R / LPR units
    per block: several short rows share a block (a scan of rows of at most 64 items: one lane
    per row). ``units [nunits, 4]`` int64: (row or -1 for a spare unit, row begin, untruncated
    row length, ``k | nu << 32``: the unit is the k-th of the row's nu, from item ``k * chunk``),
    rows longest first, a row's units consecutive: a block reads its unit in one record.
    ``chunk_off [B+1]`` (chunked scans only, else None): the first unit of each row, units in
    row order."""
    key = ("rowwise.sched", kind, item_bytes, trunc if trunc < x.max_length else None, CT,
           tuple(_SCHED.values()))
    c = x._cache
    hit = c.get(key)
    if hit is not None:
        return hit
    B, T = x.nrows, x.values.shape[0]
    L = _builtin_min(x.max_length, trunc)
    sm = _sm_count(x.values.device.id)
    R = _BLOCK // CT
    ib = _builtin_max(item_bytes, 1)
    row_bytes = L * ib
    mean = _builtin_min(T / B if B else 0.0, L)
    S = _SCHED
    if kind == "bcast":
        chunk = _builtin_max(1, _builtin_min(_builtin_max(L, 1), S["bcast_chunk"] // ib))
        split = False
    elif row_bytes > S["whole_" + kind] or (B < 2 * sm and row_bytes > S["small_row"]):
        # at most ~split_units units per row: the last block of a row combines its units'
        # states in rounds of 32 dependent L2 reads (scans: sums their carries serially)
        cb = _builtin_max(S["scan_chunk"], row_bytes // S["split_units"]) if kind == "scan" \
            else _builtin_max(row_bytes // S["split_units"], _builtin_min(
                S["split_max"], _builtin_max(S["split_min"], (T * ib) // (8 * sm))))
        chunk = _builtin_max(1, cb // ib)
        split = chunk < L
        if not split:  # a chunk holding the longest row: whole rows, nothing to combine
            chunk = _builtin_max(L, 1)
    else:
        chunk, split = _builtin_max(L, 1), False
    if chunk >= L:
        nunits = _builtin_max(B, 1)
    else:
        nunits = B + _builtin_min(T, B * trunc) // chunk + 1
    if kind == "scan" and not split and L <= S["lane_scan"]:
        LPR = 1  # short rows: each lane scans whole rows alone, R rows per block
    elif split or kind == "scan":
        LPR = R
    else:
        # enough lanes per row that a lane has about one batch of loads (lane_items) to do
        li = S["lane_items"]
        LPR = _builtin_max(1, _builtin_min(R, pow2_at_least(-(-_builtin_min(mean, chunk) // li))))
    blocks = -(-nunits // (R // LPR))
    off = _off64(x)
    lens = off[1:] - off[:-1]
    if trunc < x.max_length:
        lens = cupy.minimum(lens, trunc)
    units = cupy.empty((nunits, 4), dtype=np.int64)
    co = None
    if B:
        n = cupy.maximum((lens + (chunk - 1)) // chunk, 1)  # units per row
        # Rows longest first: they start in the first wave instead of trailing the kernel (a
        # block streams its unit at a small share of the bandwidth while all are busy). A
        # chunked scan keeps row order: its carries walk each row's units.
        scan_split = split and kind == "scan"
        order = cupy.arange(B, dtype=np.int64) if scan_split else cupy.argsort(-lens)  # stable
        n_o = n[order]
        ends = cupy.cumsum(n_o)
        u = cupy.arange(nunits, dtype=np.int64)
        k = cupy.searchsorted(ends, u, side="right")  # unit u belongs to the k-th row in order
        kc = cupy.minimum(k, B - 1)
        row = order[kc]
        units[:, 0] = cupy.where(k < B, row, -1)
        units[:, 1] = off[row]
        units[:, 2] = off[row + 1] - off[row]
        units[:, 3] = (u - (ends[kc] - n_o[kc])) | (n_o[kc] << 32)  # k-th of the row's nu
        if scan_split:
            co = cupy.zeros(B + 1, dtype=np.int64)
            co[1:] = ends
    else:
        units[:, 0] = -1
    hit = (chunk, nunits, LPR, split, blocks, co, units)
    c[key] = hit
    return hit


def _counters(x, n: int):
    """Per-row arrival counters of split reductions: int32, zero between launches (cached)."""
    ctr = x._cache.get("rowwise.counters")
    if ctr is None or ctr.shape[0] < n:
        ctr = cupy.zeros(_builtin_max(n, 1), dtype=np.int32)
        x._cache["rowwise.counters"] = ctr
    return ctr


def _ptr(a):
    return _NULL if a is None else a


# ---- GPU launches ----------------------------------------------------------------------------
# Kernel scalars are memoised: building a NumPy scalar costs ~0.4 us of host time per argument
# (H200 host), a cache hit ~0.1 us; launches take a dozen of them.
@functools.lru_cache(maxsize=4096)
def _i64(v):
    return np.int64(v)


@functools.lru_cache(maxsize=4096)
def _i32(v):
    return np.int32(v)


def _gpu_reduce(x, K, mode, out_dtype, out_kind, trunc, *, has_init=0, init=0.0, b=None,
                pass_=None, part=None):
    """Reduction of every column over every (truncated) row: ``[B, C]`` array of ``out_dtype``.
    ``pass_=2`` only writes the per-unit partial sums into ``part`` (chunked cumsum)."""
    vals = x.values
    B, C = x.nrows, _ncols(x)
    out = cupy.empty((B, *x.inner_shape), dtype=out_dtype) if pass_ != 2 else None
    if B == 0 or C == 0:
        return out
    bv = None if b is None else b.values
    tn = _TNAME[x.dtype][0]
    V, CT, yt = _geom(C, x.dtype, vals, bv)
    ib = C * x.dtype.itemsize * (2 if K == K_DOT else 1)
    kind = "scan" if pass_ == 2 else "reduce"
    chunk, nunits, LPR, split, blocks, _, units = _schedule(x, kind, ib, trunc, CT)
    kern = _kern(f"reduce_rows<{tn}, {K}, {V}>")
    pa = pb = pi = ctr = None
    if split:
        pa = part if part is not None else cupy.empty((nunits, C), dtype=np.float32)
        pb = cupy.empty((nunits, C), dtype=np.float32) if K == K_LSE else None
        pi = cupy.empty((nunits, C), dtype=np.int32) if K in (K_MAX, K_PROD) else None
        ctr = _counters(x, B * yt) if pass_ != 2 else None
    p = pass_ if pass_ is not None else (1 if split else 0)
    kern((blocks, yt), (_BLOCK,),
         (vals, _ptr(bv), units, _i64(nunits), _i64(C), _i64(chunk), _i64(trunc), _i32(CT),
          _i32(LPR), _i32(mode), _i32(p), _ptr(pa), _ptr(pb), _ptr(pi),
          _ptr(ctr), _ptr(out), _i32(out_kind), _i32(has_init), np.float32(init), _i32(-1),
          _NULL, _i32(0)))
    return out


def _gpu_rowbcast(x, mode, *, a=None, b=None, p=None, padded=False, q=None, ix=None,
                  trunc=_NOTRUNC, out=None):
    """``out[t, c] = apply(mode, a, b, p[row(, pos)], q[row], ix[row])`` over every item of x's
    structure (see ``apply`` in rowwise.cu). ``a``/``b``: ``[T, C]``; ``p``: ``[B, C]`` or padded
    ``[B, Lp, C]`` of x's dtype; ``q``: ``[B, C]`` float32; ``ix``: ``[B, C]`` int64."""
    T, C = x.values.shape[0], _ncols(x)
    if out is None:
        out = cupy.empty(x.values.shape, dtype=x.dtype)
    if T == 0 or C == 0:
        return out
    tn = _TNAME[x.dtype][0]
    V, CT, yt = _geom(C, x.dtype, a, b, out, p if padded else None)
    chunk, nunits, LPR, _, blocks, _, units = _schedule(x, "bcast", C * x.dtype.itemsize,
                                                        _NOTRUNC, CT)
    if p is None:
        p_row = p_pos = 0
    elif padded:
        p_row, p_pos = p.shape[1] * C, C
    else:
        p_row, p_pos = C, 0
    kern = _kern(f"rowbcast<{tn}, {V}>")
    kern((blocks, yt), (_BLOCK,),
         (_ptr(a), _ptr(b), _ptr(p), _i64(p_row), _i64(p_pos), _ptr(q), _ptr(ix), units,
          _i64(nunits), _i64(C), _i64(chunk), _i64(trunc), _i32(CT), _i32(LPR), _i32(mode), out))
    return out


def _gpu_fused(x, K, mode, fmode, trunc, b=None):
    """Reduce each row (kind K) then rewrite it with ``apply(fmode, x, b, q=reduced)``: one
    kernel when a block can own a whole row, else a split reduction plus ``rowbcast``."""
    vals = x.values
    T, C = vals.shape[0], _ncols(x)
    out = cupy.empty(vals.shape, dtype=x.dtype)
    if T == 0 or C == 0:
        return out
    bv = None if b is None else b.values
    V, CT, yt = _geom(C, x.dtype, vals, bv, out,
                      tile_bytes=_SCHED["fused_tile"] // (1 if b is None else 2))
    ib = C * x.dtype.itemsize * (1 if b is None else 2)  # bytes read per item
    chunk, nunits, LPR, split, blocks, _, units = _schedule(x, "fused", ib, trunc, CT)
    if split:
        q = _gpu_reduce(x, K, mode, np.float32, OUT_F32, trunc, b=b)
        return _gpu_rowbcast(x, fmode, a=vals, b=bv, q=q, trunc=trunc, out=out)
    tn = _TNAME[x.dtype][0]
    kern = _kern(f"fused_rows<{tn}, {K}, {V}>")
    nc, smem = _row_cache(kern, x, V, CT, LPR, chunk, trunc, 1 if b is None else 2)
    kern((blocks, yt), (_BLOCK,),
         (vals, _ptr(bv), units, _i64(nunits), _i64(C), _i64(chunk), _i64(trunc), _i32(CT),
          _i32(LPR), _i32(mode), _i32(0), _NULL, _NULL, _NULL, _NULL,
          _NULL, _i32(OUT_T), _i32(0), np.float32(0), _i32(fmode), out, _i32(nc)),
         shared_mem=smem)
    return out


def _row_cache(kern, x, V: int, CT: int, LPR: int, chunk: int, trunc: int, ni: int):
    """(items per lane, bytes) of a fused block's row cache (``kern``: the fused kernel): whole
    rewrite groups of each lane's first items, up to the longest row's items per lane and
    ``_cache_groups``; none for blocks of several rows (short rows: their second read is one
    batch, from L1/L2) or vectors under 16 bytes (the cache is filled by 16-byte cp.async)."""
    if LPR != _BLOCK // CT or V * x.dtype.itemsize != 16:
        return 0, 0
    per_item = ni * _BLOCK * 16  # one item of each input for every thread of the block
    g = _FUSED_UW // ni          # items per lane and rewrite group
    need = -(-_builtin_min(x.max_length, trunc, chunk) // LPR)
    nc = _builtin_min(_cache_groups(kern, g * per_item), -(-need // g)) * g
    return nc, nc * per_item


_CACHE_GROUPS: dict = {}


def _cache_groups(kern, group_bytes: int) -> int:
    """Rewrite groups of the row cache that ``kern`` can take without fewer blocks per SM than
    it has without a cache (the driver's occupancy calculator), within ``fused_cache`` bytes."""
    budget = _SCHED["fused_cache"]
    key = (kern.ptr, group_bytes, budget)
    n = _CACHE_GROUPS.get(key)
    if n is None:
        from cupy_backends.cuda.api.driver import occupancyMaxActiveBlocksPerMultiprocessor as occ

        n = budget // group_bytes
        if n:
            kern.allow_shared(n * group_bytes)
            base = occ(kern.ptr, _BLOCK, 0)
            while n and occ(kern.ptr, _BLOCK, n * group_bytes) < base:
                n -= 1
        _CACHE_GROUPS[key] = n
    return n


# ---- CPU helpers -----------------------------------------------------------------------------
def _cpu_vals(x):
    v = _flat(x)
    if v.dtype in (np.dtype(np.float16), bfloat16):
        return v.astype(np.float32)
    if v.dtype == np.bool_:
        return v.view(np.uint8)
    return v


def _acc_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype == bfloat16:
        return np.dtype(np.float64)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    return np.dtype(np.int64)


def _float_out(dtype):
    """Result dtype of a float-valued op (mean, logsumexp, softmax) for values of ``dtype``."""
    dtype = np.dtype(dtype)
    return dtype if (dtype.kind == "f" or dtype == bfloat16) else np.dtype(np.float64)


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) == bfloat16


def _shape_out(x, out):
    shape = (x.nrows, *x.inner_shape)
    return out if out.shape == shape else out.reshape(shape)


def _jagged_like(x, values):
    inner = x.inner_shape
    if values.shape[1:] != inner:
        values = values.reshape((values.shape[0], *inner))
    return x._with_values(values)


# ---- reductions --------------------------------------------------------------------------------
def _reduce_common(x, axis, dim, max_length):
    _check_numeric(x)
    _check_axis(x, axis, dim)
    return _trunc(max_length)


def _gpu_sum_like(x, K, mode, trunc, dtype):
    """A float sum / mean / product on the GPU, returned in ``dtype`` (default: x's): a float
    wider than x's comes straight from the fp32 accumulator, not through x's dtype."""
    wide = dtype is not None and np.dtype(dtype).kind == "f" and (
        np.dtype(dtype).itemsize > x.dtype.itemsize)
    res = _shape_out(x, _gpu_reduce(x, K, mode, np.float32 if wide else x.dtype,
                                    OUT_F32 if wide else OUT_T, trunc))
    return res if dtype is None else res.astype(dtype, copy=False)


@on_array_device
def sum(x, axis=1, *, dim=None, max_length=None, dtype=None):  # noqa: A001
    """Sum of each row: ``[B, *inner]``. Floats keep their dtype (fp32 accumulation on the GPU),
    integers/bool give int64 (uint64 for unsigned); ``dtype``: the result's, cast from the
    accumulator (float64 on the CPU, fp32 on the GPU). Empty rows give 0."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(sum, x, max_length=max_length, dtype=dtype)
        return _gpu_sum_like(x, K_SUM, 0, trunc, dtype)
    acc = _acc_dtype(x.dtype)
    out = np.zeros((x.nrows, _ncols(x)), dtype=acc)
    _cpu.reduce_sum(_cpu_vals(x), x.offsets, trunc, out)
    return _shape_out(x, out.astype(dtype or (x.dtype if _is_float(x.dtype) else acc)))


@on_array_device
def mean(x, axis=1, *, dim=None, max_length=None, dtype=None):
    """Mean of each row: ``[B, *inner]`` (float64 for integer values; ``dtype``: as
    :func:`sum`). Empty rows give nan."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(mean, x, max_length=max_length, dtype=dtype)
        return _gpu_sum_like(x, K_SUM, 1, trunc, dtype)
    out = np.zeros((x.nrows, _ncols(x)), dtype=np.float64)
    _cpu.reduce_sum(_cpu_vals(x), x.offsets, trunc, out)
    n = np.minimum(np.diff(x.offsets.astype(np.int64)), trunc)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, out / np.maximum(n, 1), np.nan)
    return _shape_out(x, out.astype(dtype or _float_out(x.dtype)))


@on_array_device
def prod(x, axis=1, *, dim=None, max_length=None, dtype=None):
    """Product of each row: ``[B, *inner]`` (int64 for integers; ``dtype``: as :func:`sum`).
    Empty rows give 1. Zeros and infinities decide the product whatever the order of the
    partial products: NaN if an item is NaN or a zero meets an infinity, else ±inf if an item is
    infinite, else ±0 if one is zero (a partial product of the other items that under- or
    overflowed does not change that). A row of finite nonzero items whose partial products leave
    the accumulator's range both ways (fp32 on the GPU: some lanes' products reach inf, others
    0) gives NaN there, where the CPU's in-order float64 product may still be finite."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(prod, x, max_length=max_length, dtype=dtype)
        return _gpu_sum_like(x, K_PROD, 0, trunc, dtype)
    acc = _acc_dtype(x.dtype)
    out = np.ones((x.nrows, _ncols(x)), dtype=acc)
    (_cpu.reduce_prod_float if _is_float(acc) else _cpu.reduce_prod)(_cpu_vals(x), x.offsets,
                                                                      trunc, out)
    return _shape_out(x, out.astype(dtype or (x.dtype if _is_float(x.dtype) else acc)))


def _extremum(x, is_min, want_index, initial, trunc):
    if x.is_gpu:
        mode = (1 if is_min else 0) | (2 if want_index else 0)
        if want_index:
            return _shape_out(x, _gpu_reduce(x, K_MAX, mode, np.int64, OUT_I64, trunc))
        has_init = initial is not None
        return _shape_out(x, _gpu_reduce(x, K_MAXV, mode, x.dtype, OUT_T, trunc,
                                         has_init=int(has_init),
                                         init=float(initial) if has_init else 0.0))
    v = _cpu_vals(x)
    B, C = x.nrows, _ncols(x)
    if v.dtype.kind == "f":
        fill = np.inf if is_min else -np.inf
    else:
        info = np.iinfo(v.dtype)
        fill = info.max if is_min else info.min
    outv = np.full((B, C), fill, dtype=v.dtype)
    if want_index:
        outi = np.full((B, C), -1, dtype=np.int64)
        _cpu.reduce_max(v, x.offsets, trunc, is_min, outv, outi)
        return _shape_out(x, outi)
    _cpu.reduce_maxval(v, x.offsets, trunc, is_min, outv)
    if initial is not None:  # in the values' dtype, converted as NumPy converts it (no float64
        # round trip of int64; out of the dtype's range: NumPy's OverflowError)
        init = (np.min if is_min else np.max)(np.empty(0, v.dtype), initial=initial)
        empty = ((np.diff(x.offsets) == 0) | (trunc == 0))[:, None]
        outv = np.minimum(outv, init) if is_min else np.maximum(outv, init)
        outv = np.where(empty, init, outv)
    return _shape_out(x, outv.astype(x.dtype, copy=False))


@on_array_device
def max(x, axis=1, *, dim=None, initial=None, max_length=None):  # noqa: A001
    """Maximum of each row: ``[B, *inner]``. Empty rows give -inf (integers: the dtype's min)
    or ``initial`` (which, as in NumPy, also takes part in every row). NaN propagates."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(max, x, initial=initial, max_length=max_length)
    return _extremum(x, False, False, initial, trunc)


@on_array_device
def min(x, axis=1, *, dim=None, initial=None, max_length=None):  # noqa: A001
    """Minimum of each row: ``[B, *inner]``. Empty rows give +inf (integers: the dtype's max)
    or ``initial``. NaN propagates."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(min, x, initial=initial, max_length=max_length)
    return _extremum(x, True, False, initial, trunc)


@on_array_device
def argmax(x, axis=1, *, dim=None, max_length=None):
    """Position within the row of each row's maximum (first one; first NaN if any): int64
    ``[B, *inner]``; empty rows give -1."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(argmax, x, max_length=max_length)
    return _extremum(x, False, True, None, trunc)


@on_array_device
def argmin(x, axis=1, *, dim=None, max_length=None):
    """Position within the row of each row's minimum (first one): int64 ``[B, *inner]``; -1 for
    empty rows."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(argmin, x, max_length=max_length)
    return _extremum(x, True, True, None, trunc)


@on_array_device
def logsumexp(x, axis=1, *, dim=None, max_length=None):
    """``log(sum(exp(row)))`` per column, stable for large values: ``[B, *inner]``. Empty or
    all -inf rows give -inf."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(logsumexp, x, max_length=max_length)
        return _shape_out(x, _gpu_reduce(x, K_LSE, 0, x.dtype, OUT_T, trunc))
    out = np.empty((x.nrows, _ncols(x)), dtype=np.float64)
    _cpu.reduce_lse(_cpu_vals(x), x.offsets, trunc, out)
    return _shape_out(x, out.astype(_float_out(x.dtype)))


def _anyall(x, is_all, trunc):
    if x.is_gpu:
        return _shape_out(x, _gpu_reduce(x, K_SUM, 3 if is_all else 2, np.bool_, OUT_BOOL,
                                         trunc))
    v = _flat(x)
    mask = (v == 0) if is_all else (v != 0)
    out = np.zeros((x.nrows, _ncols(x)), dtype=np.int64)
    _cpu.reduce_sum(mask.view(np.uint8), x.offsets, trunc, out)
    return _shape_out(x, (out == 0) if is_all else (out > 0))


@on_array_device
def any(x, axis=1, *, dim=None, max_length=None):  # noqa: A001
    """True where some item of the row is non-zero: bool ``[B, *inner]``; empty rows False."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(any, x, max_length=max_length)
    return _anyall(x, False, trunc)


@on_array_device
def all(x, axis=1, *, dim=None, max_length=None):  # noqa: A001
    """True where every item of the row is non-zero: bool ``[B, *inner]``; empty rows True."""
    trunc = _reduce_common(x, axis, dim, max_length)
    if x.is_gpu and not _kernel_ok(x):
        return _via_host(all, x, max_length=max_length)
    return _anyall(x, True, trunc)


# ---- backward of the reductions ------------------------------------------------------------
def _per_row(grad, x, name="grad", dtype=None):
    """``grad`` as a contiguous ``[B, C]`` array of ``dtype`` (default x's) on x's device."""
    want = (x.nrows, *x.inner_shape)
    if not is_array(grad):
        raise not_array(name, grad, f"an array of shape {want}")
    if is_gpu_array(grad) != x.is_gpu:
        raise TypeError(f"{name} must be on {x.device} like x")
    if dtype is not None and np.dtype(dtype).kind in "iu" and grad.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array {want}, got {grad.dtype}")
    if tuple(grad.shape) != want:
        raise ValueError(f"{name} must have shape {want} ([B, *inner]), got {tuple(grad.shape)}")
    xp = x.xp
    return xp.ascontiguousarray(grad.reshape(x.nrows, _ncols(x)), dtype=dtype or x.dtype)


def _cpu_bcast(x, grad2, trunc, scale_by_len=False, select=None, lse=None):
    """The CPU twin of the row-broadcast backward modes, in float64 ``[T, C]``."""
    rid, pos = _rows_pos(x)
    g = grad2.astype(np.float64)[rid]
    if scale_by_len:
        n = np.minimum(np.diff(x.offsets.astype(np.int64)), trunc)
        g = g / np.maximum(n, 1)[rid][:, None]
    if select is not None:
        g = np.where(pos[:, None] == select[rid], g, 0.0)
    if lse is not None:
        q = lse.astype(np.float64)[rid]
        with np.errstate(invalid="ignore", over="ignore"):
            e = np.exp(_cpu_vals(x).astype(np.float64) - q)
        g = np.where(q == -np.inf, 0.0, g * e)
    g[pos >= trunc] = 0.0
    return g


def _float_jagged(x, name="x", why=" for a gradient"):
    _check_numeric(x, name)
    if not _is_float(x.dtype):
        raise TypeError(f"{name} must have a floating dtype{why}, got {x.dtype}")


@on_array_device
def sum_backward(grad, x, *, max_length=None):
    """Gradient of :func:`sum`: ``grad [B, *inner]`` broadcast over each row -> JaggedArray like
    ``x`` (0 past ``max_length``)."""
    _float_jagged(x)
    trunc = _trunc(max_length)
    g = _per_row(grad, x)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _to_dev(sum_backward(cupy.asnumpy(grad), _to_host(x),
                                        max_length=max_length), x)
        return _jagged_like(x, _gpu_rowbcast(x, E_BCAST, p=g, trunc=trunc))
    return _jagged_like(x, _cpu_bcast(x, g, trunc).astype(x.dtype))


@on_array_device
def mean_backward(grad, x, *, max_length=None):
    """Gradient of :func:`mean`: ``grad / len(row)`` over each row -> JaggedArray like ``x``."""
    _float_jagged(x)
    trunc = _trunc(max_length)
    g = _per_row(grad, x)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _to_dev(mean_backward(cupy.asnumpy(grad), _to_host(x),
                                         max_length=max_length), x)
        return _jagged_like(x, _gpu_rowbcast(x, E_BCAST_MEAN, p=g, trunc=trunc))
    return _jagged_like(x, _cpu_bcast(x, g, trunc, scale_by_len=True).astype(x.dtype))


def _extremum_backward(grad, x, indices, max_length, is_min):
    _float_jagged(x)
    trunc = _trunc(max_length)
    g = _per_row(grad, x)
    if indices is None:
        indices = (argmin if is_min else argmax)(x, max_length=max_length)
    ix = _per_row(indices, x, "indices", np.int64)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _to_dev(_extremum_backward(cupy.asnumpy(grad), _to_host(x),
                                              cupy.asnumpy(indices), max_length, is_min), x)
        return _jagged_like(x, _gpu_rowbcast(x, E_SELECT, p=g, ix=ix, trunc=trunc))
    return _jagged_like(x, _cpu_bcast(x, g, trunc, select=ix).astype(x.dtype))


@on_array_device
def max_backward(grad, x, *, indices=None, max_length=None):
    """Gradient of :func:`max`: ``grad`` goes to the first maximum of each row (``indices``, the
    :func:`argmax`, is recomputed when not given); JaggedArray like ``x``."""
    return _extremum_backward(grad, x, indices, max_length, False)


@on_array_device
def min_backward(grad, x, *, indices=None, max_length=None):
    """Gradient of :func:`min` (to the first minimum of each row); JaggedArray like ``x``."""
    return _extremum_backward(grad, x, indices, max_length, True)


@on_array_device
def logsumexp_backward(grad, x, result=None, *, max_length=None):
    """Gradient of :func:`logsumexp`: ``grad * exp(x - result)`` per row (``result``, the
    forward output ``[B, *inner]``, is recomputed when not given). Rows whose result is -inf
    get 0."""
    _float_jagged(x)
    trunc = _trunc(max_length)
    g = _per_row(grad, x)
    if result is None:
        result = logsumexp(x, max_length=max_length)
    q = _per_row(result, x, "result", np.float32 if x.is_gpu else np.float64)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _to_dev(logsumexp_backward(cupy.asnumpy(grad), _to_host(x),
                                              cupy.asnumpy(result), max_length=max_length), x)
        return _jagged_like(x, _gpu_rowbcast(x, E_LSE_BWD, a=x.values, p=g, q=q, trunc=trunc))
    return _jagged_like(x, _cpu_bcast(x, g, trunc, lse=q).astype(x.dtype))


# ---- softmax -------------------------------------------------------------------------------
def _softmax(x, axis, dim, max_length, log):
    _float_jagged(x, why="")
    _check_axis(x, axis, dim)
    trunc = _trunc(max_length)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(_softmax, x, axis, dim, max_length, log)
        out = _gpu_fused(x, K_LSE, 0, E_LOGSOFTMAX if log else E_SOFTMAX, trunc)
        return _jagged_like(x, out)
    out = np.empty(_flat(x).shape, dtype=np.float64)
    _cpu.softmax_rows(_cpu_vals(x), x.offsets, trunc, log, out)
    return _jagged_like(x, out.astype(x.dtype))


@on_array_device
def softmax(x, axis=1, *, dim=None, max_length=None):
    """Softmax over each row, per column of ``inner``: JaggedArray like ``x``. Stable for large
    values; items past ``max_length`` and rows of all -inf give 0 (never NaN)."""
    return _softmax(x, axis, dim, max_length, False)


@on_array_device
def log_softmax(x, axis=1, *, dim=None, max_length=None):
    """Log-softmax over each row, per column: JaggedArray like ``x``; 0 past ``max_length`` and
    for rows of all -inf."""
    return _softmax(x, axis, dim, max_length, True)


def _softmax_backward(grad, out, max_length, log):
    _float_jagged(out, "out")
    _float_jagged(grad, "grad")
    _check_same(out, grad, "out", "grad")
    trunc = _trunc(max_length)
    if grad.dtype != out.dtype:
        grad = grad._with_values(grad.values.astype(out.dtype))
    if out.is_gpu:
        if not _kernel_ok(out):
            return _to_dev(_softmax_backward(_to_host(grad), _to_host(out), max_length, log), out)
        res = _gpu_fused(grad, K_SUM if log else K_DOT, 0,
                         E_LOGSOFTMAX_BWD if log else E_SOFTMAX_BWD, trunc, b=out)
        return _jagged_like(out, res)
    res = np.empty(_flat(out).shape, dtype=np.float64)
    _cpu.softmax_backward_rows(_cpu_vals(grad), _cpu_vals(out), out.offsets, trunc, log, res)
    return _jagged_like(out, res.astype(out.dtype))


@on_array_device
def softmax_backward(grad, out, *, max_length=None):
    """Gradient of :func:`softmax` from the gradient ``grad`` of its output and the output
    ``out`` itself: ``out * (grad - sum(grad * out))`` per row; 0 past ``max_length``."""
    return _softmax_backward(grad, out, max_length, False)


@on_array_device
def log_softmax_backward(grad, out, *, max_length=None):
    """Gradient of :func:`log_softmax` from ``grad`` and its output ``out``:
    ``grad - exp(out) * sum(grad)`` per row; 0 past ``max_length``, and 0 for a row (column) that
    was all -inf (its output is 0 whatever the input; told by its first two outputs being 0,
    which no log-softmax row of two or more items has)."""
    return _softmax_backward(grad, out, max_length, True)


# ---- cumsum --------------------------------------------------------------------------------
@on_array_device
def cumsum(x, axis=1, *, dim=None, exclusive=False, reverse=False):
    """Cumulative sum along each row, per column: JaggedArray like ``x`` (floats keep their
    dtype with fp32 accumulation on the GPU; signed integers and bool give int64, unsigned
    ones uint64). ``exclusive``: item i gets the sum of the items before it (the first gets 0).
    ``reverse``: scan from the row's end."""
    _check_numeric(x)
    _check_axis(x, axis, dim)
    if x.is_gpu:
        if not _kernel_ok(x):
            return _via_host(cumsum, x, exclusive=exclusive, reverse=reverse)
        return _jagged_like(x, _gpu_cumsum(x, bool(exclusive), bool(reverse)))
    v = _cpu_vals(x)
    acc = _acc_dtype(x.dtype)
    out = np.empty(v.shape, dtype=acc)
    _cpu.cumsum_rows(v, x.offsets, bool(exclusive), bool(reverse), acc.type(0), out)
    return _jagged_like(x, out.astype(x.dtype if _is_float(x.dtype) else acc))


@on_array_device
def cumsum_backward(grad, *, exclusive=False, reverse=False):
    """Gradient of :func:`cumsum` from the gradient of its output (a JaggedArray): the same
    scan run the other way."""
    _float_jagged(grad, "grad")
    return cumsum(grad, exclusive=exclusive, reverse=not reverse)


def _unit_carries(part, co, B, reverse):
    """Carry-in of every unit of a chunked scan from the units' sums ``part [nunits, C]``: the
    sum of the row's earlier (``reverse``: later) units, fp64 accumulation (one kernel)."""
    C = part.shape[1]
    carry = cupy.empty_like(part)
    n = B * C
    _kern("unit_carries")((_builtin_min(-(-n // _BLOCK), 4096),), (_BLOCK,),
                          (part, co, _i64(B), _i64(C), _i32(int(reverse)), carry))
    return carry


def _gpu_cumsum(x, exclusive, reverse):
    vals = x.values
    T, C, B = vals.shape[0], _ncols(x), x.nrows
    out = cupy.empty(vals.shape, dtype=x.dtype)
    if T == 0 or C == 0:
        return out
    tn = _TNAME[x.dtype][0]
    V, CT, yt = _geom(C, x.dtype, vals, out)
    chunk, nunits, LPR, split, blocks, co, units = _schedule(x, "scan", C * x.dtype.itemsize,
                                                             _NOTRUNC, CT)
    pa = None
    if split:
        part = cupy.empty((nunits, C), dtype=np.float32)
        _gpu_reduce(x, K_SUM, 0, np.float32, OUT_F32, _NOTRUNC, pass_=2, part=part)
        pa = _unit_carries(part, co, B, reverse)
    # split rows: a block streams a long chunk alone, faster at 2 blocks/SM (more registers) than
    # at 3 (H200, one row of 10**6 bf16 items: 310 vs 397 us); whole rows: see CJ_MINB_S16
    kern = _kern(f"cumsum_rows<{tn}, {V}, {'true' if split else 'false'}>")
    smem = 2 * _SCAN_U * _BLOCK * 16 if LPR > 1 and V * x.dtype.itemsize == 16 else 0
    kern.allow_shared(smem)
    kern((blocks, yt), (_BLOCK,),
         (vals, units, _i64(nunits), _i64(C), _i64(chunk), _i32(CT), _i32(LPR),
          _i32(exclusive), _i32(reverse), _ptr(pa), out), shared_mem=smem)
    return out


# ---- sort / argsort / topk (stable; CuPy / NumPy sorts) --------------------------------------
def _sorted_perm(x, descending):
    """Per column, the stable order of every row's items: flat indices into ``[C, T]``."""
    xp = x.xp
    v = _flat(x)
    C, B = v.shape[1], x.nrows
    key = v.T
    if key.dtype in (np.dtype(np.float16), bfloat16):
        key = key.astype(np.float32)
    if descending:
        # -x for floats; ~x reverses the order of signed and unsigned integers and of bools
        key = -key if key.dtype.kind == "f" else ~key
    if key.dtype.kind == "f":
        key = key + key.dtype.type(0)  # -0.0 -> +0.0: radix sorts would order the two zeros
    key = xp.ascontiguousarray(key).ravel()
    rid, _ = _rows_pos(x)
    group = (xp.arange(C, dtype=np.int64)[:, None] * B + rid[None, :]).ravel()
    kind = {"kind": "stable"} if xp is np else {}
    p1 = xp.argsort(key, **kind)
    p2 = xp.argsort(group[p1], **kind)
    return p1[p2]


def _perm_to_pos(x, perm):
    T, C = x.values.shape[0], _ncols(x)
    src = perm % _builtin_max(T, 1)
    rid, pos = _rows_pos(x)
    return pos[src].reshape(C, T).T


@on_array_device
def argsort(x, axis=1, *, dim=None, descending=False):
    """Stable argsort within each row, per column: JaggedArray (int64 positions within the row)
    like ``x``. NaN sorts last."""
    _check_numeric(x)
    _check_axis(x, axis, dim)
    xp = x.xp
    perm = _sorted_perm(x, descending)
    pos = _perm_to_pos(x, perm)
    return _jagged_like(x, xp.ascontiguousarray(pos))


@on_array_device
def sort(x, axis=1, *, dim=None, descending=False):
    """Stable sort within each row, per column: JaggedArray like ``x``. NaN sorts last."""
    _check_numeric(x)
    _check_axis(x, axis, dim)
    xp = x.xp
    v = _flat(x)
    perm = _sorted_perm(x, descending)
    out = v.T.ravel()[perm].reshape(v.shape[1], v.shape[0]).T
    return _jagged_like(x, xp.ascontiguousarray(out))


@on_array_device
def topk(x, k, axis=1, *, dim=None, largest=True):
    """The ``k`` largest (``largest=False``: smallest) items of each row, per column, in order
    (stable): ``(values, indices)`` JaggedArrays with ``min(len(row), k)`` items per row;
    ``indices`` are int64 positions within the row. NaN ranks last either way, as in ``sort``
    (``torch.topk`` ranks it largest). Needs one device->host sync (output size)."""
    _check_numeric(x)
    _check_axis(x, axis, dim)
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k = _builtin_min(k, _NOTRUNC)  # (k past every row: whole rows)
    xp = x.xp
    v = _flat(x)
    T, C = v.shape
    perm = _sorted_perm(x, largest)
    vals = v.T.ravel()[perm].reshape(C, T).T
    idx = _perm_to_pos(x, perm)
    _, pos = _rows_pos(x)
    keep = pos < k
    off = _off64(x)
    lens = xp.minimum(off[1:] - off[:-1], k)
    new_off = xp.zeros(x.nrows + 1, dtype=x.offsets.dtype)  # the input's offsets dtype
    new_off[1:] = xp.cumsum(lens)
    J = _jagged_cls()
    ml = _builtin_min(x.max_length, k)

    def mk(a):
        a = xp.ascontiguousarray(a[keep])  # [n, C]: the sync
        return J(a.reshape((a.shape[0], *x.inner_shape)), new_off, max_length=ml, validate=False)

    return mk(vals), mk(idx)


# ---- elementwise -----------------------------------------------------------------------------
_FAST_UFUNCS = {np.add: (E_ADD, E_ADD), np.subtract: (E_SUB, E_RSUB),
                np.multiply: (E_MUL, E_MUL), np.true_divide: (E_DIV, E_RDIV),
                np.maximum: (E_MAXIMUM, E_MAXIMUM), np.minimum: (E_MINIMUM, E_MINIMUM)}


def _broadcasts(tail, inner) -> bool:
    """Whether an operand's per-item shape ``tail`` broadcasts to the items' ``inner`` shape."""
    try:
        return np.broadcast_shapes(tuple(tail), tuple(inner)) == tuple(inner)
    except ValueError:
        return False


def _classify(a, x, name):
    """'jagged' | 'scalar' | 'rows' ([B, *inner]) | 'padded' ([B, Lp, *inner])."""
    J = _jagged_cls()
    if isinstance(a, J):
        _check_same(x, a, "the first JaggedArray operand", name)
        return "jagged"
    if np.isscalar(a) or (hasattr(a, "ndim") and a.ndim == 0) or isinstance(a, (int, float,
                                                                                bool, complex)):
        return "scalar"
    if not is_array(a):  # (a torch / JAX array has ndim and shape too: indexed as one, it
        # became the values of a broken JaggedArray)
        raise not_array(name, a, "a JaggedArray, a scalar, or a NumPy / CuPy array (per-row "
                                 "[B, *inner] or padded [B, max_len, *inner])")
    if is_gpu_array(a) != x.is_gpu:
        raise TypeError(f"{name} is on {'cuda' if is_gpu_array(a) else 'cpu'} but the "
                        f"JaggedArray is on {x.device}; move both to the same device")
    nin = len(x.inner_shape)
    if a.ndim == nin + 1 and a.shape[0] == x.nrows and _broadcasts(a.shape[1:], x.inner_shape):
        return "rows"
    if a.ndim == nin + 2 and a.shape[0] == x.nrows and _broadcasts(a.shape[2:], x.inner_shape):
        if a.shape[1] < x.max_length:
            raise ValueError(f"{name}: padded dense operand has max_len {a.shape[1]} but the "
                             f"longest row has {x.max_length} items")
        return "padded"
    raise ValueError(
        f"{name} of shape {tuple(a.shape)} does not match a jagged array of shape {x.shape}: "
        f"expected a per-row array [B, *inner] = {(x.nrows, *x.inner_shape)} or a padded "
        f"array [B, max_len >= {x.max_length}, *inner]")


@on_array_device
def elementwise(ufunc, *inputs, **kwargs):
    """Apply a NumPy ufunc to JaggedArrays of equal structure, scalars, per-row arrays
    ``[B, *inner]`` (broadcast over each row) and padded dense arrays ``[B, max_len, *inner]``
    (item j of row b meets ``dense[b, j]``, as FBGEMM's ``jagged_dense_elementwise_add``);
    returns JaggedArray(s) with the structure of the jagged operand(s). Mismatched structures
    raise ``ValueError``."""
    J = _jagged_cls()
    x = next((a for a in inputs if isinstance(a, J)), None)
    if x is None:
        raise TypeError("elementwise needs at least one JaggedArray operand")
    if ufunc.signature is not None:
        raise TypeError(f"{ufunc.__name__} is a generalized ufunc (core dimensions "
                        f"{ufunc.signature}): not defined for a JaggedArray; apply it to "
                        f"x.values, or per row")
    out = kwargs.pop("out", None)
    if out is not None:  # JaggedArrays of x's structure (x += y: out=(x,))
        out = out if isinstance(out, tuple) else (out,)
        for i, o in enumerate(out):
            if not isinstance(o, J):
                raise TypeError(f"out: a JaggedArray like the operands, got {type(o).__name__}")
            _check_same(x, o, "the first JaggedArray operand", f"out[{i}]")
    kinds = [_classify(a, x, f"operand {i}") for i, a in enumerate(inputs)]
    # fast path: GPU kernel for jagged (+) per-row / padded of the same float dtype
    if (x.is_gpu and not kwargs and out is None and ufunc in _FAST_UFUNCS and len(inputs) == 2
            and _kernel_ok(x) and sorted(kinds) in (["jagged", "rows"], ["jagged", "padded"])):
        ji = kinds.index("jagged")
        other = inputs[1 - ji]
        padded = kinds[1 - ji] == "padded"
        # the kernel reads the operand's items as they are: only exact item shapes (a [B, 1]
        # weight against [T, D] items broadcasts through the generic path below)
        if other.dtype == x.dtype and tuple(other.shape[2 if padded else 1:]) == x.inner_shape:
            mode = _FAST_UFUNCS[ufunc][ji]
            j = inputs[ji]
            p = cupy.ascontiguousarray(other).reshape(
                (x.nrows, other.shape[1], _ncols(x)) if padded else (x.nrows, _ncols(x)))
            return _jagged_like(x, _gpu_rowbcast(j, mode, a=j.values, p=p, padded=padded))
    ops = []
    for a, kind in zip(inputs, kinds):
        if kind == "jagged":
            ops.append(a.values)
        elif kind == "scalar":
            ops.append(a)
        elif kind == "rows":
            rid, _ = _rows_pos(x)
            ops.append(a[rid])
        else:
            rid, pos = _rows_pos(x)
            ops.append(a[rid, pos])
    if out is not None:
        ufunc(*ops, out=tuple(o.values for o in out), **kwargs)
        return out if len(out) > 1 else out[0]
    res = ufunc(*ops, **kwargs)
    if isinstance(res, tuple):
        return tuple(x._with_values(r) for r in res)
    return x._with_values(res)


@on_array_device
def jagged_dense_elementwise_add(x, dense):
    """FBGEMM's ``jagged_dense_elementwise_add``: ``x + dense`` where ``dense`` is padded
    ``[B, max_len >= x.max_length, *inner]`` (item j of row b meets ``dense[b, j]``) or per-row
    ``[B, *inner]``; JaggedArray like ``x``."""
    _check_jagged(x)
    return elementwise(np.add, x, dense)


@on_array_device
def jagged_dense_elementwise_mul(x, dense):
    """FBGEMM's ``jagged_dense_elementwise_mul``: ``x * dense`` (see
    :func:`jagged_dense_elementwise_add`)."""
    _check_jagged(x)
    return elementwise(np.multiply, x, dense)


@on_array_device
def array_ufunc(x, ufunc, method, *inputs, **kwargs):
    """``JaggedArray.__array_ufunc__``: ``method == "__call__"`` through :func:`elementwise`."""
    if method != "__call__":
        return NotImplemented
    return elementwise(ufunc, *inputs, **kwargs)
