"""Sweep of rowwise.cu compile-time knobs and scheduling thresholds at the reference shape
(B=1024, max_len=1024, fill 0.25, D=128): each variant rebuilds the kernel family with extra
``-D`` options and/or sets ``cujagged.rowwise._SCHED`` entries, and times the same ops on the same
inputs in one process. ``PYTHONPATH=. python3 -m bench.rowwise_variants [OUT.json]
[-DCJ_X=1,whole_reduce=131072 ...]`` (variants: comma-separated lists of ``-D`` options and
``key=bytes`` threshold overrides; the default is always timed first).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.bench_rowwise import _inputs
from bench.harness import copy_entry, gpu_time_ms, rotate, time_ms

OPS = ("sum", "mean", "max", "argmax", "logsumexp", "softmax", "cumsum", "cumsum_backward",
       "softmax_backward")
# bytes moved / bytes of x
MOVED = {"softmax": 2, "cumsum": 2, "cumsum_backward": 2, "softmax_backward": 3}


def main(argv: list[str]) -> None:
    import cupy

    import cujagged.rowwise as R
    from cujagged import bfloat16
    from cujagged._kernels import KernelFamily

    out = argv[0] if argv and argv[0].endswith(".json") else None
    variants = [()] + [tuple(a.split(",")) for a in argv if not a.endswith(".json")]
    copy = copy_entry()
    res = {"copy_gbps": copy["gbps"], "rows": []}
    names = R._instantiations()
    sched0 = dict(R._SCHED)
    for dt in (bfloat16, np.float32):
        sets, lens = _inputs(1024, 1024, 0.25, 128, dt)
        nbytes = sets[0].values.nbytes
        for opts in variants:
            R._FAM = KernelFamily("rowwise.cu", names, options=[o for o in opts if o[:2] == "-D"])
            R._KERNELS.clear()
            R._SCHED.clear()
            R._SCHED.update(sched0)
            R._SCHED.update({k: int(v) for k, v in (o.split("=") for o in opts if o[:2] != "-D")})
            for x in sets:
                x._cache.clear()
            for op in OPS:
                if op == "softmax_backward":  # grad and out in different arrays (not one in L2)
                    fn = lambda xy, f=R.softmax_backward: f(*xy)  # noqa: E731
                    it = rotate([(x, x._with_values(sets[i - 1].values))  # one structure
                                 for i, x in enumerate(sets)])
                else:
                    fn = getattr(R, op)
                    it = rotate(sets)
                ms = time_ms(lambda fn=fn, it=it: fn(next(it)), reps=30)
                dev = gpu_time_ms(lambda fn=fn, it=it: fn(next(it)))[0]
                moved = nbytes * MOVED.get(op, 1)
                pct = 100 * moved / (dev * 1e-3) / 1e9 / copy["gbps"]
                row = {"dtype": str(np.dtype(dt)), "opts": list(opts), "op": op,
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
