"""Readers for model files: GGUF, Hugging Face safetensors folders, tokenizers and chat templates."""
