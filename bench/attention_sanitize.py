"""A handful of small attention cases for compute-sanitizer (memcheck/racecheck) on the GPU."""

import os

import cupy
import numpy as np

import cujagged
from cujagged import jagged_flash_attention

rng = np.random.default_rng(0)
lq = np.array([0, 1, 70, 5, 130, 0, 33])
lk = np.array([3, 0, 64, 200, 1, 2, 33])
oq = cupy.asarray(np.concatenate([[0], np.cumsum(lq)]))
ok = cupy.asarray(np.concatenate([[0], np.cumsum(lk)]))
QUICK = bool(os.environ.get("SANITIZE_QUICK"))  # a few cases only (racecheck is slow)
for dt in (cujagged.bfloat16,) if QUICK else (cujagged.bfloat16, np.float16, np.float32):
    for D in (64, 256) if QUICK else (32, 64, 96, 128, 256):
        for causal in (True,) if QUICK else (False, True):
            for bias in (False,) if QUICK else (False, True):
                q = cupy.asarray(rng.standard_normal((lq.sum(), 2, D)).astype(dt))
                k = cupy.asarray(rng.standard_normal((lk.sum(), 1, D)).astype(dt))
                b = cupy.asarray(rng.standard_normal((7, 2, 130, 200)).astype(np.float32)) \
                    if bias else None
                o, lse = jagged_flash_attention(q, k, k, oq, kv_offsets=ok, causal=causal,
                                                bias=b, max_seq_len=100, return_lse=True)
                assert not cupy.isnan(o.astype(np.float32)).any()
                if dt != np.float32 and D in (64, 128) and not bias:
                    o2 = jagged_flash_attention(q, k, k, oq, kv_offsets=ok, causal=causal,
                                                max_seq_len=100, _bm=128)
cupy.cuda.runtime.deviceSynchronize()
print("sanitize cases done")
