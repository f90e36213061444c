"""Jagged Flash Attention forward vs dense padded attention, padded SDPA, FlashAttention-2 varlen.

Every peer is timed with its own padding/unpadding where it needs it, on the same bf16 inputs, in
the same process. TFLOP/s counts 4·H·D·ΣL² per forward (halved for causal). ``python -m
bench.bench_attention [--quick]`` prints a table.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from bench.harness import cupy_peak, entry, gpu_time_ms, lengths_for, rotate, time_ms, torch_peak

# (B, max_len, fill, H, D, causal)
SHAPES = [
    (1024, 256, 0.5, 1, 128, False),
    (1024, 512, 0.25, 1, 128, False),
    (1024, 1024, 0.1, 1, 128, False),
    (1024, 1024, 0.25, 2, 64, False),
    (2048, 128, 0.5, 4, 32, False),
    (256, 4096, 0.25, 1, 128, False),
    (1024, 512, 0.25, 1, 128, True),
]
# with SHAPES' (1024, 1024, 0.1, 1, 128): time against fill ratio at one max_len
FILL_SWEEP = [(1024, 1024, 0.25, 1, 128, False), (1024, 1024, 0.5, 1, 128, False)]
# float32 inputs: the exact FFMA kernel, TF32 (allow_tf32) and padded SDPA in float32
FP32_SHAPES = [(1024, 512, 0.25, 1, 128, False), (1024, 1024, 0.1, 1, 64, False)]


def _fa2(torch, q, k, v, cu, max_len, scale, causal):
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, causal,
                                                   False, scale=scale)[0]


def _pad(torch, x, off_t, max_len):
    T, H, D = x.shape
    d = torch.ops.aten._jagged_to_padded_dense_forward(x.view(T, H * D), [off_t], [max_len], 0.0)
    return d.view(-1, max_len, H, D).transpose(1, 2)  # [B, H, L, D]


def _unpad(torch, d, off_t, T):
    B, H, L, D = d.shape
    dense = d.transpose(1, 2).reshape(B, L, H * D)
    return torch.ops.aten._padded_dense_to_jagged_forward(dense, [off_t], T).view(T, H, D)


def _sdpa(torch, q, k, v, off_t, keymask, max_len, scale, causal):
    F = torch.nn.functional
    T = q.shape[0]
    qp, kp, vp = (_pad(torch, x, off_t, max_len) for x in (q, k, v))
    mask = keymask
    if causal:
        mask = mask & torch.ones(max_len, max_len, dtype=torch.bool, device=q.device).tril()
    o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale)
    return _unpad(torch, o, off_t, T)


def _dense(torch, q, k, v, off_t, keymask, max_len, scale, causal):
    T = q.shape[0]
    qp, kp, vp = (_pad(torch, x, off_t, max_len) for x in (q, k, v))
    s = torch.matmul(qp, kp.transpose(-1, -2)) * scale
    mask = keymask
    if causal:
        mask = mask & torch.ones(max_len, max_len, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num_(0.0)
    return _unpad(torch, torch.matmul(p, vp), off_t, T)


def _setup(cupy, B, max_len, fill, H, D, causal, dtype, matmuls):
    """(lengths, T, params, FLOPs, int32 offsets on the device) of one shape; FLOPs count
    ``matmuls`` products of 2·H·D·ΣL² (2 for a forward, 5 for a backward), halved for causal."""
    lens = lengths_for(B, max_len, fill)
    T = int(lens.sum())
    params = {"B": B, "max_len": max_len, "fill": fill, "H": H, "D": D, "dtype": dtype,
              "causal": causal, "T": T}
    flops = 2.0 * matmuls * H * D * float((lens.astype(np.float64) ** 2).sum())
    off = cupy.asarray(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    return lens, T, params, flops * (0.5 if causal else 1), off


def run(quick: bool = False) -> list[dict]:
    import cupy

    try:
        import torch
    except ImportError:
        torch = None
    reps = 10 if quick else 30
    results = []
    for shape in SHAPES + FILL_SWEEP:
        results += _one_shape(cupy, torch, *shape, reps=reps)
        cupy.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()
    for shape in FP32_SHAPES:
        results += _fp32_shape(cupy, torch, *shape, reps=reps)
    for shape in SHAPES:
        results += _bwd_shape(cupy, torch, *shape, reps=reps)
        cupy.get_default_memory_pool().free_all_blocks()
    results += _bwd_shape(cupy, torch, *SHAPES[0], reps=reps, bias=True)
    results += _bwd_shape(cupy, torch, *FP32_SHAPES[0], reps=reps, dtype="float32")
    if torch is not None:
        for shape in (SHAPES[0], SHAPES[3]):
            results += _train_shape(cupy, torch, *shape, reps=reps)
    return results


def _train_shape(cupy, torch, B, max_len, fill, H, D, causal, reps):
    """A training step through the torch adapter (``cujagged.torch.jagged_flash_attention``,
    forward + backward by autograd on torch tensors) against FlashAttention-2 varlen's forward
    + backward ops on the same tensors. Ours three ways: ``cujagged_torch`` over one offsets
    tensor (its checked structure and tile lists cached: the later layers of a model step);
    ``_new_offsets``: a new offsets tensor each step (a batch's first layer: validated, one
    device sync), ``_new_offsets_hinted``: the same with ``max_length`` (no sync). Timed with
    events over back-to-back steps (``time_ms``), so a step's syncs and host overhead count
    where they stall the GPU. Peak memory: the adapter allocates in CuPy's pool, FA2 in
    torch's."""
    import cujagged.torch as cjt

    lens, T, params, flops, off = _setup(cupy, B, max_len, fill, H, D, causal, "bfloat16", 7)
    cu = torch.from_dlpack(off)
    g = torch.Generator(device="cuda").manual_seed(0)
    sets = [[torch.randn(T, H, D, device="cuda", generator=g, dtype=torch.bfloat16)
             .requires_grad_() for _ in range(4)] for _ in range(2)]
    scale, ml = 1 / math.sqrt(D), int(lens.max())

    def ours(s, offsets=cu, **hint):
        q, k, v, w = s
        # (autograd.grad: no accumulation into .grad, which the peer's ops do not do either)
        o = cjt.jagged_flash_attention(q, k, v, offsets, causal=causal, **hint)
        torch.autograd.grad(o, (q, k, v), w)

    def fa2(s):
        q, k, v, w = s
        o, lse, seed, offs = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, causal, False, scale=scale)[:4]
        torch.ops.aten._flash_attention_backward(w, q, k, v, o, lse, cu, cu, max_len, max_len,
                                                 0.0, causal, seed, offs, scale=scale)

    results = []
    for impl, fn in (("cujagged_torch", ours),
                     ("cujagged_torch_new_offsets", lambda s: ours(s, cu.clone())),
                     ("cujagged_torch_new_offsets_hinted",
                      lambda s: ours(s, cu.clone(), max_length=ml)),
                     ("fa2_varlen", fa2)):
        try:
            it = rotate(sets)
            ms = time_ms(lambda fn=fn, it=it: fn(next(it)), reps=reps)
            with (torch_peak() if impl == "fa2_varlen" else cupy_peak()) as pk:
                fn(sets[0])
            results.append(entry("attention_train_step", impl, params, ms, pk.mib,
                                 flops=flops))
        except Exception as ex:
            print(f"  {impl} training step failed on {params}: {type(ex).__name__}: "
                  f"{str(ex)[:300]}", file=sys.stderr)
    return results


