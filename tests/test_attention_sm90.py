"""Hopper (sm_90a) wgmma attention kernel (cuda_src/attention_sm90.cu) vs the Numba twin.

Selected with ``_impl="sm90"``; every test skips unless the device is sm_90."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_attention import check_gpu, check_growing_scores, problems

from cujagged import attention as A
from cujagged import bfloat16, jagged_flash_attention


def _need_sm90():
    if not A._FAM90.supported():
        pytest.skip("the wgmma kernel needs an sm_90 (Hopper) GPU")


@pytest.mark.gpu
@given(problems(max_len=150, dtypes=(np.float16, bfloat16), dims=A._SM90_DIMS),
       st.sampled_from([64, 128]))
def test_sm90_matches_numba(p, bm):
    _need_sm90()
    p["bias"] = False
    check_gpu(p, _impl="sm90", _bm=bm)


@pytest.mark.gpu
@pytest.mark.parametrize("D", A._SM90_DIMS)
@pytest.mark.parametrize("dtype", [bfloat16, np.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bm", [64, 128])
@pytest.mark.parametrize("long_cfg", [False, True])
def test_sm90_long_rows(D, dtype, causal, bm, long_cfg, monkeypatch):
    _need_sm90()
    if long_cfg:  # the tile configuration of rows >= _SM90_LONG keys
        monkeypatch.setattr(A, "_SM90_LONG", 1)
    lq = [0, 1, 700, 64, 129, 333, 1000, 5]
    p = dict(lq=lq, lk=lq, cross=False, H=2, Hk=1, D=D, dtype=np.dtype(dtype), causal=causal,
             msl=900, scale=None, bias=False, bias_heads=1, off_dtype=np.int32, seed=D + bm)
    check_gpu(p, _impl="sm90", _bm=bm)


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [0.0, -0.4, 1e-45])
def test_gpu_nonpositive_scale_takes_the_mma_kernel(scale):
    """The wgmma kernel folds a positive scale into its exps (as the float32 scale * log2 e);
    scale <= 0 (softmax of the negated scores, or uniform) and a scale whose float32 product is
    0 or subnormal take the mma.sync kernel by default and are refused by _impl='sm90'."""
    lq = [3, 0, 64, 200, 1, 65]
    p = dict(lq=lq, lk=lq, cross=False, H=2, Hk=1, D=128, dtype=np.dtype(bfloat16),
             causal=True, msl=None, scale=scale, bias=False, bias_heads=1, off_dtype=np.int64,
             seed=11)
    check_gpu(p)
    if A._FAM90.supported():
        with pytest.raises(ValueError, match="scale > 0"):
            check_gpu(p, _impl="sm90")


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_sm90_cross_gqa(causal):
    _need_sm90()
    lq = [3, 0, 64, 200, 1, 65]
    lk = [130, 7, 0, 513, 64, 1]
    p = dict(lq=lq, lk=lk, cross=True, H=4, Hk=2, D=128, dtype=np.dtype(bfloat16),
             causal=causal, msl=None, scale=0.3, bias=False, bias_heads=1, off_dtype=np.int64,
             seed=7)
    check_gpu(p, _impl="sm90")


@pytest.mark.gpu
@pytest.mark.parametrize("D", A._SM90_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bm", [64, 128])
def test_sm90_scores_growing_along_the_row(D, causal, bm):
    """Later key tiles raise the running max far above the first ones (the rescaling path)."""
    _need_sm90()
    check_growing_scores(D, bfloat16, causal, _bm=bm, _impl="sm90")


@pytest.mark.gpu
def test_sm90_rejects_what_it_cannot_do():
    import cupy

    _need_sm90()
    x = cupy.zeros((4, 1, 32), dtype=bfloat16)
    with pytest.raises(ValueError, match="sm90"):
        jagged_flash_attention(x, x, x, cupy.asarray([0, 4]), _impl="sm90")


@pytest.mark.gpu
def test_sm90_many_rows_many_waves():
    """Thousands of (tile, head) items: many waves of blocks, rows of every length up to 150."""
    _need_sm90()
    rng = np.random.default_rng(5)
    lq = [int(x) for x in rng.integers(0, 150, size=1500)]
    p = dict(lq=lq, lk=lq, cross=False, H=2, Hk=2, D=64, dtype=np.dtype(np.float16),
             causal=False, msl=None, scale=None, bias=False, bias_heads=1, off_dtype=np.int64,
             seed=11)
    check_gpu(p, _impl="sm90")
