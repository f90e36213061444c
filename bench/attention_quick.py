"""Ours against FlashAttention-2 varlen on the reference attention shapes (bf16, device time,
same process): the quick A/B of a kernel change. Prints one line per shape and, with a path,
writes them as JSON.

    PYTHONPATH=. python3 -m bench.attention_quick [OUT.json]
"""

from __future__ import annotations

import json
import math
import sys

from bench.attention_sweep import SHAPES

CASES = [(*s, False) for s in SHAPES] + [(1024, 512, 0.25, 1, 128, True)]


def main(argv: list[str]) -> None:
    import torch

    from bench.bench_attention import _fa2
    from bench.harness import attention_inputs, gpu_time_ms, rotate
    from cujagged import jagged_flash_attention

    rows = []
    for B, L, fill, H, D, causal in CASES:
        _, js, ts, cu = attention_inputs(B, L, fill, H, D)
        sc = 1 / math.sqrt(D)
        it = rotate(ts)
        fa2 = gpu_time_ms(lambda: _fa2(torch, *next(it), cu, L, sc, causal))[0]  # noqa: B023
        it2 = rotate(js)
        ours = gpu_time_ms(lambda: jagged_flash_attention(*next(it2), causal=causal))[0]  # noqa: B023
        row = {"B": B, "max_len": L, "fill": fill, "H": H, "D": D, "causal": causal,
               "fa2_ms": round(fa2, 5), "ms": round(ours, 5), "ratio": round(ours / fa2, 3)}
        rows.append(row)
        print(f"B={B} L={L} f={fill} {H}x{D}{' causal' if causal else ''}: ours {ours:.4f} ms, "
              f"FA2 {fa2:.4f} ms, ratio {ours / fa2:.3f}", flush=True)
    if argv:
        with open(argv[0], "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
