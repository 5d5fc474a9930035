"""Turn a workload item into token ids and generations, the same way for every engine.

All engines get ids rendered by hastelm's tokenizer and chat template (as `LLM.chat` renders them),
so they run identical prompts; multi-turn items feed each engine its own previous answers.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..formats.tokenizer import Tokenizer
from .engines import Engine, Generation
from .workloads import WorkloadItem

WARMUP_MESSAGES = [{"role": "user", "content": "Say hello."}]


def load_tokenizer(model: Path) -> Tokenizer:
    """The model's tokenizer without loading its weights (or torch)."""
    if model.is_dir():
        return Tokenizer.from_hf_folder(model)
    from ..formats.gguf_file import open_gguf
    return Tokenizer.from_gguf_metadata(open_gguf(model).metadata)


def encode_chat(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    bos = tokenizer.bos_id
    has_bos = bos is not None and text.startswith(tokenizer.token_text(bos))   # the template wrote it
    return tokenizer.encode(text, add_special=not has_bos)


def run_item(item: WorkloadItem, tokenizer: Tokenizer,
             complete: Callable[[list[int]], Generation]) -> list[tuple[list[int], Generation]]:
    """Each request of the item as (prompt ids, generation); turns are answered one after another."""
    if item.prompt is not None:
        ids = tokenizer.encode(item.prompt)
        return [(ids, complete(ids))]
    if not item.turns:
        ids = encode_chat(tokenizer, list(item.messages))
        return [(ids, complete(ids))]
    history: list[dict[str, str]] = []
    out = []
    for turn in item.turns:
        history.append({"role": "user", "content": turn})
        ids = encode_chat(tokenizer, history)
        gen = complete(ids)
        history.append({"role": "assistant", "content": tokenizer.decode(gen.tokens)})
        out.append((ids, gen))
    return out


def run_workload(engine: Engine, tokenizer, items: list[WorkloadItem], max_tokens: int,
                 progress: Callable[[int, int], None]) -> list[dict[str, Any]]:
    """One record per generation: item index, category, prompt and output sizes, time, steps."""
    stops = set(tokenizer.eos_ids)

    def complete(ids: list[int]):
        return engine.generate(ids, max_tokens, stops)

    complete(encode_chat(tokenizer, WARMUP_MESSAGES))    # untimed: first-call allocations, calibration
    total = sum(item.requests for item in items)
    records: list[dict[str, Any]] = []
    for item in items:
        for turn, (ids, gen) in enumerate(run_item(item, tokenizer, complete)):
            records.append({"item": item.index, "turn": turn, "category": item.category,
                            "prompt_tokens": len(ids), **_generation(gen)})
            progress(len(records), total)
    return records


def _generation(gen: Generation) -> dict[str, Any]:
    # a digest instead of the ids: enough to check that a method reproduced plain decoding's output
    digest = hashlib.sha1(str(gen.tokens).encode()).hexdigest()[:16]
    return {**asdict(gen), "tokens": len(gen.tokens), "output_sha1": digest}
