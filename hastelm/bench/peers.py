"""Adapters for the tools people would use instead: transformers and llama-cpp-python.

Both load the same model file as hastelm and implement `engines.Engine`. Their libraries are
imported inside the constructors, so the process that measures one never loads the other.
"""
from __future__ import annotations

import time
from pathlib import Path

from .engines import Generation

PLD_TOKENS = 10      # draft length of both peers' prompt lookup, transformers' documented example


class TransformersEngine:
    """transformers' own model classes on the GGUF file, dequantized (its GGUF path): float32 on
    the CPU, bf16 on a GPU."""
    engine = "transformers"

    def __init__(self, model: Path, method: str, threads: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch, self.method = torch, method
        source = {"pretrained_model_name_or_path": str(model)} if model.is_dir() else {
            "pretrained_model_name_or_path": str(model.parent), "gguf_file": model.name}
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.dtype = str(dtype).removeprefix("torch.")
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(**source, dtype=dtype).to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.bos_id = self.model.config.bos_token_id or 0

    def prompt_eval(self, ids: list[int]) -> None:
        with self.torch.inference_mode():
            # logits for the last position only, as generate() asks for during prefill
            self.model(self.torch.tensor([ids], device=self.device), logits_to_keep=1)
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()

    def generate(self, ids: list[int], max_tokens: int, stop_ids: set[int]) -> Generation:
        extra = {"prompt_lookup_num_tokens": PLD_TOKENS} if self.method == "pld" else {}
        stops = sorted(stop_ids) or None
        t = time.perf_counter()
        with self.torch.inference_mode():
            prompt = self.torch.tensor([ids], device=self.device)
            # an explicit mask: without it transformers masks every position equal to pad_token_id
            out = self.model.generate(prompt, attention_mask=self.torch.ones_like(prompt),
                                      max_new_tokens=max_tokens, do_sample=False,
                                      min_new_tokens=0 if stops else max_tokens, eos_token_id=stops,
                                      pad_token_id=self.bos_id, **extra)
        seconds = time.perf_counter() - t
        return Generation(_until_stop(out[0, len(ids):].tolist(), stop_ids), seconds)


class LlamaCppEngine:
    """llama-cpp-python on the GGUF file; `pld` passes its prompt-lookup draft as `draft_model`."""
    engine = "llama.cpp"

    def __init__(self, model: Path, method: str, threads: int, context: int) -> None:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.method = method
        draft = LlamaPromptLookupDecoding(num_pred_tokens=PLD_TOKENS) if method == "pld" else None
        self.llm = llama_cpp.Llama(str(model), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                                   n_batch=512, draft_model=draft, verbose=False)
        self.vocab_size = self.llm.n_vocab()
        self.bos_id = self.llm.token_bos()
        self.dtype = "GGUF native"   # its own kernels on the quantized blocks

    def prompt_eval(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def generate(self, ids: list[int], max_tokens: int, stop_ids: set[int]) -> Generation:
        tokens: list[int] = []
        t = time.perf_counter()
        for tok in self.llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            if tok in stop_ids:
                break
            tokens.append(tok)
            if len(tokens) >= max_tokens:
                break
        return Generation(tokens, time.perf_counter() - t)


def _until_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[:i]
    return tokens
