"""Arrays on a GPU other than the current one: every op runs on the arrays' device and returns
arrays there, with the results it gives when that device is current (needs two GPUs)."""

from __future__ import annotations

import numpy as np
import pytest

import cujagged
from cujagged import JaggedArray, bfloat16
from cujagged import layout as L
from cujagged import rowwise as R

OPS = {
    "sum": lambda x, a: R.sum(x),
    "max": lambda x, a: R.max(x),
    "argmax": lambda x, a: R.argmax(x),
    "logsumexp": lambda x, a: R.logsumexp(x),
    "softmax": lambda x, a: R.softmax(x).values,
    "softmax_backward": lambda x, a: R.softmax_backward(x, R.softmax(x)).values,
    "cumsum": lambda x, a: R.cumsum(x).values,
    "add_rows": lambda x, a: (x + a["rows"]).values,
    "sort": lambda x, a: R.sort(x).values,
    "to_padded": lambda x, a: x.to_padded(),
    "from_padded": lambda x, a: JaggedArray.from_padded(x.to_padded(), lengths=x.lengths).values,
    "index_select": lambda x, a: x[a["idx"]].values,
    "slice_rows": lambda x, a: x[:, 1:5].values,
    "row_ids": lambda x, a: L.row_ids(x),
    "positions": lambda x, a: L.positions(x),
    "construct": lambda x, a: JaggedArray(x.values, x.offsets).values,
    "from_row_ids": lambda x, a: JaggedArray.from_row_ids(x.values, a["rid"]).offsets,
    "copy": lambda x, a: x.copy().values,
    "attention": lambda x, a: cujagged.jagged_flash_attention(*a["qkv"]).values,
}


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS))
def test_gpu_op_runs_on_the_arrays_device(op):
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    rng = np.random.default_rng(3)
    lens = np.array([3, 0, 70, 1, 300, 17])
    T = int(lens.sum())
    with cupy.cuda.Device(1):
        x = JaggedArray(cupy.asarray(rng.standard_normal((T, 8)).astype(np.float32)),
                        lengths=cupy.asarray(lens))
        qkv = [JaggedArray(cupy.asarray(rng.standard_normal((T, 2, 64)).astype(bfloat16)),
                           x.offsets) for _ in range(3)]
        aux = {"rows": cupy.asarray(rng.standard_normal((len(lens), 8)).astype(np.float32)),
               "idx": cupy.asarray(np.array([4, 0, 2])), "qkv": qkv,
               "rid": cupy.asarray(np.repeat(np.arange(len(lens)), lens))}
        expected = cupy.asnumpy(OPS[op](x, aux))
    with cupy.cuda.Device(0):
        got = OPS[op](x, aux)
        assert cupy.cuda.runtime.getDevice() == 0  # the caller's device is left as it was
    assert got.device.id == 1
    np.testing.assert_array_equal(cupy.asnumpy(got), expected)
