"""Raw-array kernels for convolution, pooling and matrix products, one module per backend.

* :mod:`.cpu_numpy` - strided views, one vectorised copy per kernel offset
* :mod:`.cpu_numba` - ``@njit(parallel=True)`` loops, ``prange`` over N x C;
  its ``matmul`` is :mod:`.cpu_blas`'s: a GEMM cut into one block per
  Numba thread, each a single-threaded call to NumPy's OpenBLAS;
  :mod:`.cpu_conv_block` fuses the CNN block conv 3x3 -> max-pool 2x2 -> ReLU
  (used by :mod:`minidl.ops.conv_block`, CPU only)
* :mod:`.cpu_attention` - fused scaled dot-product attention (Numba over cblas,
  online softmax, recomputing backward) and :mod:`.cpu_rowwise` - fused
  LayerNorm, softmax/log-softmax and GELU; CPU only, imported by the ops that
  use them (:mod:`minidl.ops.attention`, ``.activation``, ``.norm``) when Numba
  is on; elsewhere those ops run their ``xp`` code
* :mod:`.cuda_cupy` - CuPy ``ElementwiseKernel`` s; col2im and max-pool
  backward are gathers (deterministic, no atomics)
* :mod:`.common`    - what they share, written once against ``xp`` (the conv
  GEMM's layout changes for NumPy and CuPy, the ``out=`` check, plane orders:
  N-major NCHW and the C-major layout conv2d returns)

All three expose the same functions with the same signatures; ops pick one
through :func:`minidl.backend.kernels_for` and never import them directly.
None of them depends on :class:`minidl.Tensor`, and importing one compiles
nothing. Shape letters follow the Notation block of :mod:`minidl.ops.conv`.
"""
