"""Which host calls of a torch-adapter training step wait for the GPU (a 200 ms spin kernel
ahead of each: a call whose host time is ~200 ms synchronised), and a cProfile of 20 steps."""
import cProfile, pstats, time, math
import numpy as np
import cupy, torch
import cujagged.torch as cjt
from cujagged import attention as A
from bench.harness import lengths_for

spin = cupy.RawKernel(r'''extern "C" __global__ void spin(long long ns) {
  long long t0, t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns); }''', "spin")

def held(name, fn):
    fn(); torch.cuda.synchronize()
    spin((1,), (1,), (np.int64(200e6),))
    t0 = time.perf_counter(); fn(); t = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    print(f"{name:40s} host {t:8.2f} ms {'SYNC' if t > 150 else ''}", flush=True)

lens = lengths_for(1024, 256, 0.5); T = int(lens.sum()); ml = int(lens.max())
off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)).cuda()
q, k, v, w = (torch.randn(T, 1, 128, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(4))
work = cupy.asarray(lens)
held("cupy.argsort(int64[1024])", lambda: cupy.argsort(-work))
held("cupy.cumsum(int64[1024])", lambda: cupy.cumsum(work))
held("cupy.from_dlpack(torch)", lambda: cupy.from_dlpack(q.detach()))
held("fwd hinted", lambda: cjt.jagged_flash_attention(q, k, v, off, max_length=ml))
held("fwd", lambda: cjt.jagged_flash_attention(q, k, v, off))
o = cjt.jagged_flash_attention(q, k, v, off, max_length=ml)
def bwd():
    o = cjt.jagged_flash_attention(q, k, v, off, max_length=ml)
    torch.cuda.synchronize()
    spin((1,), (1,), (np.int64(200e6),))
    t0 = time.perf_counter(); torch.autograd.grad(o, (q, k, v), w); t = (time.perf_counter() - t0) * 1e3
    print(f"{'bwd (autograd.grad) hinted':40s} host {t:8.2f} ms {'SYNC' if t > 150 else ''}", flush=True)
    torch.cuda.synchronize()
bwd(); bwd()

def step():
    o = cjt.jagged_flash_attention(q, k, v, off, max_length=ml)
    torch.autograd.grad(o, (q, k, v), w)
for _ in range(5): step()
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(20): step()
t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
print(f"20 steps: host enqueue {(t1-t0)/20*1e3:.2f} ms/step, to done {(t2-t0)/20*1e3:.2f} ms/step")
pr = cProfile.Profile(); pr.enable()
for _ in range(20): step()
torch.cuda.synchronize(); pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(25)
pstats.Stats(pr).sort_stats("cumtime").print_stats(30)
