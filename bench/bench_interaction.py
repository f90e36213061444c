"""Feature-interaction benchmark (bf16, B=1024, max_len 1024, fill 0.25, inner sizes 128):

- ``jagged_dense_bmm`` (x ``[ΣL, K]`` times ``y[b]`` ``[K, N]``): bytes x + y + out, FLOPs
  2 ΣL K N;
- ``jagged_jagged_bmm`` (``x_bᵀ g_b``, the weight gradient): bytes x + g + out ``[B, K, N]``,
  FLOPs 2 ΣL K N;
- ``jagged_jagged_bmm_jagged_out`` (``x_b y_bᵀ`` into jagged2 rows): bytes x + y + out
  ``[ΣL²]``, FLOPs 2 ΣL² K;
- ``array_jagged_bmm_jagged_out`` (``m_b x_b``, m jagged2): bytes m + x + out, FLOPs 2 ΣL² N;

each against the padded way in PyTorch (``torch.bmm`` on ``[B, max_len, ·]`` padded values with
the padding and, for the jagged result, the gather back: "padded_bmm_roundtrip"; ``torch.bmm``
alone on already padded tensors: "padded_bmm") and FBGEMM where installed. "cujagged" is the
default block width (128 output columns at N = 128), "cujagged_bn64" the other one.
"""

from __future__ import annotations

import sys

import numpy as np

B, MAX_LEN, K, N = 1024, 1024, 128, 128
FILLS = (0.1, 0.25, 0.5)
N_SETS = 3


def _torch():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def _timed(name, impl, params, fn, nbytes, flops, peak=0.0):
    from bench.harness import device_fields, entry, time_ms

    e = entry(name, impl, params, time_ms(fn), peak, nbytes=nbytes, flops=flops)
    e.update(device_fields(fn, nbytes))
    return e


def _ours(name, params, fn, nbytes, flops):
    """The default block width, then the other: (entries, the default's first result)."""
    from bench.harness import cupy_peak
    from cujagged import interaction

    out = []
    for impl, bn in (("cujagged", None), ("cujagged_bn64", 64)):
        saved, interaction._BN = interaction._BN, bn
        try:
            with cupy_peak() as p:
                res = fn()
            out.append(_timed(name, impl, params, fn, nbytes, flops, p.mib))
        finally:
            interaction._BN = saved
        if bn is None:
            first = res
    return out, first


def _check(name, ref, ours, torch):
    """Warn (stderr) where cujagged and the torch peer disagree."""
    got = torch.from_dlpack(ours.view(np.int16)).view(torch.bfloat16).float()
    diff = float((ref.float() - got).norm() / ref.float().norm())
    if diff > 2e-2:
        print(f"bench_interaction: {name}: cujagged and torch differ by {diff:.1e}",
              file=sys.stderr)


def _case(fill, rng, torch) -> list[dict]:
    import cupy

    import cujagged
    from bench.harness import lengths_for, rotate
    from cujagged.interaction import jagged_dense_bmm, jagged_jagged_bmm
    from cujagged.interop import _torch_from

    lens = lengths_for(B, MAX_LEN, fill, seed=0)
    off_h = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lens, out=off_h[1:])
    T, maxlen = int(off_h[-1]), int(lens.max())
    params = {"B": B, "max_len": MAX_LEN, "fill": fill, "K": K, "N": N, "dtype": "bfloat16",
              "T": T}
    dt = cujagged.bfloat16
    offsets = cupy.asarray(off_h)

    def jag(d):
        return cujagged.JaggedArray(cupy.asarray(rng.standard_normal((T, d), dtype=np.float32)
                                                 .astype(dt)), offsets, max_length=maxlen)

    sets = [(jag(K), cupy.asarray(rng.standard_normal((B, K, N), dtype=np.float32).astype(dt)),
             jag(N)) for _ in range(N_SETS)]
    flops = 2.0 * T * K * N
    nb_dense = (T * K + B * K * N + T * N) * 2
    nb_jj = (T * K + T * N + B * K * N) * 2
    it = rotate(sets)
    out, dense0 = _ours("jagged_dense_bmm", params,
                        lambda: jagged_dense_bmm(*next(it)[:2]).values, nb_dense, flops)
    it = rotate(sets)
    jj, jj0 = _ours("jagged_jagged_bmm", params,
                    lambda: jagged_jagged_bmm((s := next(it))[0], s[2]), nb_jj, flops)
    out += jj
    out += _jagged2_cases(sets, params, torch)
    if torch is None:
        return out
    tsets = [(_torch_from(x.values), _torch_from(y), _torch_from(g.values)) for x, y, g in sets]
    toff = _torch_from(offsets)
    j2p = torch.ops.aten._jagged_to_padded_dense_forward
    p2j = torch.ops.aten._padded_dense_to_jagged_forward

    def dense_rt(xv, y, _):
        return p2j(torch.bmm(j2p(xv, [toff], [maxlen], 0.0), y), [toff], T)

    def jj_rt(xv, _, gv):
        return torch.bmm(j2p(xv, [toff], [maxlen], 0.0).transpose(1, 2),
                         j2p(gv, [toff], [maxlen], 0.0))

    try:
        for name, rt, nbytes, ours in (("jagged_dense_bmm", dense_rt, nb_dense, dense0),
                                       ("jagged_jagged_bmm", jj_rt, nb_jj, jj0)):
            # a fresh first set each time: the ops above ran on the first set's rows
            _check(name, rt(*tsets[0]), ours, torch)
            it2 = rotate(tsets)
            out.append(_timed(name, "padded_bmm_roundtrip", params,
                              lambda rt=rt, it2=it2: rt(*next(it2)), nbytes, flops))
        padded = [(j2p(xv, [toff], [maxlen], 0.0), y, j2p(gv, [toff], [maxlen], 0.0))
                  for xv, y, gv in tsets]
        it3 = rotate(padded)
        out.append(_timed("jagged_dense_bmm", "padded_bmm", params,
                          lambda: torch.bmm(*next(it3)[:2]), nb_dense, flops))
        it3 = rotate(padded)
        out.append(_timed("jagged_jagged_bmm", "padded_bmm", params,
                          lambda: torch.bmm((s := next(it3))[0].transpose(1, 2), s[2]), nb_jj,
                          flops))
    except Exception as e:  # a peer that cannot run is reported, not fatal
        print(f"bench_interaction: torch peer failed: {e}", file=sys.stderr)
    try:
        import fbgemm_gpu  # noqa: F401

        fb = torch.ops.fbgemm
        it4 = rotate(tsets)
        out.append(_timed("jagged_dense_bmm", "fbgemm", params,
                          lambda: fb.jagged_dense_bmm((s := next(it4))[0], s[1], toff, maxlen),
                          nb_dense, flops))
        it4 = rotate(tsets)
        out.append(_timed("jagged_jagged_bmm", "fbgemm", params,
                          lambda: fb.jagged_jagged_bmm((s := next(it4))[0], s[2], toff, maxlen),
                          nb_jj, flops))
    except Exception:
        pass
    return out


