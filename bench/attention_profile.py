"""One attention launch (and one FA2 varlen launch) on a reference shape, for ncu:

    ncu -k regex:"jfa_fwd|flash" -c 2 --section SpeedOfLight ... python3 -m bench.attention_profile

``CJ_IMPL=ws`` (or mma, sm90) picks the kernel (``_impl``).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np


def main(B=1024, L=256, fill=0.5, H=1, D=128):
    import cupy
    import torch

    import cujagged
    from bench.bench_attention import _fa2
    from bench.harness import lengths_for

    lens = lengths_for(B, L, fill)
    T = int(lens.sum())
    off = cupy.asarray(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    rng = np.random.default_rng(0)
    q, k, v = (cupy.asarray(rng.standard_normal((T, H, D), dtype=np.float32))
               .astype(cujagged.bfloat16) for _ in range(3))
    x = [cujagged.JaggedArray(a, off, max_length=int(lens.max()), validate=False)
         for a in (q, k, v)]
    for _ in range(3):
        cujagged.jagged_flash_attention(*x, _impl=os.environ.get("CJ_IMPL") or None)
    t = [torch.from_dlpack(a) for a in (q, k, v)]
    for _ in range(3):
        _fa2(torch, *t, torch.from_dlpack(off), L, 1 / math.sqrt(D), False)
    cupy.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main(*[float(a) if "." in a else int(a) for a in sys.argv[1:]])