def _bwd_shape(cupy, torch, B, max_len, fill, H, D, causal, reps, bias=False,
               dtype="bfloat16"):
    """The backward (dq, dk, dv) given the forward's O and LSE, against FlashAttention-2 varlen's
    backward given its own (FLOPs: 2.5x the forward's, for the five matmuls). ``bias``: with a
    padded bias of one head ``[B, 1, max_len, max_len]`` (and dbias; no peer); ``dtype``
    "float32": the exact FFMA kernel (no peer)."""
    import cujagged
    from cujagged import JaggedArray, jagged_flash_attention, jagged_flash_attention_backward

    lens, T, params, flops, off = _setup(cupy, B, max_len, fill, H, D, causal, dtype, 5)
    dt = cujagged.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(1)
    kw = {"causal": causal}
    if bias:
        params["bias"] = "padded [B, 1, max_len, max_len]"
        kw["bias"] = cupy.asarray(rng.standard_normal((B, 1, max_len, max_len),
                                                      dtype=np.float32)).astype(dt)
    sets = []
    for _ in range(2):
        q, k, v, g = (JaggedArray(cupy.asarray(rng.standard_normal((T, H, D), dtype=np.float32))
                                  .astype(dt), off, max_length=int(lens.max()), validate=False)
                      for _ in range(4))
        o, lse = jagged_flash_attention(q, k, v, **kw, return_lse=True)
        sets.append((g, q, k, v, o, lse))
    it = rotate(sets)

    def ours():
        g, q, k, v, o, lse = next(it)
        return jagged_flash_attention_backward(g, q, k, v, **kw, out=o, lse=lse)

    mine = ours()
    ms = time_ms(ours, reps=reps)
    with cupy_peak() as pk:
        ours()
        cupy.cuda.runtime.deviceSynchronize()
    e = entry("attention_bwd", "cujagged", params, ms, pk.mib, flops=flops)
    e["gpu_ms"], e["host_ms"] = (round(x, 5) for x in gpu_time_ms(ours))
    results = [e]
    if torch is None or bias or dtype != "bfloat16":
        return results
    try:
        cu = torch.from_dlpack(off)
        scale = 1 / math.sqrt(D)
        tsets = []
        for g, q, k, v, _, _ in sets:
            tq, tk, tv, tg = (torch.from_dlpack(a.values) for a in (q, k, v, g))
            fo = torch.ops.aten._flash_attention_forward(tq, tk, tv, cu, cu, max_len, max_len,
                                                         0.0, causal, False, scale=scale)
            tsets.append((tg, tq, tk, tv, fo[0], fo[1], fo[2], fo[3]))
        it2 = rotate(tsets)

        def fa2():
            tg, tq, tk, tv, o, lse, seed, offs = next(it2)
            return torch.ops.aten._flash_attention_backward(
                tg, tq, tk, tv, o, lse, cu, cu, max_len, max_len, 0.0, causal, seed, offs,
                scale=scale)

        theirs = fa2()
        diff = max(float(torch.linalg.vector_norm(a.float() - torch.from_dlpack(b.values).float())
                         / torch.linalg.vector_norm(a.float())) for a, b in zip(theirs, mine[:3]))
        ms = time_ms(fa2, reps=reps)
        with torch_peak() as pk:
            fa2()
        f = entry("attention_bwd", "fa2_varlen", params, ms, pk.mib, flops=flops)
        f["rel_diff_vs_cujagged"] = round(diff, 5)
        f["gpu_ms"], f["host_ms"] = (round(x, 5) for x in gpu_time_ms(fa2))
        results.append(f)
    except Exception as ex:
        print(f"  fa2_varlen backward failed on {params}: {type(ex).__name__}: {str(ex)[:300]}",
              file=sys.stderr)
    return results


