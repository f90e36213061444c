"""A few calls of row-wise ops at the reference shape (B=1024, max_len=1024, fill 0.25, D=128),
for ncu:

    ncu -k regex:"reduce_rows|fused_rows" -s 2 -c 1 --section SpeedOfLight ... \\
        python3 -m bench.rowwise_profile bfloat16 sum logsumexp
"""

from __future__ import annotations

import sys

import numpy as np


def main(dtype: str = "bfloat16", *ops: str) -> None:
    import cupy

    import cujagged
    from bench.bench_rowwise import _inputs
    from cujagged import rowwise as R

    dt = cujagged.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    sets, _ = _inputs(1024, 1024, 0.25, 128, dt)
    for op in ops or ("sum",):
        for _ in range(3):
            getattr(R, op)(sets[0])
    cupy.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main(*sys.argv[1:])
