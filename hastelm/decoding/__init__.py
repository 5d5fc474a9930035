"""One decode step and its strategies: sampling, stop conditions, plain and speculative decoding."""
