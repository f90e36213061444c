"""Relative errors of the CUDA attention backward vs the float64 reference on random cases."""
import sys

import numpy as np

sys.path.insert(0, "tests")
from test_attention import check_gpu_backward  # noqa: E402

from cujagged import bfloat16  # noqa: E402

rng = np.random.default_rng(0)
worst = {}
for i in range(40):
    D = int(rng.choice([32, 64, 96, 128]))
    dt = np.dtype(bfloat16) if i % 2 else np.dtype(np.float16)
    B = int(rng.integers(1, 6))
    lq = [int(x) for x in rng.integers(0, 200, B)]
    cross = bool(rng.integers(0, 2))
    lk = [int(x) for x in rng.integers(0, 200, B)] if cross else lq
    H = int(rng.choice([1, 2, 4]))
    Hk = int(rng.choice([d for d in (1, 2, 4) if H % d == 0]))
    p = dict(lq=lq, lk=lk, cross=cross, H=H, Hk=Hk, D=D, dtype=dt, causal=bool(i % 3 == 0),
             msl=None if i % 4 else 150, scale=None, bias=False, bias_heads="H",
             off_dtype=np.int64, seed=i)
    e = check_gpu_backward(p, tol=1.0)
    key = (str(dt), D)
    worst[key] = np.maximum(worst.get(key, 0), e)
for k, v in sorted(worst.items()):
    print(k, "worst rel err dq dk dv:", np.round(v, 5))
