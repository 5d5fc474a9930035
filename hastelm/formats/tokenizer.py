"""Text <-> token ids for GGUF and HF models, built on the HF `tokenizers` library.

`Tokenizer` wraps a `tokenizers.Tokenizer` backend with the model's special tokens (BOS, the ids
that stop generation) and chat template. The backend comes from gguf_tokenizer.py (a GGUF file's
vocabulary) or hf_tokenizer.py (a tokenizer.json); streaming detokenization is
incremental_decoder.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import tokenizers

from .chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, render_chat_template
from .gguf_tokenizer import gguf_tokenizer_parts
from .hf_tokenizer import hf_tokenizer_parts
from .incremental_decoder import IncrementalDecoder
from .vocab import BYTE_OF_CHAR, SPM_SPACE, TokenizerParts, Vocab

# Tokens that end an assistant turn. They stop generation when the chat template emits them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")
# End-of-document tokens: nothing sensible follows them, so they always stop generation.
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>")


class Tokenizer:
    """Encode/decode plus the model's special tokens and chat template."""

    def __init__(self, backend: tokenizers.Tokenizer, vocab: Vocab, *, bos_id: int | None,
                 eos_id: int | None, eos_ids: Iterable[int], add_bos: bool,
                 chat_template: str | None) -> None:
        self._backend = backend
        self._vocab = vocab
        self.vocab_size: int = vocab.size
        self.bos_id = bos_id
        self.eos_id = eos_id  # the model's declared EOS (the template's `eos_token`)
        self.add_bos = add_bos and bos_id is not None
        self.chat_template = chat_template
        self.eos_ids: set[int] = set(eos_ids) | ({eos_id} if eos_id is not None else set())
        # End-of-turn tokens must stop generation even when the file names only one eos.
        template = self.effective_chat_template
        for name in END_OF_TURN_TOKENS:
            tid = self.token_to_id(name)
            if tid is not None and (name in template or name in END_OF_TEXT_TOKENS):
                self.eos_ids.add(tid)

    # ---- construction
    @classmethod
    def from_parts(cls, parts: TokenizerParts) -> "Tokenizer":
        """Build from what gguf_tokenizer.py or hf_tokenizer.py assembled."""
        return cls(parts.backend, parts.vocab, bos_id=parts.bos_id, eos_id=parts.eos_id, eos_ids=parts.eos_ids,
                   add_bos=parts.add_bos, chat_template=parts.chat_template)

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        """Build from GGUF key/values (`GGUFFile.metadata`)."""
        return cls.from_parts(gguf_tokenizer_parts(metadata))

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> "Tokenizer":
        """Build from an HF model folder: tokenizer.json (+ tokenizer_config.json,
        generation_config.json, chat_template.jinja when present)."""
        return cls.from_parts(hf_tokenizer_parts(path))

    # ---- ids <-> text
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids for `text`; special-token text such as `<|im_start|>` maps to its id.
        With add_special, BOS is prepended when the model wants it (not twice: a rendered chat
        template that already starts with the BOS text keeps a single BOS)."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and not (ids and ids[0] == self.bos_id):
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token contributes to the output (a byte-level or byte-fallback token
        can be part of a UTF-8 character)."""
        piece = self._piece(token_id)
        if token_id in self._vocab.raw_ids:
            return piece.encode("utf-8")
        if self._vocab.kind == "byte_level":
            try:
                return bytes(BYTE_OF_CHAR[c] for c in piece)
            except KeyError:
                return piece.encode("utf-8")
        if self._vocab.kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return bytes([int(piece[3:5], 16)])
                except ValueError:
                    pass
            return piece.replace(SPM_SPACE, " ").encode("utf-8")
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def _piece(self, token_id: int) -> str:
        # pieces come from the backend (no second 49k-string list in memory), bar the few it lacks
        if not 0 <= token_id < self._vocab.size:
            raise IndexError(f"token id {token_id} outside the vocabulary of {self._vocab.size}")
        return self._vocab.overrides.get(token_id) or self._backend.id_to_token(token_id) or ""

    def token_text(self, token_id: int) -> str:
        """Readable text of one token (special tokens as their literal text)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_to_id(self, piece: str) -> int | None:
        """Id of a vocabulary entry given its piece (e.g. "<|im_end|>"), or None."""
        return self._backend.token_to_id(piece)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._vocab.special_ids

    def incremental_decoder(self, skip_special: bool = True) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special=skip_special)

    # ---- chat
    @property
    def effective_chat_template(self) -> str:
        """The model's template, or a default so chat still works without one."""
        if self.chat_template:
            return self.chat_template
        if self.token_to_id("<start_of_turn>") is not None:
            return GEMMA_TEMPLATE
        return CHATML_TEMPLATE

    def _special_text(self, token_id: int | None) -> str:
        return self._piece(token_id) if token_id is not None else ""

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render the conversation to prompt text (encode it with `encode`)."""
        return render_chat_template(self.effective_chat_template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    bos_token=self._special_text(self.bos_id),
                                    eos_token=self._special_text(self.eos_id), **extra)
