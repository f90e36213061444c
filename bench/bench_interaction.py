"""Feature-interaction benchmark: ``jagged_dense_bmm`` (bf16, B=1024, max_len 1024, fill 0.25,
K = N = 128) against the padded way in PyTorch (``torch.bmm`` on ``[B, max_len, K]`` padded
values, with the padding and the gather back: "padded_bmm_roundtrip"; and ``torch.bmm`` alone on
an already padded tensor: "padded_bmm") and FBGEMM's ``jagged_dense_bmm`` where installed.

Bytes (read + written): x values + y + out values; FLOPs 2 ΣL K N.
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


def _case(fill, rng, torch) -> list[dict]:
    import cupy

    import cujagged
    from bench.harness import cupy_peak, device_fields, entry, lengths_for, rotate, time_ms
    from cujagged.interop import _torch_from

    lens = lengths_for(B, MAX_LEN, fill, seed=0)
    off_h = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lens, out=off_h[1:])
    T, maxlen = int(off_h[-1]), int(lens.max())
    params = {"B": B, "max_len": MAX_LEN, "fill": fill, "K": K, "N": N, "dtype": "bfloat16",
              "T": T}
    dt = cujagged.bfloat16
    nbytes = (T * K + B * K * N + T * N) * 2
    flops = 2.0 * T * K * N
    offsets = cupy.asarray(off_h)
    sets = [(cujagged.JaggedArray(cupy.asarray(rng.standard_normal((T, K), dtype=np.float32)
                                               .astype(dt)), offsets, max_length=maxlen),
             cupy.asarray(rng.standard_normal((B, K, N), dtype=np.float32).astype(dt)))
            for _ in range(N_SETS)]
    out = []
    it = rotate(sets)
    fn = lambda: cujagged.interaction.jagged_dense_bmm(*next(it))  # noqa: E731
    ms = time_ms(fn)
    with cupy_peak() as p:
        ours = cujagged.interaction.jagged_dense_bmm(*sets[0])
    out.append(entry("jagged_dense_bmm", "cujagged", params, ms, p.mib, nbytes=nbytes,
                     flops=flops))
    out[-1].update(device_fields(fn, nbytes))
    if torch is not None:
        tsets = [(_torch_from(x.values), _torch_from(y)) for x, y in sets]
        toff = _torch_from(offsets)
        j2p = torch.ops.aten._jagged_to_padded_dense_forward
        p2j = torch.ops.aten._padded_dense_to_jagged_forward

        def roundtrip(xv, y):
            d = j2p(xv, [toff], [maxlen], 0.0)
            return p2j(torch.bmm(d, y), [toff], T)

        try:
            ref = roundtrip(*tsets[0])
            diff = float((ref.float() - torch.from_dlpack(ours.values.view(np.int16)).view(
                torch.bfloat16).float()).norm() / ref.float().norm())
            if diff > 2e-2:
                print(f"bench_interaction: cujagged and torch differ by {diff:.1e}",
                      file=sys.stderr)
            it2 = rotate(tsets)
            fn2 = lambda: roundtrip(*next(it2))  # noqa: E731
            out.append(entry("jagged_dense_bmm", "padded_bmm_roundtrip", params, time_ms(fn2),
                             nbytes=nbytes, flops=flops))
            out[-1].update(device_fields(fn2, nbytes))
            dense = [(j2p(xv, [toff], [maxlen], 0.0), y) for xv, y in tsets]
            it3 = rotate(dense)
            fn3 = lambda: torch.bmm(*next(it3))  # noqa: E731
            out.append(entry("jagged_dense_bmm", "padded_bmm", params, time_ms(fn3),
                             nbytes=nbytes, flops=flops))
            out[-1].update(device_fields(fn3, nbytes))
        except Exception as e:  # a peer that cannot run is reported, not fatal
            print(f"bench_interaction: torch peer failed: {e}", file=sys.stderr)
        try:
            import fbgemm_gpu  # noqa: F401

            fb = torch.ops.fbgemm.jagged_dense_bmm
            it4 = rotate(tsets)
            fn4 = lambda: fb(*next(it4), toff, maxlen)  # noqa: E731
            out.append(entry("jagged_dense_bmm", "fbgemm", params, time_ms(fn4),
                             nbytes=nbytes, flops=flops))
            out[-1].update(device_fields(fn4, nbytes))
        except Exception:
            pass
    return out


def run(quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    torch = _torch()
    out = []
    for fill in (0.25,) if quick else FILLS:
        out.extend(_case(fill, rng, torch))
    return out
