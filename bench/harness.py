"""Timing and memory measurement shared by every benchmark (see METHOD: events, warm-up, median).

Every benchmark module ``bench/bench_<family>.py`` exposes ``run(quick: bool) -> list[dict]``
returning entries made by :func:`entry` (the results-file schema of DESIGN.md).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

__all__ = ["time_ms", "gpu_time_ms", "device_fields", "wall_ms", "rotate", "entry", "cupy_peak",
           "torch_peak", "copy_entry", "lengths_for", "git"]

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    """Output of ``git <args>`` in the repository ('' where git or the repository is missing)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return ""


_SPIN = None


def gpu_time_ms(fn, n: int = 20, spin_ms: float = 4.0) -> tuple[float, float]:
    """(device ms per call, host enqueue ms per call) of ``fn``: a spin kernel holds the GPU while
    the host enqueues ``n`` calls, so the events see back-to-back device work only (no launch
    overhead). A sample whose enqueue outlasted the spin (a slow or busy host) is retaken once
    with a longer spin (at most 50 ms); a call that synchronises (some peers) can never be
    covered: its samples are kept as they are (device time then includes the host's gaps).
    The median of 3 samples is returned."""
    import cupy

    global _SPIN
    if _SPIN is None:
        _SPIN = cupy.RawKernel(r"""
extern "C" __global__ void spin(long long ns) {
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}""", "spin")
    for _ in range(3):
        fn()
    cupy.cuda.runtime.deviceSynchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    dev, host = [], []
    retakes = 2
    while len(dev) < 3:
        _SPIN((1,), (1,), (np.int64(spin_ms * 1e6),))
        start.record()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        enqueue_ms = (time.perf_counter() - t0) * 1e3
        stop.record()
        stop.synchronize()
        if enqueue_ms > 0.8 * spin_ms and retakes and spin_ms < 50:
            retakes -= 1  # the GPU may have idled between calls: retake with a longer spin
            spin_ms = min(50.0, 2 * enqueue_ms)
            continue
        host.append(enqueue_ms / n)
        dev.append(cupy.cuda.get_elapsed_time(start, stop) / n)
    return statistics.median(dev), statistics.median(host)


def device_fields(fn, nbytes: int | None = None) -> dict:
    """``gpu_ms`` (device time per call, host launch overhead excluded, see :func:`gpu_time_ms`),
    ``host_us`` (host enqueue time per call) and ``gbps_gpu`` for a results entry."""
    dev, host = gpu_time_ms(fn)
    d = {"gpu_ms": round(dev, 5), "host_us": round(host * 1e3, 2)}
    if nbytes:
        d["gbps_gpu"] = round(nbytes / (dev * 1e-3) / 1e9, 2)
    return d


