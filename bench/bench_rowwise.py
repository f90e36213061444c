"""Row-wise ops on the GPU: reductions, softmax, cumsum, elementwise, backward.

Reference shape: B=1024, max_len=1024, fill 0.25, inner D=128, bf16 and fp32. Regimes: mean row
length 8 (B=16384, max_len=32), mean 4000 (B=256, max_len=16000) and one row of 10**6 items among
1023 rows of mean length 8 ("row1e6"). Bytes = inputs read once +
outputs written once. Peers (same process, same inputs): ``torch.segment_reduce(..., lengths=)``
for sum/max, NJT ``torch.softmax(njt, dim=1)``, and the padded round trip
(``_jagged_to_padded_dense_forward`` -> softmax -> ``_padded_dense_to_jagged_forward``). At the
reference shape also dense torch kernels of the same bytes (a full sum, a fill, a copy): the
bandwidth a plain kernel reaches at this size, fixed costs included. ``--quick`` (the GPU check):
every op at the reference shape in bf16 and fp32 and in every regime in bf16 (each op has a
floor in each regime), peers as above.

``python -m bench.bench_rowwise [--quick] [--json PATH]``
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.harness import copy_entry, cupy_peak, device_fields, entry, lengths_for, rotate, time_ms

# (label, B, max_len, fill, long_row): lengths from lengths_for(B, max_len, fill); with long_row,
# row B / 2 has long_row items instead (max_len caps the other rows)
REGIMES = [
    ("ref", 1024, 1024, 0.25, 0),
    ("mean8", 16384, 32, 0.25, 0),
    ("mean4000", 256, 16000, 0.25, 0),
    ("row1e6", 1024, 32, 0.25, 10**6),  # mean-8 rows plus one row of 10**6 items
]


def _inputs(B, max_len, fill, D, dtype, n_sets=2, seed=0, long_row=0):
    import cupy

    from cujagged import JaggedArray

    lens = lengths_for(B, max_len, fill, seed=seed)
    if long_row:
        lens[B // 2] = long_row
    off = np.zeros(B + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    T = int(off[-1])
    rng = cupy.random.default_rng(seed)
    sets = []
    for _ in range(n_sets):
        v = rng.standard_normal((T, D), dtype=np.float32).astype(dtype)
        sets.append(JaggedArray(v, cupy.asarray(off), max_length=int(lens.max()), validate=False))
    return sets, lens


def _torch_view(a):
    """A torch tensor sharing ``a``'s memory (bf16 travels as uint16 bits)."""
    import torch

    from cujagged import bfloat16

    if a.dtype == bfloat16:
        return torch.from_dlpack(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


def _cj_ops(R):
    """name -> (fn(x, aux) , bytes(x) multiplier info)."""
    return {
        "sum_fwd": lambda x, a: R.sum(x),
        "mean_fwd": lambda x, a: R.mean(x),
        "max_fwd": lambda x, a: R.max(x),
        "min_fwd": lambda x, a: R.min(x),
        "argmax_fwd": lambda x, a: R.argmax(x),
        "argmin_fwd": lambda x, a: R.argmin(x),
        "prod_fwd": lambda x, a: R.prod(x),
        "logsumexp_fwd": lambda x, a: R.logsumexp(x),
        "any_fwd": lambda x, a: R.any(x),
        "all_fwd": lambda x, a: R.all(x),
        "softmax_fwd": lambda x, a: R.softmax(x),
        "log_softmax_fwd": lambda x, a: R.log_softmax(x),
        "cumsum_fwd": lambda x, a: R.cumsum(x),
        "add_rows_fwd": lambda x, a: x + a["rows"],
        "add_padded_fwd": lambda x, a: x + a["padded"],
        "sum_bwd": lambda x, a: R.sum_backward(a["rows"], x),
        "mean_bwd": lambda x, a: R.mean_backward(a["rows"], x),
        "max_bwd": lambda x, a: R.max_backward(a["rows"], x, indices=a["idx"]),
        "logsumexp_bwd": lambda x, a: R.logsumexp_backward(a["rows"], x, a["lse"]),
        "softmax_bwd": lambda x, a: R.softmax_backward(a["g"], a["y"]),
        "log_softmax_bwd": lambda x, a: R.log_softmax_backward(a["g"], a["y"]),
        "cumsum_bwd": lambda x, a: R.cumsum_backward(x),
    }


def _bytes(name, T, B, D, isz, max_len):
    tv, rv = T * D * isz, B * D * isz
    if name in ("argmax_fwd", "argmin_fwd"):
        return tv + B * D * 8
    if name in ("any_fwd", "all_fwd"):
        return tv + B * D
    if name.endswith("_fwd") and name not in ("softmax_fwd", "log_softmax_fwd", "cumsum_fwd",
                                              "add_rows_fwd", "add_padded_fwd"):
        return tv + rv
    if name in ("softmax_fwd", "log_softmax_fwd", "cumsum_fwd", "cumsum_bwd"):
        return 2 * tv
    if name == "add_rows_fwd":
        return 2 * tv + rv
    if name == "add_padded_fwd":
        return 3 * tv  # the padded operand's real items only
    if name in ("sum_bwd", "mean_bwd"):
        return tv + rv
    if name == "max_bwd":
        return tv + rv + B * D * 8
    if name == "logsumexp_bwd":
        return 2 * tv + 2 * rv
    if name in ("softmax_bwd", "log_softmax_bwd"):
        return 3 * tv
    raise KeyError(name)


def _bench_regime(label, B, max_len, fill, long_row, D, dtype, quick, out):
    import cupy

    from cujagged import rowwise as R

    sets, lens = _inputs(B, max_len, fill, D, dtype, long_row=long_row)
    T = int(lens.sum())
    isz = np.dtype(dtype).itemsize
    params = {"B": B, "max_len": max_len, "fill": fill, "D": D, "dtype": str(np.dtype(dtype)),
              "regime": label, "mean_len": round(float(lens.mean()), 1)}
    aux = []
    for x in sets:
        rows = cupy.random.default_rng(1).standard_normal((B, D), dtype=np.float32).astype(dtype)
        a = {"rows": rows, "idx": R.argmax(x), "lse": R.logsumexp(x), "y": R.softmax(x),
             "g": x}
        if label == "ref":
            a["padded"] = cupy.ones((B, max_len, D), dtype=dtype)
        aux.append(a)
    ops = _cj_ops(R)
    names = list(ops)
    if label != "ref":
        names = [n for n in names if n not in ("add_padded_fwd",)]
    for name in names:
        fn = ops[name]
        it = rotate(list(zip(sets, aux)))

        def run(fn=fn, it=it):
            x, a = next(it)
            return fn(x, a)

        try:
            with cupy_peak() as p:
                run()
            ms = time_ms(run, reps=20 if quick else 30)
            e = entry(name, "cujagged", params, ms, p.mib,
                      nbytes=_bytes(name, T, B, D, isz, max_len))
            e.update(device_fields(run, _bytes(name, T, B, D, isz, max_len)))
            out.append(e)
        except Exception as e:  # keep going: report what failed
            out.append({"name": name, "impl": "cujagged", "params": params,
                        "error": f"{type(e).__name__}: {e}"[:300]})
    _peers(label, sets, lens, B, max_len, D, dtype, params, T, isz, quick, out)


def _peers(label, sets, lens, B, max_len, D, dtype, params, T, isz, quick, out):
    try:
        import torch
    except ImportError:
        return
    tvals = [_torch_view(x.values) for x in sets]
    toff = torch.from_dlpack(sets[0].offsets)
    tlens = torch.as_tensor(lens, device="cuda")
    tv = T * D * isz
    ml = int(lens.max())

    def add(name, impl, fn, nbytes):
        it = rotate(tvals)
        try:
            ms = time_ms(lambda: fn(next(it)), reps=20 if quick else 30)
            e = entry(name, impl, params, ms, nbytes=nbytes)
            e.update(device_fields(lambda: fn(next(it)), nbytes))
            out.append(e)
        except Exception as e:
            out.append({"name": name, "impl": impl, "params": params,
                        "error": f"{type(e).__name__}: {e}"[:300]})

    rv = B * D * isz
    if label == "ref":
        # what a dense kernel of the same bytes reaches at this size (launch, ramp and tail
        # included, unlike the 1 GiB copy): a full sum (read only), a fill (write only), a copy
        flat = [v.view(torch.float32) if v.dtype == torch.bfloat16 else v for v in tvals]
        it_f = rotate(flat)
        dst = torch.empty_like(tvals[0])
        add("sum_fwd", "dense_sum_same_bytes", lambda v: next(it_f).sum(), tv)
        add("sum_bwd", "dense_fill_same_bytes", lambda v: dst.fill_(1), tv)
        add("softmax_fwd", "dense_copy_same_bytes", lambda v: dst.copy_(v), 2 * tv)
    add("sum_fwd", "segment_reduce",
        lambda v: torch.segment_reduce(v, "sum", lengths=tlens, axis=0, unsafe=True), tv + rv)
    add("max_fwd", "segment_reduce",
        lambda v: torch.segment_reduce(v, "max", lengths=tlens, axis=0, unsafe=True), tv + rv)

    def njt_softmax(v):
        nt = torch.nested.nested_tensor_from_jagged(v, toff)
        return torch.softmax(nt, dim=1)

    if label == "row1e6":  # the padded forms would need B * 10**6 items
        return
    add("softmax_fwd", "njt", njt_softmax, 2 * tv)

    def padded_softmax(v):
        d = torch.ops.aten._jagged_to_padded_dense_forward(v, [toff], [ml], float("-inf"))
        s = torch.softmax(d, dim=1)
        return torch.ops.aten._padded_dense_to_jagged_forward(s, [toff], T)

    add("softmax_fwd", "padded_roundtrip", padded_softmax, 2 * tv)


def run(quick: bool = False, verbose: bool = False) -> list[dict]:
    from cujagged import bfloat16

    out = [copy_entry()]
    if verbose:
        print(_table(out), flush=True)
    regimes = REGIMES
    for label, B, max_len, fill, long_row in regimes:
        for dtype in (bfloat16, np.float32):
            if quick and label != "ref" and dtype != bfloat16:
                continue
            n0 = len(out)
            _bench_regime(label, B, max_len, fill, long_row, 128, dtype, quick, out)
            if verbose:
                print(_table(out[:1] + out[n0:], header=False), flush=True)
    return out


def _table(res, header=True):
    copy = next(e for e in res if e["name"] == "copy")["gbps"]
    lines = [f"copy bandwidth: {copy} GB/s"] if header else []
    for e in res:
        if e["name"] == "copy":
            continue
        p = e["params"]
        if "error" in e:
            lines.append(f"{p['regime']:8s} {p['dtype']:8s} {e['name']:16s} {e['impl']:16s} "
                         f"ERROR {e['error'][:100]}")
            continue
        pct, pct_b = (100 * e.get(k, 0) / copy for k in ("gbps", "gbps_batched"))
        lines.append(f"{p['regime']:8s} {p['dtype']:8s} {e['name']:16s} {e['impl']:16s} "
                     f"{e['ms']:8.4f} ms {pct:5.1f}% | batched {e.get('ms_batched', 0):8.4f} ms "
                     f"{pct_b:5.1f}% | host {e.get('host_us', 0):6.1f} us")
    return "\n".join(lines)


def _compile_one(name):
    from cujagged.rowwise import _FAM

    _FAM.get(name)
    return name


def precompile(workers: int = 16) -> None:
    """Fill CuPy's kernel disk cache with every rowwise instantiation, in parallel processes."""
    import multiprocessing as mp

    from cujagged.rowwise import _FAM

    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_compile_one, _FAM.name_expressions)


if __name__ == "__main__":
    if "--precompile" in sys.argv:
        precompile()
        sys.exit(0)
    quick = "--quick" in sys.argv
    res = run(quick=quick, verbose=True)
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(res, f, indent=1)
