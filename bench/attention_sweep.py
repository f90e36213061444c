"""Tile-shape sweep of the attention kernel: every variant compiled with -D overrides of the knobs
in cuda_src/attention.cu, checked against the default build, timed on the reference shapes (bf16,
device time back to back) next to FlashAttention-2 varlen.

    PYTHONPATH=. python3 -m bench.attention_sweep
"""

from __future__ import annotations

import math

import numpy as np

# name: (JFA_MT, JFA_BN, JFA_MINB, BM, JFA_STAGES)  (None: the default of attention.cu)
VARIANTS = {
    "default": (None, None, None, None, None),
    "mt2_bn32_b1_bm64_s3": (2, 32, 1, 64, 3),
    "mt2_bn32_b1_bm64_s4": (2, 32, 1, 64, 4),
    "mt2_bn32_b1_bm128_s3": (2, 32, 1, 128, 3),
    "mt1_bn32_b2_bm64_s3": (1, 32, 2, 64, 3),
    "mt1_bn64_b2_bm64_s3": (1, 64, 2, 64, 3),
}
SHAPES = [(1024, 256, 0.5, 1, 128), (1024, 512, 0.25, 1, 128), (1024, 1024, 0.1, 1, 128),
          (1024, 1024, 0.25, 2, 64), (2048, 128, 0.5, 4, 32), (256, 4096, 0.25, 1, 128)]


def main():
    import cupy
    import torch

    from bench.bench_attention import _fa2
    from bench.harness import attention_inputs, gpu_time_ms, rotate
    from cujagged import attention as A
    from cujagged._kernels import KernelFamily

    default = (A._FAM, A._mma_bn, A._mma_threads, A._mma_stages)
    rows = []
    for B, L, fill, H, D in SHAPES:
        lens, js, ts, cu = attention_inputs(B, L, fill, H, D)
        flops = 4.0 * H * D * float((lens.astype(np.float64) ** 2).sum())
        it = rotate(ts)
        sc = 1 / math.sqrt(D)
        fa2 = gpu_time_ms(lambda: _fa2(torch, *next(it), cu, L, sc, False))[0]  # noqa: B023
        ref = None
        line = {"shape": f"B={B} L={L} f={fill} {H}x{D}", "fa2": fa2}
        for vname, (mt, bn, minb, bm, st) in VARIANTS.items():
            if mt is None:
                A._FAM, A._mma_bn, A._mma_threads, A._mma_stages = default
            else:
                if bm < 16 * mt or (D == 256 and mt == 2):
                    continue
                opts = [f"-DJFA_MT(D)={mt}", f"-DJFA_BN(D)={bn}", f"-DJFA_MINB(D)={minb}",
                        f"-DJFA_STAGES(D)={st}"]
                names = [A._mma_name("bf16_t", D, bm, False)]
                A._FAM = KernelFamily("attention.cu", names, options=opts, register=False)
                A._mma_bn = lambda d, bn=bn: bn
                A._mma_threads = lambda d, b, mt=mt: b // (16 * mt) * 32
                A._mma_stages = lambda d, st=st: st
                A._BM128_DIMS = (32, 64, 96, 128, 256)
            for s in js:
                for x in s:
                    x._cache.clear()
            try:
                out = A.jagged_flash_attention(*js[0], _bm=bm).values
                o32 = out.astype(np.float32)
                if ref is None:
                    ref = o32
                err = float(cupy.linalg.norm(o32 - ref) / cupy.linalg.norm(ref))
                if not math.isfinite(err) or err > 2e-2:
                    line[vname] = f"WRONG {err:.2e}"
                    continue
                it2 = rotate(js)
                ms = gpu_time_ms(lambda it2=it2, bm=bm: A.jagged_flash_attention(*next(it2),
                                                                                  _bm=bm))[0]
                line[vname] = f"{ms:.4f} ({ms / fa2:.2f}x, {flops / ms / 1e9:.0f} TF)"
            except Exception as e:  # a variant that fails must not stop the sweep
                line[vname] = f"ERR {type(e).__name__}: {str(e)[:80]}"
        A._FAM, A._mma_bn, A._mma_threads, A._mma_stages = default
        rows.append(line)
        print(line, flush=True)
    print()
    for r in rows:
        print(" | ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in r.items()))


if __name__ == "__main__":
    main()
