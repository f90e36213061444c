"""Sweep of rowwise.cu compile-time knobs and scheduling thresholds at the reference shape
(B=1024, max_len=1024, fill 0.25, D=128) or another regime of ``bench.bench_rowwise``: each
variant rebuilds the kernel family with extra ``-D`` options and/or sets
``cujagged.rowwise._SCHED`` entries, and times the same ops on the same inputs in one process.
``PYTHONPATH=. python3 -m bench.rowwise_variants [OUT.json] [--regime=row1e6] [--dtypes=bfloat16]
[--ops=all|cumsum,softmax]
[-DCJ_X=1,whole_reduce=131072 ...]`` (variants: comma-separated lists of ``-D`` options and
``key=bytes`` threshold overrides; the default is always timed first).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.bench_rowwise import REGIMES, _inputs
from bench.harness import copy_entry, gpu_time_ms, rotate, time_ms

OPS = ("sum", "mean", "max", "argmax", "logsumexp", "softmax", "cumsum", "cumsum_backward",
       "softmax_backward")
# --ops=all: every reduction and every backward too
ALL_OPS = ("sum", "mean", "max", "min", "argmax", "argmin", "prod", "logsumexp", "any", "all",
           "softmax", "log_softmax", "cumsum", "sum_backward", "mean_backward", "max_backward",
           "logsumexp_backward", "softmax_backward", "log_softmax_backward", "cumsum_backward")


def _op(R, op, x, x2):
    """(function of one input set, the arrays it reads): x2 is another set of the same
    structure (the incoming gradient of the backward ops, not the same memory as x)."""
    import cupy

    if op in ("softmax_backward", "log_softmax_backward"):
        y = (R.softmax if op == "softmax_backward" else R.log_softmax)(x)
        return (lambda: getattr(R, op)(x2, y)), [x2.values, y.values]
    if op in ("sum_backward", "mean_backward", "max_backward", "logsumexp_backward"):
        g = cupy.ones((x.nrows, *x.inner_shape), dtype=x.dtype)
        if op == "max_backward":
            idx = R.argmax(x)
            return (lambda: R.max_backward(g, x, indices=idx)), [g, idx]
        if op == "logsumexp_backward":
            lse = R.logsumexp(x)
            return (lambda: R.logsumexp_backward(g, x, lse)), [g, x.values, lse]
        return (lambda: getattr(R, op)(g, x)), [g]
    return (lambda: getattr(R, op)(x)), [x.values]


def main(argv: list[str]) -> None:
    import cupy

    import cujagged.rowwise as R
    from cujagged import bfloat16
    from cujagged._kernels import KernelFamily

    out = argv[0] if argv and argv[0].endswith(".json") else None
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
    ops = flags.get("ops", ",".join(OPS))
    ops = ALL_OPS if ops == "all" else tuple(ops.split(","))  # a comma list of rowwise functions
    shape = next(r[1:] for r in REGIMES if r[0] == flags.get("regime", "ref"))
    dtypes = [bfloat16 if d == "bfloat16" else np.dtype(d)
              for d in flags.get("dtypes", "bfloat16,float32").split(",")]
    variants = [()] + [tuple(a.split(",")) for a in argv
                       if not a.endswith(".json") and not a.startswith("--")]
    copy = copy_entry()
    res = {"copy_gbps": copy["gbps"], "rows": []}
    names = R._instantiations()
    sched0, scan_u0 = dict(R._SCHED), R._SCAN_U
    for dt in dtypes:
        sets, lens = _inputs(*shape[:3], 128, dt, long_row=shape[3])
        for opts in variants:
            # -DCJ_SCAN_U=n also sizes the scan's ring on the host (rowwise._SCAN_U)
            R._SCAN_U = next((int(o.split("=")[1]) for o in opts if o.startswith("-DCJ_SCAN_U=")),
                             scan_u0)
            R._FAM = KernelFamily("rowwise.cu", names, options=[f"-DCJ_SCAN_U={R._SCAN_U}"] + [
                o for o in opts if o[:2] == "-D" and not o.startswith("-DCJ_SCAN_U=")])
            R._KERNELS.clear()
            R._SCHED.clear()
            R._SCHED.update(sched0)
            R._SCHED.update({k: int(v) for k, v in (o.split("=") for o in opts if o[:2] != "-D")})
            for x in sets:
                x._cache.clear()
            for op in ops:
                # per input set: the call and what it reads (grads: another set, one structure)
                calls = [_op(R, op, x, x._with_values(sets[i - 1].values))
                         for i, x in enumerate(sets)]
                r0 = calls[0][0]()
                r0 = r0.values if hasattr(r0, "values") else r0
                moved = sum(a.nbytes for a in calls[0][1]) + r0.nbytes  # read once + written
                it = rotate([c[0] for c in calls])
                ms = time_ms(lambda it=it: next(it)(), reps=30)
                dev = gpu_time_ms(lambda it=it: next(it)())[0]
                pct = 100 * moved / (dev * 1e-3) / 1e9 / copy["gbps"]
                row = {"dtype": str(np.dtype(dt)), "regime": flags.get("regime", "ref"),
                       "opts": list(opts), "op": op,
                       "ms": round(ms, 5), "gpu_ms": round(dev, 5), "pct_copy_gpu": round(pct, 1)}
                res["rows"].append(row)
                print(f"{row['dtype']:9s} {' '.join(opts) or 'default':32s} {op:10s} "
                      f"{ms * 1e3:8.2f} us (device {dev * 1e3:7.2f} us, {pct:5.1f}% copy)",
                      flush=True)
        del sets
        cupy.get_default_memory_pool().free_all_blocks()
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
