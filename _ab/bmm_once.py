"""Run each interaction op a few times at the reference shape (for ncu)."""
import cupy
import numpy as np

import cujagged
from bench.harness import lengths_for
from cujagged.interaction import (
    array_jagged_bmm_jagged_out,
    jagged_dense_bmm,
    jagged_jagged_bmm,
    jagged_jagged_bmm_jagged_out,
)

rng = np.random.default_rng(0)
lens = lengths_for(1024, 1024, 0.25, seed=0)
off = np.zeros(1025, np.int64)
np.cumsum(lens, out=off[1:])
T = int(off[-1])
dt = cujagged.bfloat16
offd = cupy.asarray(off)


def jag(d):
    return cujagged.JaggedArray(cupy.asarray(rng.standard_normal((T, d), dtype=np.float32)
                                             .astype(dt)), offd)


x, g = jag(128), jag(128)
y = cupy.asarray(rng.standard_normal((1024, 128, 128), dtype=np.float32).astype(dt))
m = jagged_jagged_bmm_jagged_out(x, g)
for _ in range(2):
    jagged_dense_bmm(x, y)
    jagged_jagged_bmm(x, g)
    jagged_jagged_bmm_jagged_out(x, g)
    array_jagged_bmm_jagged_out(m, g)
cupy.cuda.Device().synchronize()
