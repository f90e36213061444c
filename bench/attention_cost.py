"""Where the short-row attention time goes: the default kernel and FlashAttention-2 varlen on
batches of equal rows (same token count, row length L from 32 to 2048, bf16, device time), and a
least-squares fit of our time to ``a * query tiles + b * key steps`` (per SM), which separates
the per-tile cost (tile record, Q and first K/V loads, epilogue) from the per-key-step cost.

    PYTHONPATH=. python3 -m bench.attention_cost [--tokens=131072] [--cfg=D:BNxST ...]
        [--heads=1x128] [--smem-pad=KB] [-DX=1 ...]

``--cfg=128:64x2`` times head dim 128 with 64 keys per step and 2 K/V stages at every length
(default: ``attention._SM90_CFG``). ``--heads=HxD`` times one head layout only; ``--smem-pad=KB``
launches every block with KB more (unused) shared memory, i.e. fewer blocks per SM: whether a
block's key step is a fixed-latency chain (time per step and SM grows as blocks per SM fall) or
the blocks contend for the SM (it does not).
"""

from __future__ import annotations

import math
import sys

import numpy as np

LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
HEADS = ((1, 128), (2, 64))


def main(argv=None):
    import cupy
    import torch

    from bench.bench_attention import _fa2
    from bench.harness import attention_inputs, gpu_time_ms, rotate
    from cujagged import attention as A
    from cujagged import jagged_flash_attention
    from cujagged._kernels import KernelFamily

    args = sys.argv[1:] if argv is None else argv
    for a in args:
        if a.startswith("--cfg="):
            d, _, c = a.split("=", 1)[1].partition(":")
            bn, st = map(int, c.split("x"))
            A._SM90_CFG = {**A._SM90_CFG, int(d): ((bn, st), (bn, st))}
    A._FAM90 = KernelFamily("attention_sm90.cu", ["jfa_sm90_smem_offset"] + [
        A._sm90_name("bf16_t", d, 1, *c) for d in A._SM90_DIMS for c in set(A._SM90_CFG[d])],
        options=A._FAM90.options[1:] + tuple(a for a in args if a.startswith("-D")),
        arch="sm_90a", register=False)
    opt = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a and
           not a.startswith("--cfg=")}
    tokens = int(opt.get("--tokens", 131072))
    heads = [tuple(map(int, opt["--heads"].split("x")))] if "--heads" in opt else HEADS
    pad = int(opt.get("--smem-pad", 0)) * 1024
    if pad:
        base = A._sm90_smem
        A._sm90_smem = lambda *a: base(*a) + pad
    props = cupy.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    print("device:", props["name"].decode(), "| tokens", tokens, "| configs", A._SM90_CFG,
          "| smem pad", pad)
    for H, D in heads:
        rows = []
        for L in LENGTHS:
            B = tokens // L
            _, js, ts, cu = attention_inputs(B, L, 1.0, H, D, lens=np.full(B, L))
            bn = A._SM90_CFG[D][L >= A._SM90_LONG][0]
            tiles = B * H * math.ceil(L / 64)
            steps = tiles * math.ceil(L / bn)
            it, it2 = rotate(ts), rotate(js)
            ours = gpu_time_ms(lambda: jagged_flash_attention(*next(it2)))[0]  # noqa: B023
            fa2 = gpu_time_ms(lambda: _fa2(torch, *next(it), cu, L, 1 / math.sqrt(D),  # noqa: B023
                                           False))[0]
            tflops = 4 * H * D * B * L * L / ours / 1e9
            rows.append((L, tiles / sms, steps / sms, ours))
            print(f"{H}x{D} L={L:5d} B={B:5d} | tiles/SM {tiles / sms:7.1f} | steps/SM "
                  f"{steps / sms:8.1f} (BN {bn}) | ours {ours:.4f} ms ({tflops:5.1f} TFLOP/s) | "
                  f"fa2 {fa2:.4f} ms | ratio {ours / fa2:.3f}", flush=True)
        short = [r for r in rows if r[0] < A._SM90_LONG]  # one key-step size (BN) in the fit
        X = np.array([[r[1], r[2]] for r in short])
        y = np.array([r[3] for r in short]) * 1e3  # us
        (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
        fit = X @ np.array([a, b])
        print(f"{H}x{D} fit: {a:.3f} us per query tile per SM + {b:.3f} us per key step per SM "
              f"(max rel. residual {np.max(np.abs(fit - y) / y):.2f})", flush=True)


if __name__ == "__main__":
    main()
