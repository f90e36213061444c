#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -x \
  tests/test_attention.py -k "backward" > $OUT/tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/tests.log; grep -E "^E |Error" $OUT/tests.log | head -10
HYPOTHESIS_PROFILE=sanitizer timeout 120 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_attention.py -k "backward" > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/memcheck.log
timeout 250 python3 _ab/bwd_ab.py -DJFB_DQ_RED=2 2>&1 | tail -16
echo "end $(( $(date +%s) - t0 )) s"
