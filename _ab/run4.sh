#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -x \
  tests/test_attention.py -k "backward" tests/test_torch_adapter.py > $OUT/tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $OUT/tests.log; grep -E "^E |Error" $OUT/tests.log | head -20
timeout 60 python3 _ab/bwd_err.py 2>&1 | tail -10
HYPOTHESIS_PROFILE=sanitizer timeout 120 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_attention.py -k "backward" > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $OUT/memcheck.log
HYPOTHESIS_PROFILE=sanitizer timeout 120 compute-sanitizer --tool racecheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_attention.py -k "backward_long_rows and 64" > $OUT/racecheck.log 2>&1
echo "racecheck rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $OUT/racecheck.log
timeout 150 python3 -c "
import cupy, torch, json
from bench import bench_attention as b
res = []
for sh in b.SHAPES:
    r = b._bwd_shape(cupy, torch, *sh, reps=10)
    res += r
    for e in r:
        print(e['impl'], sh, 'device', e.get('gpu_ms'), 'events', round(e['ms'], 4), 'diff', e.get('rel_diff_vs_cujagged'), 'TF', round(e.get('tflops', 0), 1), flush=True)
json.dump(res, open('$OUT/bwd_bench.json', 'w'), indent=1)
" 2>&1 | tail -20
echo "end $(( $(date +%s) - t0 )) s"
