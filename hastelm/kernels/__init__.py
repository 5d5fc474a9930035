"""hastelm's native kernels and their Python bindings: `cpu` (AVX-512: packed int4/int8 GEMM,
RMS norm, RoPE + cache write, one-token attention, SwiGLU, argmax/top-k over rows), built from
`csrc/` at install time, and `bench` (their microbenchmark)."""
