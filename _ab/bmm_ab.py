"""A/B of interaction.cu -D variants at the reference shape (bf16, fill 0.25): device ms."""
import json
import sys

import numpy as np

import bench.bench_interaction as bi
from cujagged import interaction
from cujagged._kernels import KernelFamily

variants = [()] + [tuple(a.split(",")) for a in sys.argv[2:]]
names = interaction._FAM.name_expressions
rows = []
for rnd in range(2):
    for opts in variants:
        interaction._FAM = KernelFamily("interaction.cu", names, options=list(opts))
        ents = bi._case(0.25, np.random.default_rng(0), None)
        for e in ents:
            rows.append({"opts": list(opts), "round": rnd, "name": e["name"], "impl": e["impl"],
                         "gpu_ms": e.get("gpu_ms"), "ms": e["ms"]})
            print(f"{rnd} {' '.join(opts) or 'default':14s} {e['name']:30s} {e['impl']:14s} "
                  f"device {e.get('gpu_ms', 0):.4f} ms  events {e['ms']:.4f}", flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
