"""Quantised weights as modules: packed int4 / int8 linears over hastelm/kernels."""
