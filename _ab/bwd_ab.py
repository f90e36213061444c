"""A/B of attention_bwd.cu -D variants: device ms of the backward (given out, lse)."""
import sys

import cupy

from bench import bench_attention as b
from cujagged import attention as A
from cujagged._kernels import KernelFamily

variants = [()] + [tuple(a.split(",")) for a in sys.argv[1:]]
names = A._FAMB.name_expressions
shapes = [(1024, 256, 0.5, 1, 128, False), (1024, 1024, 0.25, 2, 64, False),
          (256, 4096, 0.25, 1, 128, False), (2048, 128, 0.5, 4, 32, False)]
for rnd in range(2):
    for opts in variants:
        A._FAMB = KernelFamily("attention_bwd.cu", names, options=list(opts))
        for sh in shapes:
            e = b._bwd_shape(cupy, None, *sh, reps=10)[0]
            print(rnd, " ".join(opts) or "default", sh[:5], "device", e["gpu_ms"], flush=True)
            cupy.get_default_memory_pool().free_all_blocks()
