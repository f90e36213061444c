"""cujagged: jagged (ragged) tensors on NVIDIA GPUs, with a Numba CPU backend.

A :class:`JaggedArray` is flat ``values [T, *inner]`` plus ``offsets [B+1]``. NumPy-backed arrays
run on Numba kernels, CuPy-backed arrays on hand-written CUDA kernels compiled through NVRTC.
"""

from . import interaction, rowwise
from ._backend import bfloat16, gpu_available
from ._kernels import KernelCompileError, compile_all
from .attention import jagged_flash_attention, jagged_flash_attention_backward
from .interaction import jagged_dense_bmm, jagged_jagged_bmm
from .interop import (
    from_awkward,
    from_dlpack_parts,
    from_jax,
    from_torch,
    from_torch_nested,
    to_awkward,
    to_jax,
    to_torch,
    to_torch_nested,
)
from .jagged import JaggedArray
from .layout import (
    concat,
    from_padded,
    index_select,
    offsets_from_lengths,
    positions,
    row_ids,
    to_padded,
)
from .rowwise import log_softmax, logsumexp, softmax

__version__ = "0.1.0"

__all__ = [
    # the array and the backends
    "JaggedArray", "bfloat16", "gpu_available", "compile_all", "KernelCompileError",
    # layout
    "to_padded", "from_padded", "index_select", "offsets_from_lengths", "positions", "row_ids",
    "concat",
    # row-wise ops (the rest: cujagged.rowwise and JaggedArray methods)
    "rowwise", "softmax", "log_softmax", "logsumexp",
    # attention
    "jagged_flash_attention", "jagged_flash_attention_backward",
    # feature interaction (the backward functions: cujagged.interaction)
    "interaction", "jagged_dense_bmm", "jagged_jagged_bmm",
    # interop
    "from_dlpack_parts", "from_torch", "to_torch", "from_torch_nested", "to_torch_nested",
    "from_jax", "to_jax", "from_awkward", "to_awkward",
]