def _fp32_shape(cupy, torch, B, max_len, fill, H, D, causal, reps):
    """float32: cujagged exact (FFMA) and TF32, padded SDPA in float32 (torch's default, no
    TF32), same inputs; rel_diff of each against the exact kernel."""
    from cujagged import JaggedArray, jagged_flash_attention

    lens, T, params, flops, off = _setup(cupy, B, max_len, fill, H, D, causal, "float32", 2)
    rng = np.random.default_rng(0)
    sets = [[cupy.asarray(rng.standard_normal((T, H, D), dtype=np.float32)) for _ in range(3)]
            for _ in range(2)]
    jsets = [[JaggedArray(x, off, max_length=int(lens.max()), validate=False) for x in s]
             for s in sets]
    exact = jagged_flash_attention(*jsets[0], causal=causal).values
    results = []
    fns = {"cujagged_fp32": lambda s: jagged_flash_attention(*s, causal=causal).values,
           "cujagged_tf32": lambda s: jagged_flash_attention(*s, causal=causal,
                                                             allow_tf32=True).values}
    if torch is not None:
        off_t = torch.from_dlpack(off).to(torch.int64)
        keymask = (torch.arange(max_len, device="cuda")[None, :]
                   < torch.from_dlpack(cupy.asarray(lens))[:, None]).view(B, 1, 1, max_len)

        def sdpa(s):
            ts = [torch.from_dlpack(x.values) for x in s]
            o = _sdpa(torch, *ts, off_t, keymask, max_len, 1 / math.sqrt(D), causal)
            return cupy.from_dlpack(o)

        fns["sdpa_padded"] = sdpa
    for impl, fn in fns.items():
        try:
            it = rotate(jsets)
            err = float(cupy.linalg.norm(fn(jsets[0]) - exact) / cupy.linalg.norm(exact))
            ms = time_ms(lambda fn=fn, it=it: fn(next(it)), reps=reps)
            peak = torch_peak() if impl == "sdpa_padded" else cupy_peak()
            with peak as pk:
                fn(jsets[0])
                cupy.cuda.runtime.deviceSynchronize()
            e = entry("attention_fwd", impl, params, ms, pk.mib, flops=flops)
            e["rel_diff_vs_exact"] = round(err, 6)
            results.append(e)
        except Exception as ex:  # a peer that cannot run this shape
            print(f"  {impl} failed on {params}: {type(ex).__name__}: {str(ex)[:300]}",
                  file=sys.stderr)
    return results


