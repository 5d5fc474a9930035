"""Quantised weights: GGML block decoders and packed low-bit matmul kernels."""
