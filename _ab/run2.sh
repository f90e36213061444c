#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/test_interaction.py > $OUT/tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $OUT/tests.log; grep -E "Error|assert|FAIL" $OUT/tests.log | head -20
HYPOTHESIS_PROFILE=sanitizer timeout 150 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_interaction.py > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $OUT/memcheck.log
timeout 200 python3 _ab/bmm_ab.py $OUT/bmm_ab.json 2>&1 | grep -v bn64
echo "end $(( $(date +%s) - t0 )) s"
