#!/bin/bash
# call 1: jagged2 kernels + interaction/torch GPU tests, memcheck of them, jagged2 bench, prod A/B
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
t0=$(date +%s)
HYPOTHESIS_PROFILE=gpu timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -x \
  tests/test_interaction.py tests/test_torch_adapter.py > $OUT/tests.log 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"; tail -25 $OUT/tests.log
HYPOTHESIS_PROFILE=sanitizer timeout 150 compute-sanitizer --tool memcheck python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/test_interaction.py > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s) - t0 )) s"; tail -4 $OUT/memcheck.log
CUJAGGED_COMMIT=$1 timeout 100 python3 -m bench.gpu_check --quick --no-tests --no-sanitizer \
  --only interaction --out $OUT/inter 2>&1 | grep -v "^ *$" | tail -14
echo "bench $(( $(date +%s) - t0 )) s"
for R in ref mean4000 row1e6; do
  timeout 60 python3 -m bench.rowwise_variants $OUT/prod-$R.json --ops=sum,prod --regime=$R \
    --dtypes=bfloat16 -DCJ_PROD_RESCAN=1 -DCJ_PROD_RESCAN=1,-DCJ_PROD_U=4 2>&1 | tail -8
done
echo "end $(( $(date +%s) - t0 )) s"
