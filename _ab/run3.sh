#!/bin/bash
export PYTHONPATH=. PYTHONUNBUFFERED=1
python3 _ab/bmm_once.py  # compile outside ncu
timeout 300 ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section LaunchStats --section SchedulerStats \
  -k regex:"mma" --launch-skip 5 --launch-count 4 python3 _ab/bmm_once.py > $OUT/ncu.txt 2>&1
echo "ncu rc=$?"
grep -E "jagged|Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issued Warp|No Eligible|Warp Cycles Per Issued|Block Limit|Memory Throughput|Mem Busy|Max Bandwidth" $OUT/ncu.txt | head -90
