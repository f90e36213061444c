"""Host microseconds per call of the pieces of a torch-adapter attention step (no syncs)."""
import time, cProfile, pstats
import numpy as np, cupy, torch
import cujagged.torch as cjt
from cujagged import JaggedArray, jagged_flash_attention as jfa, jagged_flash_attention_backward as jfab
from cujagged import attention as A
from cujagged.interop import _torch_from
from bench.harness import lengths_for

lens = lengths_for(1024, 256, 0.5); T = int(lens.sum()); ml = int(lens.max())
off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)).cuda()
q, k, v, w = (torch.randn(T, 1, 128, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(4))
cq, co = cjt._dense(q), cjt._dense(off)

def us(name, fn, n=100):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n): fn()
        best.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    print(f"{name:50s} {min(best):8.1f} us", flush=True)

us("_dense(q)", lambda: cjt._dense(q))
us("_torch_from(cupy)", lambda: _torch_from(cq))
def st():
    with cjt._stream(q):
        pass
us("_stream(q) with-block", st)
us("JaggedArray(cq, co, max_length, validate=False)", lambda: JaggedArray(cq, co, max_length=ml, validate=False))
us("cupy.empty", lambda: cupy.empty((T, 1, 128), np.float32))
us("cupy.zeros", lambda: cupy.zeros((T, 1, 128), np.float32))
def tl():
    qj = JaggedArray(cq, co, max_length=ml, validate=False)
    A._tile_list(cupy, qj.offsets, qj.offsets, 64, A._NO_LIMIT, qj._cache, T // 64 + 1025)
us("_tile_list (fresh)", tl)
def fwd():
    qj = JaggedArray(cq, co, max_length=ml, validate=False)
    return jfa(qj, qj, qj, return_lse=True)
us("jfa fwd cupy (fresh JaggedArray)", fwd)
o, lse = fwd()
def bwd():
    qj = JaggedArray(cq, co, max_length=ml, validate=False)
    return jfab(qj, qj, qj, qj, out=o.values, lse=lse)
us("jfa bwd cupy (fresh JaggedArray)", bwd)
us("cjt fwd hinted (grad on)", lambda: cjt.jagged_flash_attention(q, k, v, off, max_length=ml))
def step():
    torch.autograd.grad(cjt.jagged_flash_attention(q, k, v, off, max_length=ml), (q, k, v), w)
us("cjt step hinted", step, n=50)
with torch.no_grad():
    us("torch no-op autograd Function? (q*1)", lambda: q * 1)
pr = cProfile.Profile(); pr.enable()
for _ in range(50): bwd()
torch.cuda.synchronize(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
pr = cProfile.Profile(); pr.enable()
for _ in range(50): step()
torch.cuda.synchronize(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(22)
