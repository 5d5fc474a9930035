"""Model definitions: one configurable decoder (llama, qwen2, gemma3), its config and loaders."""
