"""What a `Tokenizer` holds besides its HF `tokenizers` backend, as the GGUF and the tokenizer.json
builders (gguf_tokenizer.py, hf_tokenizer.py) produce it: how token pieces map back to bytes
(`Vocab`), and everything the Tokenizer is constructed from (`TokenizerParts`)."""
from __future__ import annotations

from dataclasses import dataclass

import tokenizers

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable char map: printable Latin-1 bytes map to themselves,
    the rest (controls, space, ...) to U+0100 upwards, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


BYTE_OF_CHAR: dict[str, int] = {c: b for b, c in byte_level_alphabet().items()}


@dataclass(frozen=True)
class Vocab:
    """What the Tokenizer needs besides the backend: id -> piece and how pieces become bytes."""
    size: int
    overrides: dict[int, str]       # pieces the backend does not map back (duplicates in a GGUF vocab)
    kind: str                       # "byte_level" | "sentencepiece" | "other"
    special_ids: frozenset[int]     # control tokens: skipped by decode(skip_special=True)
    raw_ids: frozenset[int]         # tokens whose piece is literal text (added tokens)


@dataclass(frozen=True)
class TokenizerParts:
    """A built backend plus the model's special tokens and template: `Tokenizer`'s arguments."""
    backend: tokenizers.Tokenizer
    vocab: Vocab
    bos_id: int | None
    eos_id: int | None
    eos_ids: set[int]
    add_bos: bool
    chat_template: str | None
