"""Layout benchmark: jagged <-> padded.

``to_padded`` and ``from_padded`` of cujagged against PyTorch's
``aten._jagged_to_padded_dense_forward`` / ``aten._padded_dense_to_jagged_forward`` ("aten", the
kernels behind nested tensors) and a plain device copy of the same number of bytes ("copy": the
floor). B=1024, max_len=1024, D=128, fill 0.1/0.25/0.5, bf16 and fp32 (quick: bf16 only).

Bytes (read + written): to_padded = jagged values read + padded tensor written;
from_padded = the jagged part of the padded tensor read + jagged values written. cujagged's
``from_padded`` is timed on its trusted path (``total_length``/``max_length`` given: no host sync,
as aten is given the total), and once more validated (``from_padded_validated``: one sync).
"""

from __future__ import annotations

import sys

import numpy as np

B, MAX_LEN, D = 1024, 1024, 128
FILLS = (0.1, 0.25, 0.5)
DTYPES = ("bfloat16", "float32")
N_SETS = 3  # rotated input sets (the L2 cache must not hold the inputs)


def _torch():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def _same_bits(a, b) -> bool:
    import cupy

    ints = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    return a.shape == b.shape and bool(cupy.array_equal(a.view(ints), b.view(ints)))


def _rotated_ms(fn, inputs) -> float:
    """Median ms of ``fn(input)`` cycling through ``inputs``."""
    from bench.harness import rotate, time_ms

    it = rotate(inputs)
    return time_ms(lambda: fn(next(it)))


def _dev(fn, inputs, nbytes) -> dict:
    """Device time fields (host overhead excluded) of ``fn(input)`` cycling through ``inputs``."""
    from bench.harness import device_fields, rotate

    it = rotate(inputs)
    return device_fields(lambda: fn(next(it)), nbytes)


