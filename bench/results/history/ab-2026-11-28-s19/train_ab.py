"""Torch-adapter training step (fwd + bwd), this tree's cujagged vs another on PYTHONPATH."""
import sys
import cupy
import torch
import cujagged
from bench.bench_attention import SHAPES, _train_shape

print("cujagged from", cujagged.__file__, flush=True)
for shape in (SHAPES[0], SHAPES[1], SHAPES[3]):
    for e in _train_shape(cupy, torch, *shape, reps=30):
        p = e["params"]
        print(f"{sys.argv[1]:4s} {p['max_len']}/{p['fill']} {p['H']}x{p['D']} {e['impl']:22s} "
              f"{e['ms']*1e3:8.1f} us  peak {e.get('peak_mib', 0):.0f} MiB", flush=True)