def wall_ms(fn, reps: int = 7) -> float:
    """Median host milliseconds of ``fn()`` after one warm-up call (CPU backend benchmarks)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_ms(fn, *, warmup: int = 5, reps: int = 30, inner: int = 10) -> float:
    """Median milliseconds per call of ``fn()``, timed with CUDA events on the current stream.

    Each of the ``reps`` samples times ``inner`` calls back to back and divides by ``inner``, as
    inside a model where the GPU queue runs ahead of Python: the host's launch overhead (tens of
    microseconds of CuPy/PyTorch glue) counts only where it exceeds the GPU time. ``fn`` should
    rotate among several input sets itself (see :func:`rotate`) so the L2 cache does not flatter
    the numbers. Works for CuPy and PyTorch work alike (both on the legacy default stream).
    """
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.runtime.deviceSynchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / inner)
    return statistics.median(times)


def rotate(inputs):
    """An iterator cycling through a list of input sets."""
    return itertools.cycle(inputs)


@contextlib.contextmanager
def cupy_peak():
    """Peak extra bytes allocated through CuPy's pool inside the block: ``with cupy_peak() as p:``
    then ``p.mib``."""
    import cupy

    pool = cupy.get_default_memory_pool()

    class Peak:
        mib = 0.0

    peak, base = Peak(), pool.used_bytes()
    state = {"max": base}

    def malloc(size):
        mem = pool.malloc(size)
        state["max"] = max(state["max"], pool.used_bytes())
        return mem

    cupy.cuda.set_allocator(malloc)
    try:
        yield peak
    finally:
        cupy.cuda.set_allocator(pool.malloc)
        peak.mib = (state["max"] - base) / 2**20


@contextlib.contextmanager
def torch_peak():
    """Peak extra bytes allocated by PyTorch inside the block (``p.mib``)."""
    import torch

    class Peak:
        mib = 0.0

    peak = Peak()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        yield peak
    finally:
        torch.cuda.synchronize()
        peak.mib = (torch.cuda.max_memory_allocated() - base) / 2**20


def entry(name: str, impl: str, params: dict, ms: float, peak_mib: float = 0.0, *,
          nbytes: float | None = None, flops: float | None = None) -> dict:
    """One benchmark record: GB/s from ``nbytes`` (read + written), TFLOP/s from ``flops``."""
    e = {"name": name, "impl": impl, "params": params, "ms": round(ms, 5),
         "peak_mib": round(peak_mib, 3)}
    if nbytes is not None:
        e["gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 2)
    if flops is not None:
        e["tflops"] = round(flops / (ms * 1e-3) / 1e12, 3)
    return e


def copy_entry(nbytes: int = 1 << 30) -> dict:
    """The device's copy bandwidth (bytes read + written) for a device-to-device copy."""
    import cupy

    srcs = [cupy.ones(nbytes // 4, dtype=np.float32) for _ in range(2)]
    dst = cupy.empty_like(srcs[0])
    it = rotate(srcs)
    ms = time_ms(lambda: dst.__setitem__(Ellipsis, next(it)), reps=20)
    return entry("copy", "copy", {"bytes": nbytes}, ms, nbytes=2 * nbytes)


def lengths_for(B: int, max_len: int, fill: float, seed: int = 0, dist: str = "lognormal"):
    """Row lengths of a realistic batch: mean ``fill * max_len``, capped at ``max_len``, some
    empty rows. ``dist``: ``"lognormal"`` (sigma 1) or ``"uniform"``. NumPy int64 ``[B]``."""
    rng = np.random.default_rng(seed)
    mean = fill * max_len
    if dist == "uniform":
        lens = rng.integers(0, int(2 * mean) + 1, size=B)
    else:
        sigma = 1.0
        lens = rng.lognormal(np.log(max(mean, 1e-3)) - sigma**2 / 2, sigma, size=B)
    lens = np.minimum(np.round(lens).astype(np.int64), max_len)
    # rescale once so the mean hits the target fill despite the cap
    for _ in range(4):
        cur = lens.mean()
        if cur <= 0:
            break
        lens = np.minimum(np.round(lens * (mean / cur)).astype(np.int64), max_len)
    return lens


def attention_inputs(B: int, max_len: int, fill: float, H: int, D: int, n_sets: int = 2,
                     lens: np.ndarray | None = None):
    """Rotated bf16 self-attention inputs of one shape (lengths from :func:`lengths_for`, or
    ``lens`` when given):
    ``(lens, js, ts, cu)`` with ``js[i] = [q, k, v]`` JaggedArrays sharing int32 offsets,
    ``ts[i]`` the same values as torch tensors (zero-copy) and ``cu`` the offsets in torch
    (FlashAttention-2 varlen's ``cu_seqlens``)."""
    import cupy
    import torch

    import cujagged

    lens = lengths_for(B, max_len, fill) if lens is None else np.asarray(lens)
    off = cupy.asarray(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    T = int(lens.sum())
    rng = np.random.default_rng(0)
    sets = [[cupy.asarray(rng.standard_normal((T, H, D), dtype=np.float32))
             .astype(cujagged.bfloat16) for _ in range(3)] for _ in range(n_sets)]
    js = [[cujagged.JaggedArray(x, off, max_length=int(lens.max()), validate=False) for x in s]
          for s in sets]
    ts = [[torch.from_dlpack(x) for x in s] for s in sets]
    return lens, js, ts, torch.from_dlpack(off)
