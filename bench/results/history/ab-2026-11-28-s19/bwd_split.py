"""Where the host time of the adapter's backward goes (no profiler: perf_counter wrappers)."""
import time, collections
import numpy as np, cupy, torch
import cujagged.torch as cjt
from bench.harness import lengths_for

lens = lengths_for(1024, 256, 0.5); T = int(lens.sum()); ml = int(lens.max())
off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)).cuda()
q, k, v, w = (torch.randn(T, 1, 128, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(4))
acc = collections.Counter()
def wrap(name):
    f = getattr(cjt, name)
    def g(*a, **kw):
        t0 = time.perf_counter(); r = f(*a, **kw); acc[name] += time.perf_counter() - t0; return r
    setattr(cjt, name, g)
for n in ("_jfa_bwd", "_jfa", "_torch_from", "_dense", "_jagged", "_named", "_stream"):
    wrap(n)
fb = cjt._Attention.backward
def timed_bwd(ctx, grad):
    t0 = time.perf_counter(); r = fb(ctx, grad); acc["Function.backward"] += time.perf_counter() - t0; return r
cjt._Attention.backward = staticmethod(timed_bwd)

class Triv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a): return a * 1
    @staticmethod
    def backward(ctx, g): return g
n = 100
for trial in range(3):
    acc.clear()
    torch.cuda.synchronize()
    t_all = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        o = cjt.jagged_flash_attention(q, k, v, off, max_length=ml)
        t1 = time.perf_counter()
        torch.autograd.grad(o, (q, k, v), w)
        t2 = time.perf_counter()
        acc["fwd total"] += t1 - t0; acc["grad() total"] += t2 - t1
        torch.cuda.synchronize()   # (each step alone: host times, not queue effects)
    print({kk: round(vv / n * 1e6, 1) for kk, vv in sorted(acc.items())}, flush=True)
for trial in range(2):
    t0 = time.perf_counter()
    for _ in range(n):
        torch.autograd.grad(Triv.apply(q), (q,), w)
    torch.cuda.synchronize()
    print("trivial Function step", round((time.perf_counter() - t0) / n * 1e6, 1), "us")
