"""CPU (Numba backend) per-row sum and max against Awkward Array's ``ak.sum``/``ak.max(axis=1)``.

Same inputs for both: float32 values, realistic lengths (``bench.harness.lengths_for``), inner
shape ``()`` and ``(16,)``. Median wall time of several runs after a warm-up (Numba compile).

``python -m bench.bench_cpu_rowwise [--quick] [--json PATH]``
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.harness import entry, lengths_for, wall_ms

CASES = [  # (B, max_len, fill, D)
    (65536, 1024, 0.25, 1),
    (1 << 20, 32, 0.25, 1),
    (4096, 1024, 0.25, 16),
]


def run(quick: bool = False) -> list[dict]:
    import numba

    from cujagged import JaggedArray
    from cujagged import rowwise as R

    try:
        import awkward as ak
    except ImportError:
        ak = None
    out = []
    for B, max_len, fill, D in CASES[:1] if quick else CASES:
        lens = lengths_for(B, max_len, fill)
        off = np.zeros(B + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        T = int(off[-1])
        shape = (T,) if D == 1 else (T, D)
        vals = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        x = JaggedArray(vals, off)
        params = {"B": B, "max_len": max_len, "fill": fill, "D": D, "dtype": "float32",
                  "threads": numba.get_num_threads()}
        nbytes = vals.nbytes + B * D * 4
        for name, fn in (("sum", R.sum), ("max", R.max)):
            ms = wall_ms(lambda fn=fn, x=x: fn(x))
            out.append(entry(f"cpu_{name}", "cujagged_numba", params, ms, nbytes=nbytes))
        if ak is not None:
            content = ak.contents.NumpyArray(vals)
            arr = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(off), content))
            ref_sum, ref_max = ak.sum(arr, axis=1), ak.max(arr, axis=1)
            np.testing.assert_allclose(np.asarray(ak.to_numpy(ref_sum)), R.sum(x), rtol=1e-4,
                                       atol=1e-3)
            mx = ak.to_numpy(ak.fill_none(ref_max, -np.inf))
            np.testing.assert_array_equal(np.asarray(mx), R.max(x))
            for name, fn in (("sum", ak.sum), ("max", ak.max)):
                ms = wall_ms(lambda fn=fn, arr=arr: fn(arr, axis=1))
                out.append(entry(f"cpu_{name}", "awkward", params, ms, nbytes=nbytes))
    return out


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    for e in res:
        p = e["params"]
        print(f"B={p['B']:8d} max_len={p['max_len']:5d} D={p['D']:3d} {e['name']:8s} "
              f"{e['impl']:15s} {e['ms']:9.3f} ms {e['gbps']:7.2f} GB/s")
    if "--json" in sys.argv:
        import os
        import platform

        from bench.gpu_check import environment

        doc = {**environment(gpu=False), "cpu": platform.machine(), "threads": os.cpu_count(),
               "benchmarks": res}
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(doc, f, indent=1)
