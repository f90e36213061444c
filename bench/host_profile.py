"""Where the host time of a launch goes: cProfile of many calls of one op at the reference shape
(B=1024, max_len=1024, fill 0.25, D=128, bf16), top functions by own time.
``PYTHONPATH=. python3 -m bench.host_profile [sum|softmax|from_padded] [N]``
"""

from __future__ import annotations

import cProfile
import pstats
import sys


def main(op: str = "sum", n: int = 3000) -> None:
    import cupy

    import cujagged
    from bench.bench_rowwise import _inputs
    from cujagged import bfloat16
    from cujagged import rowwise as R

    (x, _), lens = _inputs(1024, 1024, 0.25, 128, bfloat16)
    if op == "from_padded":
        d = cujagged.to_padded(x, 1024)
        T, ml = int(lens.sum()), int(lens.max())

        def fn():
            return cujagged.from_padded(d, offsets=x.offsets, total_length=T, max_length=ml)
    else:
        f = getattr(R, op)

        def fn():
            return f(x)
    for _ in range(50):
        fn()
    cupy.cuda.runtime.deviceSynchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    cupy.cuda.runtime.deviceSynchronize()
    st = pstats.Stats(prof)
    print(f"{op}: {st.total_tt / n * 1e6:.1f} us per call (profiled)")
    st.sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["sum"]), *(int(a) for a in sys.argv[2:3]))
