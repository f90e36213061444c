"""``python -m cujagged``: jagged vs padded on a realistic batch of user histories.

Builds ``B`` histories with log-normal lengths (mean ``fill * max_len``, capped at ``max_len``, a
few empty rows) of ``D``-dim embeddings, runs each cujagged op that exists on the best backend
present (CUDA through CuPy, else NumPy + Numba) and the same op done the padded way on the dense
``[B, max_len, D]`` tensor with plain NumPy/CuPy, checks that both agree, and prints time and peak
memory of both. Ops that this build lacks are listed as skipped.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import sys
import time
import tracemalloc

import numpy as np

import cujagged
from cujagged._backend import bfloat16, cupy, gpu_available

_MIB = 2**20


# ---- the batch -----------------------------------------------------------------------------------
def history_lengths(B: int, max_len: int, fill: float, rng, empty_frac: float = 0.03):
    """Row lengths ``[B]`` (int64): log-normal (sigma 1) with mean ``fill * max_len``, capped at
    ``max_len``; about ``empty_frac`` of the users have no history at all."""
    mean = max(fill * max_len, 1e-3)
    lens = rng.lognormal(np.log(mean) - 0.5, 1.0, size=B)
    empty = rng.random(B) < empty_frac
    lens = np.minimum(np.round(lens).astype(np.int64), max_len)
    for _ in range(4):  # rescale so the mean hits the target despite the cap and the empty rows
        cur = lens.mean()
        if cur <= 0:
            break
        lens = np.minimum(np.round(lens * (mean / cur)).astype(np.int64), max_len)
        lens[empty] = 0
    return lens


def _f32(a):
    """float32 copy of ``a`` (bfloat16 through its bits, which works even where CuPy has no
    bfloat16 arithmetic)."""
    xp = cupy if (cupy is not None and isinstance(a, cupy.ndarray)) else np
    if bfloat16 is not None and a.dtype == bfloat16:
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32) if a.dtype != np.float32 else xp.asarray(a)


def _rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float32 on the arrays' device; NaN anywhere in ``a`` gives inf."""
    a, b = _f32(a), _f32(b)
    xp = cupy if (cupy is not None and isinstance(a, cupy.ndarray)) else np
    if bool(xp.isnan(a).any()):
        return math.inf
    den = float(xp.linalg.norm(b.ravel()))
    num = float(xp.linalg.norm((a - b).ravel()))
    return num / den if den > 0 else num


def _bits_scatter(xp, values, row_ids, pos, B, L):
    """Dense ``[B, L, *inner]`` zeros with ``values`` scattered at ``(row_ids, pos)`` (a bit copy,
    so it works for any dtype)."""
    ints = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[values.dtype.itemsize]
    dense = xp.zeros((B, L, *values.shape[1:]), dtype=values.dtype)
    dense.view(ints)[row_ids, pos] = values.view(ints)
    return dense


# ---- measurement ---------------------------------------------------------------------------------
class Device:
    """Timing and peak memory on the GPU (CUDA events, CuPy pool) or the CPU (perf_counter,
    tracemalloc of NumPy allocations)."""

    def __init__(self, gpu: bool):
        self.gpu = gpu
        self.xp = cupy if gpu else np

    def sync(self):
        if self.gpu:
            cupy.cuda.get_current_stream().synchronize()

    def time_ms(self, fn, budget_s: float) -> float:
        """Median ms of ``fn()`` (already warmed up) over as many reps as fit in the budget."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - t0
        reps = int(min(20 if self.gpu else 5, max(1, budget_s / max(first, 1e-6))))
        if reps <= 1:
            return first * 1e3
        times = []
        if self.gpu:
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            for _ in range(reps):
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(cupy.cuda.get_elapsed_time(start, stop))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_extra_bytes(self, fn):
        """(result of one ``fn()``, peak bytes allocated during it beyond what existed before)."""
        if self.gpu:
            pool = cupy.get_default_memory_pool()
            self.sync()
            base = pool.used_bytes()
            state = {"max": base}

            def malloc(size):
                mem = pool.malloc(size)
                state["max"] = max(state["max"], pool.used_bytes())
                return mem

            cupy.cuda.set_allocator(malloc)
            try:
                out = fn()
                self.sync()
            finally:
                cupy.cuda.set_allocator(pool.malloc)
            return out, state["max"] - base
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            out = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return out, max(peak - base, 0)


def _nbytes(*arrays) -> int:
    return sum(int(a.nbytes) for a in arrays)


# ---- the ops -------------------------------------------------------------------------------------
def _values_of(out):
    """The flat values of an op's result (a JaggedArray, an array, or a tuple led by one)."""
    if isinstance(out, tuple):
        out = out[0]
    return out.values if isinstance(out, cujagged.JaggedArray) else out


