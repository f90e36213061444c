"""Times the Hopper wgmma attention kernel (cuda_src/attention_sm90.cu) in several variants
against the mma.sync kernel and FlashAttention-2 varlen on the reference shapes (bf16, device
time back to back), after checking each against the mma.sync result. Every variant is timed in
``ROUNDS`` interleaved rounds (same process, same inputs), so that drift shows.

    PYTHONPATH=. python3 -m bench.attention_sm90_time [--rounds=N] [--d=D] [BNxST ...] [-DX=1 ...]

With ``BNxST[@MINB]`` arguments (keys per step x K/V stages, e.g. ``32x3 64x2 32x3@5``) and
``-DX=1`` arguments (the default configuration compiled with that option; ``-DX=1;-DY=2`` for
several) the default kernel is
timed against those variants (configurations apply to every head dim) instead of ``VARIANTS``;
``@MINB`` sets the blocks per SM that registers are planned for (``JFA90_MINB``) of the
one-warpgroup kernels (1 for the others). ``--d=D`` times (and compiles) head dim D only.
"""

from __future__ import annotations

import math

import numpy as np

from bench.attention_sweep import SHAPES

# (label, rows per block, (keys per step, K/V stages) or None: the default choice, extra NVRTC
# options)
VARIANTS = [("sm90", 64, None, ()),
            ("bm128", 128, None, ()),
            ("bn32_st2", 64, (32, 2), ()),
            ("bn64_st2", 64, (64, 2), ())]
CASES = [(*s, False) for s in SHAPES if s[4] in (64, 128)] + [(1024, 512, 0.25, 1, 128, True)]
ROUNDS = 2


def main(argv=None):
    import sys

    import cupy
    import torch

    from bench.bench_attention import _fa2
    from bench.harness import attention_inputs, gpu_time_ms, rotate
    from cujagged import attention as A
    from cujagged import jagged_flash_attention
    from cujagged._kernels import KernelFamily

    global VARIANTS, ROUNDS
    args = sys.argv[1:] if argv is None else argv
    dims, cases = A._SM90_DIMS, CASES
    for a in args:
        if a.startswith("--rounds="):
            ROUNDS = int(a.split("=", 1)[1])
        elif a.startswith("--d="):
            dims = (int(a.split("=", 1)[1]),)
            cases = [c for c in CASES if c[4] in dims]
    cfgs = [a for a in args if not a.startswith("-")]
    defs = [a for a in args if a.startswith("-D")]  # the default configuration with -D options
    if cfgs or defs:
        VARIANTS = [VARIANTS[0]] + [(a[2:], 64, None, tuple(a.split(";"))) for a in defs]
        for a in cfgs:
            cfg, _, minb = a.partition("@")
            bn, st = map(int, cfg.split("x"))
            op = (f"-DJFA90_MINB(D,NWG,BN,ST)=((NWG)==1?{minb}:1)",) if minb else ()
            VARIANTS.append((f"bn{bn}_st{st}" + (f"_minb{minb}" if minb else ""), 64, (bn, st), op))
    default = (A._FAM90, A._SM90_CFG)
    fams = {(c, op): KernelFamily("attention_sm90.cu", ["jfa_sm90_smem_offset"] + [
                                  A._sm90_name("bf16_t", d, w, *cc) for d in dims
                                  for w in (bm // 64,)
                                  for cc in ([c] if c else sorted(set(A._SM90_CFG[d])))],
                                  options=A._FAM90.options[1:] + op, arch="sm_90a",
                                  register=False)
            for _, bm, c, op in VARIANTS if c is not None or op}

    def use(c, op):
        A._FAM90 = fams.get((c, op), default[0])
        A._SM90_CFG = {d: (c, c) for d in A._SM90_DIMS} if c else default[1]

    dev = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print("device:", dev)
    for B, L, fill, H, D, causal in cases:
        _, js, ts, cu = attention_inputs(B, L, fill, H, D)
        it = rotate(ts)
        sc = 1 / math.sqrt(D)
        line = {"shape": f"B={B} L={L} f={fill} {H}x{D}{' causal' if causal else ''}"}
        ref = jagged_flash_attention(*js[0], causal=causal, _impl="mma").values.astype(np.float32)
        for rnd in range(ROUNDS):
            fa2 = gpu_time_ms(lambda: _fa2(torch, *next(it), cu, L, sc, causal))[0]  # noqa: B023
            line[f"fa2#{rnd}"] = f"{fa2:.4f}"
            for name, bm, c, op in [("mma", None, None, ())] + VARIANTS:
                kw = dict(_impl="mma") if name == "mma" else dict(_impl="sm90", _bm=bm)
                use(c, op)
                for x in js[0] + js[1]:
                    x._cache.clear()
                try:
                    out = jagged_flash_attention(*js[0], causal=causal, **kw).values
                    err = float(cupy.linalg.norm(out.astype(np.float32) - ref)
                                / cupy.linalg.norm(ref))
                    it2 = rotate(js)
                    ms = gpu_time_ms(lambda it2=it2, kw=kw: jagged_flash_attention(
                        *next(it2), causal=causal, **kw))[0]  # noqa: B023
                    line[f"{name}#{rnd}"] = f"{ms:.4f} ({ms / fa2:.3f}x, err {err:.1e})"
                except Exception as e:  # keep timing the other variants
                    line[f"{name}#{rnd}"] = f"ERR {type(e).__name__}: {str(e)[:200]}"
        A._FAM90, A._SM90_CFG = default
        print(" | ".join(f"{k}={v}" for k, v in line.items()), flush=True)


if __name__ == "__main__":
    main()
