"""GPU decoding: the static-shape decode step (static_step.py) captured in CUDA graphs (graphs.py)."""
