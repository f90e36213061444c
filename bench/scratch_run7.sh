#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/test_attention.py tests/test_torch_adapter.py -k "backward or matches_cpu" > $OUT/bwd-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/bwd-tests.log; grep -E "^E " $OUT/bwd-tests.log | head
HYPOTHESIS_PROFILE=sanitizer timeout 100 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_attention.py -k "backward" > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/memcheck.log
HYPOTHESIS_PROFILE=sanitizer timeout 100 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_attention.py -k "backward_long_rows" > $OUT/racecheck.log 2>&1
echo "racecheck rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/racecheck.log
timeout 120 python3 -c "
import cupy
from bench import bench_attention as b
from cujagged import attention as A
for rnd in range(2):
  for force in (None, 64):
    A._BWD_BK_FORCE = force
    for sh in [(1024, 256, 0.5, 1, 128, False), (1024, 1024, 0.25, 2, 64, False), (256, 4096, 0.25, 1, 128, False), (1024, 512, 0.25, 1, 128, True)]:
        e = b._bwd_shape(cupy, None, *sh, reps=10)[0]
        print(rnd, 'BK', force or 'default', sh[:6], 'device', e['gpu_ms'], flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
"
echo "end $(( $(date +%s) - t0 )) s"