def _jagged2_cases(sets, params, torch) -> list[dict]:
    """The jagged2 matmuls on the same rows (x, g of each set), and padded ``torch.bmm`` of
    the same products on already padded tensors (its ``[B, max_len, max_len]`` output is not
    jagged2: no round trip is counted)."""
    from bench.harness import rotate
    from cujagged.interaction import array_jagged_bmm_jagged_out, jagged_jagged_bmm_jagged_out

    x0 = sets[0][0]
    off_h = np.asarray(x0.offsets.get(), dtype=np.int64)
    lens = np.diff(off_h)
    T, sq = int(off_h[-1]), int((lens * lens).sum())
    ms = [jagged_jagged_bmm_jagged_out(x, g) for x, _, g in sets]
    p = dict(params, sum_L2=sq)
    flops = 2.0 * sq * K
    nb_jo = (2 * T * K + sq) * 2
    nb_aj = (sq + 2 * T * N) * 2
    it = rotate(sets)
    out, _ = _ours("jagged_jagged_bmm_jagged_out", p,
                   lambda: jagged_jagged_bmm_jagged_out((s := next(it))[0], s[2]).values,
                   nb_jo, flops)
    it = rotate(list(zip(ms, [s[2] for s in sets])))
    aj, _ = _ours("array_jagged_bmm_jagged_out", p,
                  lambda: array_jagged_bmm_jagged_out(*next(it)).values, nb_aj, flops)
    out += aj
    if torch is None:
        return out
    try:
        from cujagged.interop import _torch_from

        maxlen = int(lens.max())
        toff = _torch_from(x0.offsets)
        j2p = torch.ops.aten._jagged_to_padded_dense_forward
        padded = [(j2p(_torch_from(x.values), [toff], [maxlen], 0.0),
                   j2p(_torch_from(g.values), [toff], [maxlen], 0.0)) for x, _, g in sets]
        it2 = rotate(padded)
        out.append(_timed("jagged_jagged_bmm_jagged_out", "padded_bmm", p,
                          lambda: torch.bmm((s := next(it2))[0], s[1].transpose(1, 2)),
                          nb_jo, flops))
        mp = [torch.bmm(x, g.transpose(1, 2)) for x, g in padded]
        it3 = rotate(list(zip(mp, [g for _, g in padded])))
        out.append(_timed("array_jagged_bmm_jagged_out", "padded_bmm", p,
                          lambda: torch.bmm(*next(it3)), nb_aj, flops))
        del mp, padded
    except Exception as e:  # a peer that cannot run is reported, not fatal
        print(f"bench_interaction: torch jagged2 peer failed: {e}", file=sys.stderr)
    return out


def run(quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    torch = _torch()
    out = []
    for fill in (0.25,) if quick else FILLS:
        out.extend(_case(fill, rng, torch))
    return out
