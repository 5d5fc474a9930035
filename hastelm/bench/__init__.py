"""Benchmarks: workloads, runner, peers (transformers, llama.cpp), report (table, JSON, plot)."""
