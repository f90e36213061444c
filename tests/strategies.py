"""Hypothesis strategies shared by every test: random jagged batches in every regime."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from cujagged import bfloat16

FLOAT_DTYPES = [np.dtype(np.float32), np.dtype(np.float16), bfloat16, np.dtype(np.float64)]
OFFSET_DTYPES = [np.dtype(np.int32), np.dtype(np.int64)]
INNER_SHAPES = [(), (1,), (7,), (3, 5)]


@st.composite
def lengths(draw, max_rows: int = 12, max_len: int = 40, min_rows: int = 0) -> list[int]:
    """Row lengths mixing empty rows, single items, typical rows and an occasional long one."""
    n = draw(st.integers(min_rows, max_rows))
    regime = st.one_of(
        st.just(0), st.just(1), st.integers(0, max_len), st.integers(max_len, 4 * max_len)
    )
    return draw(st.lists(regime, min_size=n, max_size=n))


def random_values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Random values (never zeros only) of any numeric dtype, on the host."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def make_offsets(lens, dtype=np.int64) -> np.ndarray:
    off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    return off.astype(dtype)


def rel_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (0 when both are empty or zero); NaN in out gives inf."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if np.isnan(out).any() and not np.isnan(ref).any():
        return float("inf")
    num = np.linalg.norm(np.nan_to_num(out - ref))
    den = np.linalg.norm(np.nan_to_num(ref))
    return float(num / den) if den > 0 else float(num)


TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2,
       bfloat16: 1e-2}
