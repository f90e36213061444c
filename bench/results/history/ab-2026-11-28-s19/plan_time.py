"""Device and host time of the tile list: one-block plan kernel vs the argsort path."""
import time
import numpy as np, cupy
from bench.harness import gpu_time_ms, lengths_for
from cujagged import attention as A
for B, ml, fill in [(1024, 256, 0.5), (1024, 4096, 0.25), (8192, 64, 0.125), (65536, 64, 0.125), (65536, 1024, 0.02)]:
    lens = lengths_for(B, ml, fill)
    off = cupy.asarray(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    bound = (int(lens.sum()) + 63) // 64 + B
    row = f"B={B} ml={ml} fill={fill}:"
    for name, mx in (("plan", 1 << 30), ("argsort", -1)):
        A._PLAN_MAX_B = mx
        f = lambda: A._tile_list(cupy, off, off, 64, A._NO_LIMIT, None, bound)
        dev, host = gpu_time_ms(f)
        row += f"  {name} dev {dev*1e3:7.1f} us host {host*1e3:6.1f} us"
    print(row, flush=True)
A._PLAN_MAX_B = 65536
