#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/test_attention.py -k "backward" > $OUT/bwd-tests.log 2>&1
echo "bwd tests rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/bwd-tests.log; grep -E "^E " $OUT/bwd-tests.log | head
timeout 60 python3 -c "
import cupy
from bench import bench_attention as b
for sh in [(1024, 512, 0.25, 1, 128, True), (1024, 256, 0.5, 1, 128, False), (256, 4096, 0.25, 1, 128, False)]:
    e = b._bwd_shape(cupy, None, *sh, reps=10)[0]
    print('bwd', sh, 'device', e['gpu_ms'], flush=True)
"
CUJAGGED_COMMIT=$1 CUJAGGED_DIRTY=0 timeout 420 python3 -m bench.gpu_check --no-tests --no-bench \
  --sanitizer-timeout 400 --merge _ab/merge_bench.json --out $OUT/r 2>&1 | grep -v "^ *$" | tail -6
echo "end $(( $(date +%s) - t0 )) s"
