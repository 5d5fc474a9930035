"""Prompts, a fixed text and cached float32 greedy continuations shared by the exactness and
fast-mode quality tests (the continuations are computed once per session, not once per file)."""
from __future__ import annotations

from typing import Any

# chat prompts (rendered with the model's template) and raw-text prompts
PROMPTS: list[dict[str, str]] = [
    {"chat": "Write a short story about a robot who learns to paint."},
    {"chat": "Explain how photosynthesis works in simple terms."},
    {"chat": "List three tips for writing clean Python code."},
    {"raw": "The history of the printing press begins in"},
    {"raw": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'},
]
CONTINUATION = 128

# ~300 tokens of plain English prose for perplexity
FIXED_TEXT = (
    "The lighthouse stood at the end of a narrow spit of rock, and for nearly a century it had "
    "guided fishing boats home through fog and storm. Its keeper, an old man named Tomas, climbed "
    "the spiral staircase every evening at dusk to light the lamp. He knew each of the one hundred "
    "and twelve steps by the sound it made under his boots. In the winter, when the wind came off "
    "the sea with enough force to rattle the windows, he would sit beside the lamp and write in a "
    "leather notebook: the direction of the wind, the height of the waves, the names of the boats "
    "that passed. Nobody had asked him to keep these records, but he believed that someone, some "
    "day, would find them useful. When the harbour authority finally installed an automatic light, "
    "they offered Tomas a small pension and a cottage in the village. He accepted the pension but "
    "refused the cottage. Instead, he stayed on in the keeper's house, tending the garden he had "
    "planted between the rocks and walking along the shore each morning to see what the tide had "
    "brought in. Children from the village visited him on weekends, and he told them stories about "
    "shipwrecks, sea birds and the strange lights that sometimes appeared on the water at night. "
    "Years later, when a team of scientists came to study how the coastline had changed, they "
    "discovered his notebooks in a wooden chest beneath the stairs. The careful daily entries, "
    "written over more than forty years, turned out to be the most complete record of local "
    "weather that anyone had ever kept, and the scientists used them to show how the storms had "
    "grown stronger over time."
)


def prompt_ids(llm: Any, prompt: dict[str, str]) -> list[int]:
    if "chat" in prompt:
        return llm.chat_prompt([{"role": "user", "content": prompt["chat"]}])
    return llm.encode_prompt(prompt["raw"])


_GREEDY: dict[tuple[int, tuple[int, ...]], list[int]] = {}


def greedy(llm: Any, ids: list[int]) -> list[int]:
    """CONTINUATION greedy tokens from `llm` (EOS ignored), cached per model and prompt. The first
    call for a model decodes every prompt of PROMPTS together in one continuous batch."""
    from batch_decode import decode_batch
    from hastelm.decoding.sampling import SamplingParams

    key = (id(llm), tuple(ids))
    if key not in _GREEDY:
        batch = [prompt_ids(llm, p) for p in PROMPTS]
        batch = batch if list(ids) in batch else [*batch, list(ids)]
        params = SamplingParams(max_tokens=CONTINUATION, temperature=0.0, ignore_eos=True)
        outputs = decode_batch(llm, batch, params, llm.plain).outputs
        _GREEDY.update({(id(llm), tuple(b)): out for b, out in zip(batch, outputs)})
    return _GREEDY[key]
