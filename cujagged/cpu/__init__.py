"""The CPU backend: Numba (``@njit``) twins of the CUDA kernels, one module per kernel family.

These functions run every op on NumPy-backed arrays and are the reference the GPU tests compare
against. Numba has no bfloat16: data movement views 16-bit payloads as ``uint16``; arithmetic
computes in float32 and stores back.
"""