def _one_shape(cupy, torch, B, max_len, fill, H, D, causal, reps):
    import cujagged
    from cujagged import JaggedArray, jagged_flash_attention

    results = []
    lens, T, params, flops, off = _setup(cupy, B, max_len, fill, H, D, causal, "bfloat16", 2)
    scale = 1 / math.sqrt(D)
    rng = np.random.default_rng(0)
    sets = [[cupy.asarray(rng.standard_normal((T, H, D), dtype=np.float32))
             .astype(cujagged.bfloat16) for _ in range(3)] for _ in range(2)]
    jsets = [[JaggedArray(x, off, max_length=int(lens.max()), validate=False) for x in s]
             for s in sets]

    def ours(bm=None):
        it = rotate(jsets)
        return lambda: jagged_flash_attention(*next(it), causal=causal, _bm=bm)

    for bm, impl in ((None, "cujagged"), (64, "cujagged_bm64"), (128, "cujagged_bm128")):
        if bm == 128 and D not in (64, 128):
            continue
        f = ours(bm)
        f()
        ms = time_ms(f, reps=reps)
        cupy.cuda.runtime.deviceSynchronize()
        with cupy_peak() as pk:
            f()
            cupy.cuda.runtime.deviceSynchronize()
        e = entry("attention_fwd", impl, params, ms, pk.mib, flops=flops)
        e["gpu_ms"], e["host_ms"] = (round(x, 5) for x in gpu_time_ms(f))
        results.append(e)
    if torch is None:
        return results

    tsets = [[torch.from_dlpack(x) for x in s] for s in sets]
    off_t = torch.from_dlpack(off).to(torch.int64)
    cu = torch.from_dlpack(off)
    keymask = (torch.arange(max_len, device="cuda")[None, :]
               < torch.from_dlpack(cupy.asarray(lens))[:, None]).view(B, 1, 1, max_len)
    peers = {
        "fa2_varlen": lambda s: _fa2(torch, *s, cu, max_len, scale, causal),
        "sdpa_padded": lambda s: _sdpa(torch, *s, off_t, keymask, max_len, scale, causal),
        "dense_padded": lambda s: _dense(torch, *s, off_t, keymask, max_len, scale, causal),
    }
    ref = torch.from_dlpack(jagged_flash_attention(*jsets[0], causal=causal).values).float()
    for impl, fn in peers.items():
        try:
            it = rotate(tsets)
            out = fn(tsets[0]).float()
            err = float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(out))
            del out
            ms = time_ms(lambda fn=fn, it=it: fn(next(it)), reps=reps)
            with torch_peak() as pk:
                fn(tsets[0])
            e = entry("attention_fwd", impl, params, ms, pk.mib, flops=flops)
            e["rel_diff_vs_cujagged"] = round(err, 5)
            if impl == "fa2_varlen":
                e["gpu_ms"], e["host_ms"] = (round(x, 5) for x in gpu_time_ms(
                    lambda fn=fn, it=it: fn(next(it))))
            results.append(e)
        except Exception as ex:  # a peer that cannot run this shape (e.g. out of memory)
            print(f"  {impl} failed on {params}: {type(ex).__name__}: {str(ex)[:300]}",
                  file=sys.stderr)
        torch.cuda.empty_cache()
    return results


def table(results: list[dict]) -> str:
    lines = []
    by = {}
    for e in results:
        key = tuple(sorted((k, v) for k, v in e["params"].items()))
        by.setdefault(key, {})[e["impl"]] = e
    for _key, d in by.items():
        p = next(iter(d.values()))["params"]
        lines.append(f"B={p['B']} max_len={p['max_len']} fill={p['fill']} H={p['H']} D={p['D']} "
                     f"causal={p['causal']} T={p['T']}")
        ours = d.get("cujagged")
        for impl, e in d.items():
            ratio = f"  ours/peer={ours['ms'] / e['ms']:.3f}" if ours and impl != "cujagged" \
                else ""
            dev = f"  device {e['gpu_ms']:.4f} ms host {e['host_ms']:.4f} ms" if "gpu_ms" in e \
                else ""
            lines.append(f"  {impl:16s} {e['ms']:9.4f} ms {e.get('tflops', 0):8.2f} TFLOP/s "
                         f"{e['peak_mib']:9.2f} MiB{ratio}{dev}")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    res = run(quick="--quick" in sys.argv)
    print(table(res))
    if len(sys.argv) > 1 and sys.argv[-1].endswith(".json"):
        with open(sys.argv[-1], "w") as f:
            json.dump(res, f, indent=1)