def _masked_rows(dense, row_ids, pos):
    """The jagged items of a padded result: ``dense[row_ids, pos]``."""
    return dense[row_ids, pos]


def build_ops(ctx):
    """(name, missing-reason or None, jagged (fn, input bytes), padded factory, checker)."""
    xp, x, B, L = ctx["xp"], ctx["x"], ctx["B"], ctx["L"]
    rid, pos, lens, mask = ctx["row_ids"], ctx["pos"], ctx["lens"], ctx["mask"]
    JA = cujagged.JaggedArray
    ops = []

    # to_padded: the padded way scatters with fancy indexing
    def tp_padded(dense, vals):
        return (lambda: _bits_scatter(xp, vals, rid, pos, B, L)), _nbytes(vals, rid, pos)

    ops.append(dict(
        name="to_padded", missing=None if hasattr(cujagged, "to_padded") else
        "cujagged.to_padded not in this build",
        jagged=lambda: ((lambda: cujagged.to_padded(x, L)), _nbytes(x.values, x.offsets)),
        padded=tp_padded, check=lambda j, p: _rel_err(j, p)))

    # from_padded: the padded way gathers with a boolean mask
    def fp_padded(dense, vals):
        return (lambda: dense[mask]), _nbytes(dense, mask)

    ops.append(dict(
        name="from_padded", missing=None if hasattr(cujagged, "from_padded") else
        "cujagged.from_padded not in this build",
        jagged=lambda: ((lambda: cujagged.from_padded(ctx["dense"], lengths=lens)),
                        _nbytes(ctx["dense"], lens)),
        padded=fp_padded, check=lambda j, p: _rel_err(_values_of(j), p)))

    # sum over each history: the padding is zeros, so the dense sum is right
    def sum_padded(dense, vals):
        return (lambda: dense.sum(axis=1)), _nbytes(dense)

    ops.append(dict(
        name="sum(axis=1)",
        missing=None if hasattr(JA, "sum") else "JaggedArray.sum not in this build",
        jagged=lambda: ((lambda: x.sum(axis=1)), _nbytes(x.values, x.offsets)),
        padded=sum_padded, check=lambda j, p: _rel_err(_values_of(j), p)))

    # softmax over each history (per feature): the padded way masks the padding with -inf
    def softmax_padded(dense, vals):
        neg = xp.asarray(-np.inf, dtype=dense.dtype)

        def fn():
            d = xp.where(mask[:, :, None], dense, neg)
            e = xp.exp(d - d.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        return fn, _nbytes(dense, mask)

    ops.append(dict(
        name="softmax", missing=None if hasattr(JA, "softmax") else
        "JaggedArray.softmax not in this build",
        jagged=lambda: ((lambda: x.softmax()), _nbytes(x.values, x.offsets)),
        padded=softmax_padded,
        check=lambda j, p: _rel_err(_values_of(j), _masked_rows(p, rid, pos))))

    # self-attention within each history
    attn = getattr(cujagged, "jagged_flash_attention", None)
    H = ctx["heads"]
    Dh = ctx["D"] // H
    qkv = ctx["qkv"]

    def attn_jagged():
        q, k, v = qkv
        kw = {}
        params = inspect.signature(attn).parameters
        if "max_seq_len" in params:
            kw["max_seq_len"] = L
        return (lambda: attn(q, k, v, x.offsets, **kw)), _nbytes(q, k, v, x.offsets)

    def attn_padded(dense, vals):
        # q, k, v padded: [B, L, H, Dh] -> [B, H, L, Dh]; keys past each length masked with -inf
        dq, dk, dv = (_bits_scatter(xp, a, rid, pos, B, L) for a in ctx["qkv_as"](vals.dtype))
        bias = xp.where(mask, 0.0, -np.inf).astype(dq.dtype)[:, None, None, :]
        scale = xp.asarray(1.0 / math.sqrt(Dh), dtype=dq.dtype)

        def fn():
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (dq, dk, dv))
            s = xp.matmul(q, k.transpose(0, 1, 3, 2)) * scale + bias
            p = xp.exp(s - s.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            return xp.matmul(p, v).transpose(0, 2, 1, 3)  # [B, L, H, Dh]

        return fn, _nbytes(dq, dk, dv, mask)

    ops.append(dict(
        name=f"attention(H={H},D={Dh})", missing=None if attn is not None else
        "cujagged.jagged_flash_attention not in this build",
        jagged=attn_jagged, padded=attn_padded,
        check=lambda j, p: _rel_err(_values_of(j).reshape(-1, H, Dh),
                                    _masked_rows(p, rid, pos))))
    return ops


def _run_op(op, dev, dtype, ctx, vals, tol, budget, notes):
    """Measure one op both ways: (table row or None, failed)."""
    name = op["name"]
    if op["missing"]:
        notes.append(f"{name}: skipped ({op['missing']})")
        return None, False
    try:
        jfn, jin = op["jagged"]()
        jfn()  # warm-up (JIT / NVRTC compile)
        jout, jextra = dev.peak_extra_bytes(jfn)
        jms = dev.time_ms(jfn, budget)
    except Exception as e:  # an op present but failing is reported, not hidden
        notes.append(f"{name}: cujagged failed: {type(e).__name__}: {e}")
        return None, True
    pdt, pnote = dtype, ""
    try:
        pfn, pin = op["padded"](ctx["dense"], vals)
        pfn()
    except Exception as e:
        if dtype.itemsize >= 4:
            notes.append(f"{name}: padded way failed: {type(e).__name__}: {e}")
            return (name, jms, None, jin + jextra, None, "n/a"), False
        # CuPy may lack this op in 16-bit floats: do the padded way in float32
        pdt, pnote = np.dtype(np.float32), "*"
        notes.append(f"* {name}: padded way in float32 ({type(e).__name__} in {dtype})")
        try:
            pfn, pin = op["padded"](_f32(ctx["dense"]), _f32(vals))
            pfn()
        except Exception as e2:
            notes.append(f"{name}: padded way failed: {type(e2).__name__}: {e2}")
            return (name, jms, None, jin + jextra, None, "n/a"), False
    pout, pextra = dev.peak_extra_bytes(pfn)
    pms = dev.time_ms(pfn, budget)
    try:
        err = op["check"](jout, pout)
    except Exception as e:
        err = math.nan
        notes.append(f"{name}: could not compare: {type(e).__name__}: {e}")
    tol_op = tol if pdt == dtype else max(tol, 3e-2)
    ok = err <= tol_op
    del jout, pout
    return (name + pnote, jms, pms, jin + jextra, pin + pextra,
            "ok" if ok else f"DIFF {err:.1e}"), not ok


# ---- main ----------------------------------------------------------------------------------------
def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m cujagged",
        description="cujagged demo: jagged ops vs the same ops on the padded tensor.")
    p.add_argument("--batch", type=int, default=None, help="users per batch (GPU 1024, CPU 256)")
    p.add_argument("--max-len", type=int, default=None, help="longest history (GPU 1024, CPU 256)")
    p.add_argument("--dim", type=int, default=128, help="embedding size D (default 128)")
    p.add_argument("--heads", type=int, default=1, help="attention heads (D is split among them)")
    p.add_argument("--fill", type=float, default=0.25,
                   help="mean length / max length (default 0.25)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32", "float64"],
                   help="values dtype (GPU bfloat16; the CPU computes bfloat16 as float32)")
    p.add_argument("--cpu", action="store_true", help="force the CPU (NumPy + Numba) backend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if an op that exists fails or disagrees with the padded way")
    a = p.parse_args(argv)
    for name in ("batch", "max_len"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.dim <= 0 or a.heads <= 0 or a.dim % a.heads:
        p.error(f"--dim ({a.dim}) must be a positive multiple of --heads ({a.heads})")
    if not 0 < a.fill <= 1:
        p.error("--fill must be in (0, 1]")
    return a


def main(argv=None) -> int:
    args = _parse(argv)
    gpu = gpu_available() and not args.cpu
    if gpu:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"cujagged {cujagged.__version__} demo on the GPU: {name} "
              f"(CUDA kernels through CuPy {cupy.__version__})")
    else:
        why = "--cpu given" if args.cpu else "no CUDA GPU visible to CuPy"
        print(f"cujagged {cujagged.__version__} demo on the CPU: NumPy + Numba backend ({why})")
    B = args.batch if args.batch is not None else (1024 if gpu else 256)
    L = args.max_len if args.max_len is not None else (1024 if gpu else 256)
    D, H = args.dim, args.heads
    dtype = np.dtype(bfloat16 if args.dtype in (None, "bfloat16") else args.dtype)
    notes = []
    if not gpu and dtype == bfloat16:
        dtype = np.dtype(np.float32)
        notes.append("bfloat16 -> float32 on the CPU (Numba has no bfloat16)")
    dev = Device(gpu)
    xp = dev.xp
    budget = 0.3 if gpu else 0.6

    rng = np.random.default_rng(args.seed)
    lens_h = history_lengths(B, L, args.fill, rng)
    off_h = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lens_h, out=off_h[1:])
    T = int(off_h[-1])

    def rand(shape, dt):
        return xp.asarray(rng.standard_normal(shape, dtype=np.float32).astype(dt))

    vals = rand((T, D), dtype)
    offsets = xp.asarray(off_h)
    x = cujagged.JaggedArray(vals, offsets, max_length=int(lens_h.max(initial=0)))
    rid_h = np.repeat(np.arange(B), lens_h)
    pos_h = np.arange(T) - np.repeat(off_h[:-1], lens_h)
    rid, pos = xp.asarray(rid_h), xp.asarray(pos_h)
    lens = xp.asarray(lens_h)
    mask = xp.arange(L)[None, :] < lens[:, None]
    qkv_h = [rng.standard_normal((T, H, D // H), dtype=np.float32) for _ in range(3)]
    ctx = dict(xp=xp, x=x, B=B, L=L, D=D, heads=H, row_ids=rid, pos=pos, lens=lens, mask=mask,
               dense=_bits_scatter(xp, vals, rid, pos, B, L),
               qkv=[xp.asarray(a.astype(dtype)) for a in qkv_h],
               qkv_as=lambda dt: [xp.asarray(a.astype(dt)) for a in qkv_h])
    print(f"batch: B={B} users, max_len={L}, D={D}, {dtype}, fill {T / (B * L):.2f} "
          f"(T={T} items, {int((lens_h == 0).sum())} empty rows); padded tensor "
          f"{B * L * D * dtype.itemsize / _MIB:.1f} MiB, jagged values "
          f"{T * D * dtype.itemsize / _MIB:.1f} MiB")

    tol = {np.dtype(np.float32): 2e-3, np.dtype(np.float64): 1e-6}.get(dtype, 3e-2)
    rows, failed = [], False
    for op in build_ops(ctx):
        with np.errstate(all="ignore"):  # empty rows give NaN in the padded way; they are masked
            row, bad = _run_op(op, dev, dtype, ctx, vals, tol, budget, notes)
        failed |= bad
        if row is not None:
            rows.append(row)

    hdr = ("op", "jagged ms", "padded ms", "speedup", "jagged MiB", "padded MiB", "mem ratio",
           "check")
    table = [hdr]
    for name, jms, pms, jb, pb, chk in rows:
        table.append((name, f"{jms:.3f}", "-" if pms is None else f"{pms:.3f}",
                      "-" if pms is None else f"{pms / jms:.2f}x", f"{jb / _MIB:.1f}",
                      "-" if pb is None else f"{pb / _MIB:.1f}",
                      "-" if pb is None else f"{pb / max(jb, 1):.2f}x", chk))
    widths = [max(len(r[i]) for r in table) for i in range(len(hdr))]
    print()
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("padded way = the same op with plain " + ("CuPy" if gpu else "NumPy") +
          " on the dense [B, max_len, ...] tensor (to_padded: fancy-index scatter; from_padded: "
          "boolean-mask gather); speedup = padded ms / jagged ms; MiB = inputs + peak extra "
          "allocation (" + ("CuPy pool" if gpu else "NumPy allocations, tracemalloc") + ")")
    for n in notes:
        print("note:", n)
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
