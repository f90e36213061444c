import os

import pytest
from hypothesis import HealthCheck, Phase, settings

from cujagged._backend import gpu_available

settings.register_profile(
    "default", deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The GPU check (bench/gpu_check.py): fresh examples, reported without shrinking (device time
# is scarce; a failing example is printed as found).
settings.register_profile(
    "gpu", deadline=None, max_examples=30, phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "sanitizer", deadline=None, max_examples=4, phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected theirs
def pytest_collection_modifyitems(config, items):
    # CUJAGGED_TEST_SHARD="k/n" (bench/gpu_check.py --jobs n): run every n-th selected test from
    # the k-th, so that n processes share one GPU and the host's cores
    shard = os.environ.get("CUJAGGED_TEST_SHARD")
    if shard:
        k, n = (int(x) for x in shard.split("/"))
        if not 0 <= k < n:
            raise pytest.UsageError(f"CUJAGGED_TEST_SHARD must be k/n with 0 <= k < n, got {shard}")
        config.hook.pytest_deselected(items=[t for i, t in enumerate(items) if i % n != k])
        items[:] = items[k::n]
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _poison_gpu_allocations(request):
    """In GPU tests every CuPy allocation starts as 0xFF bytes (NaN for floats, -1 for integers),
    so an output element a kernel forgot to write shows up instead of hiding behind zeros."""
    if "gpu" not in request.keywords or not gpu_available():
        yield
        return
    import cupy

    pool = cupy.get_default_memory_pool()

    def poisoned_malloc(size):
        mem = pool.malloc(size)
        if size:
            cupy.cuda.runtime.memsetAsync(mem.ptr, 0xFF, size,
                                          cupy.cuda.get_current_stream().ptr)
        return mem

    cupy.cuda.set_allocator(poisoned_malloc)
    try:
        yield
    finally:
        cupy.cuda.set_allocator(pool.malloc)