def _case(fill: float, dname: str, rng, torch) -> list[dict]:
    import cupy

    import cujagged
    from bench.harness import cupy_peak, entry, lengths_for, torch_peak
    from cujagged.interop import _torch_from

    dtype = np.dtype(cujagged.bfloat16 if dname == "bfloat16" else dname)
    lens = lengths_for(B, MAX_LEN, fill, seed=0)
    off_h = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lens, out=off_h[1:])
    T, maxlen = int(off_h[-1]), int(lens.max())
    params = {"B": B, "max_len": MAX_LEN, "fill": fill, "D": D, "dtype": dname, "T": T}
    isz = dtype.itemsize
    jag_bytes, pad_bytes = T * D * isz, B * MAX_LEN * D * isz
    off_bytes = (B + 1) * 8
    nbytes = {"to_padded": jag_bytes + pad_bytes + off_bytes,
              "from_padded": 2 * jag_bytes + off_bytes}
    out: list[dict] = []

    offsets = cupy.asarray(off_h)
    xs = [cujagged.JaggedArray(
        cupy.asarray(rng.standard_normal((T, D), dtype=np.float32).astype(dtype)),
        offsets, max_length=maxlen) for _ in range(N_SETS)]
    denses = [cujagged.to_padded(x, MAX_LEN) for x in xs]

    # ---- cujagged
    ms = _rotated_ms(lambda x: cujagged.to_padded(x, MAX_LEN), xs)
    with cupy_peak() as p:
        cujagged.to_padded(xs[0], MAX_LEN)
    out.append(entry("to_padded", "cujagged", params, ms, p.mib, nbytes=nbytes["to_padded"]))
    out[-1].update(_dev(lambda x: cujagged.to_padded(x, MAX_LEN), xs, nbytes["to_padded"]))
    # trusted path (total and longest row given, no host sync), as aten is given the total
    ms = _rotated_ms(lambda d: cujagged.from_padded(d, offsets=offsets, total_length=T,
                                                    max_length=maxlen), denses)
    with cupy_peak() as p:
        back = cujagged.from_padded(denses[0], offsets=offsets, total_length=T, max_length=maxlen)
    if not _same_bits(back.values, xs[0].values):
        print(f"bench_layout: from_padded(to_padded(x)) != x at {params}", file=sys.stderr)
    out.append(entry("from_padded", "cujagged", params, ms, p.mib, nbytes=nbytes["from_padded"]))
    out[-1].update(_dev(lambda d: cujagged.from_padded(d, offsets=offsets, total_length=T,
                                                       max_length=maxlen), denses,
                        nbytes["from_padded"]))
    # validated path: one device->host sync learns the total and the longest row
    ms = _rotated_ms(lambda d: cujagged.from_padded(d, offsets=offsets), denses)
    out.append(entry("from_padded_validated", "cujagged", params, ms, p.mib,
                     nbytes=nbytes["from_padded"]))

    # ---- aten (PyTorch's nested-tensor kernels), same inputs through DLPack
    if torch is not None:
        tvals = [_torch_from(x.values) for x in xs]
        toff = _torch_from(offsets)
        tdense = [_torch_from(d) for d in denses]
        j2p = torch.ops.aten._jagged_to_padded_dense_forward
        p2j = torch.ops.aten._padded_dense_to_jagged_forward
        try:
            ref = j2p(tvals[0], [toff], [MAX_LEN], 0.0)
            if not _same_bits(denses[0],
                              cupy.from_dlpack(ref.view(torch.int16) if isz == 2 else ref)):
                print(f"bench_layout: aten and cujagged to_padded differ at {params}",
                      file=sys.stderr)
            del ref
            ms = _rotated_ms(lambda v: j2p(v, [toff], [MAX_LEN], 0.0), tvals)
            with torch_peak() as p:
                j2p(tvals[0], [toff], [MAX_LEN], 0.0)
            out.append(entry("to_padded", "aten", params, ms, p.mib, nbytes=nbytes["to_padded"]))
            out[-1].update(_dev(lambda v: j2p(v, [toff], [MAX_LEN], 0.0), tvals,
                                nbytes["to_padded"]))
        except Exception as e:  # a peer that cannot run is reported, not fatal
            print(f"bench_layout: aten to_padded failed at {params}: {e}", file=sys.stderr)
        try:
            ms = _rotated_ms(lambda d: p2j(d, [toff], T), tdense)
            with torch_peak() as p:
                p2j(tdense[0], [toff], T)
            out.append(entry("from_padded", "aten", params, ms, p.mib,
                             nbytes=nbytes["from_padded"]))
            out[-1].update(_dev(lambda d: p2j(d, [toff], T), tdense, nbytes["from_padded"]))
        except Exception as e:
            print(f"bench_layout: aten from_padded failed at {params}: {e}", file=sys.stderr)
        del tvals, tdense
        torch.cuda.empty_cache()

    # ---- copy: a device-to-device copy moving the same bytes (read + written)
    for name, nb in nbytes.items():
        n = nb // 2
        srcs = [cupy.ones(n, dtype=np.uint8) for _ in range(N_SETS)]
        dst = cupy.empty(n, dtype=np.uint8)
        ms = _rotated_ms(lambda s, d=dst: d.__setitem__(Ellipsis, s), srcs)
        out.append(entry(name, "copy", params, ms, 0.0, nbytes=2 * n))
        out[-1].update(_dev(lambda s, d=dst: d.__setitem__(Ellipsis, s), srcs, 2 * n))
        del srcs, dst
    del xs, denses, back
    cupy.get_default_memory_pool().free_all_blocks()
    return out


def run(quick: bool = False) -> list[dict]:
    """Benchmark entries (DESIGN.md schema) of to_padded / from_padded: cujagged, aten, copy."""
    torch = _torch()
    cases = [(f, d) for d in (DTYPES[:1] if quick else DTYPES) for f in FILLS]
    rng = np.random.default_rng(0)
    out: list[dict] = []
    for fill, dname in cases:
        out += _case(fill, dname, rng, torch)
    return out


if __name__ == "__main__":
    import json

    for e in run(quick="--quick" in sys.argv):
        print(json.dumps(e))
