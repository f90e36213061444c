"""CPU layout benchmark (the Numba backend), run on a machine without a GPU; not part of the GPU
check.

``to_padded`` / ``from_padded`` on NumPy arrays (Numba kernels) against a NumPy copy of the same
number of bytes ("copy"), at the layout benchmark's shapes (B=1024, max_len=1024, D=128, fill
0.1/0.25/0.5, bf16 and fp32). Every impl allocates its output on each call, as the ops do.
Timing: ``time.perf_counter``, one warm-up, median of the reps. Memory: ``tracemalloc`` peak of
one call (NumPy allocations).

    PYTHONPATH=. python -m bench.bench_cpu [--quick] [--out bench/results/cpu-layout.json]

Writes the results file of DESIGN.md with ``"gpu": "cpu"`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
B, MAX_LEN, D = 1024, 1024, 128
FILLS = (0.1, 0.25, 0.5)
DTYPES = ("bfloat16", "float32")


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return max(tracemalloc.get_traced_memory()[1] - base, 0) / 2**20
    finally:
        tracemalloc.stop()


def run(quick: bool = False, reps: int = 7) -> list[dict]:
    """Benchmark entries (DESIGN.md schema) of the Numba to_padded / from_padded and a copy."""
    import cujagged
    from bench.harness import entry, lengths_for, wall_ms

    cases = [(0.25, "bfloat16")] if quick else [(f, d) for d in DTYPES for f in FILLS]
    rng = np.random.default_rng(0)
    out: list[dict] = []
    for fill, dname in cases:
        dtype = np.dtype(cujagged.bfloat16 if dname == "bfloat16" else dname)
        lens = lengths_for(B, MAX_LEN, fill, seed=0)
        off = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        T, maxlen = int(off[-1]), int(lens.max())
        params = {"B": B, "max_len": MAX_LEN, "fill": fill, "D": D, "dtype": dname, "T": T}
        x = cujagged.JaggedArray(rng.standard_normal((T, D), dtype=np.float32).astype(dtype), off,
                                 max_length=maxlen)
        dense = cujagged.to_padded(x, MAX_LEN)
        isz = dtype.itemsize
        jag, pad, offb = T * D * isz, B * MAX_LEN * D * isz, (B + 1) * 8
        cases_ops = {
            "to_padded": (lambda x=x: cujagged.to_padded(x, MAX_LEN), jag + pad + offb),
            "from_padded": (lambda d=dense, o=off, t=T, m=maxlen: cujagged.from_padded(
                d, offsets=o, total_length=t, max_length=m), 2 * jag + offb),
        }
        for name, (fn, nbytes) in cases_ops.items():
            out.append(entry(name, "cujagged", params, wall_ms(fn, reps), _peak_mib(fn),
                             nbytes=nbytes))
            src = np.ones(nbytes // 2, dtype=np.uint8)
            copy = src.copy
            out.append(entry(name, "copy", params, wall_ms(copy, reps), _peak_mib(copy),
                             nbytes=2 * src.nbytes))
            del src
        back = cujagged.from_padded(dense, offsets=off)
        if not np.array_equal(back.values.view(np.uint8), x.values.view(np.uint8)):
            print(f"bench_cpu: from_padded(to_padded(x)) != x at {params}", file=sys.stderr)
        del x, dense, back
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(entries: list[dict]) -> str:
    """Markdown table: one line per (op, params), cujagged vs copy."""
    rows = ["| op | dtype | fill | cujagged ms | GB/s | copy ms | GB/s | cujagged / copy time |",
            "|---|---|---|---|---|---|---|---|"]
    by = {}
    for e in entries:
        by.setdefault((e["name"], json.dumps(e["params"], sort_keys=True)), {})[e["impl"]] = e
    for (name, pj), d in by.items():
        p = json.loads(pj)
        c, k = d.get("cujagged"), d.get("copy")
        if c is None or k is None:
            continue
        rows.append(f"| {name} | {p['dtype']} | {p['fill']} | {c['ms']:.2f} | {c['gbps']:.1f} | "
                    f"{k['ms']:.2f} | {k['gbps']:.1f} | {c['ms'] / k['ms']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only fill 0.25 bf16")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-layout.json"))
    a = ap.parse_args(argv)
    import numba

    from bench.harness import git

    entries = run(quick=a.quick, reps=a.reps)
    result = {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain")),
        "gpu": "cpu",
        "versions": {"cupy": None, "cuda_runtime": None, "driver": None, "torch": None,
                     "numpy": np.__version__, "numba": numba.__version__,
                     "python": sys.version.split()[0], "cpu": _cpu_name(),
                     "cores": os.cpu_count()},
        "tests": {"passed": None, "failed": None, "skipped": None},
        "sanitizer": {"errors": None},
        "benchmarks": entries,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {result['versions']['cpu']} ({os.cpu_count()} cores), numba {numba.__version__}")
    print(table(entries))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
