"""Streaming detokenization: token ids in, text deltas out, for `Tokenizer.incremental_decoder`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import decoders

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas whose concatenation equals `decode()`.

    Built on `tokenizers.decoders.DecodeStream`, which decodes a short window (the tokens of the
    last released delta, for context such as the leading-space strip, plus the new ones) through
    the same decoder pipeline as `Tokenizer.decode`, and releases text only once it no longer
    ends in U+FFFD: byte-level and byte-fallback tokens can end mid-character. GGUF vocab
    overrides (`Vocab.overrides`) need nothing here: they change `token_bytes`, not the
    backend's decoding, which both `decode()` and the stream use.

    What DecodeStream lacks is kept here: `flush()` (it has no way to release held-back tokens at
    the end), and the case it refuses. When a later token rewrites text already released, the
    window's text no longer starts with it and `step` raises ("Invalid prefix"): a SentencePiece
    byte-fallback run `<0xC3><0xA9>` releases "é", and a following stray `<0xA9>` turns the whole
    run into U+FFFD marks. Released text cannot be taken back, so the stream can no longer equal
    `decode()` there; rather than fail the request, such tokens go through the window diff this
    class used before DecodeStream (new text = decode(window)[len(decode(context)):]), and the
    stream restarts after the next released delta.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._context: list[int] = []   # tokens of the last released delta (the stream's context)
        self._held: list[int] = []      # tokens pushed since, whose text is not released yet
        self._stream: decoders.DecodeStream | None = decoders.DecodeStream(skip_special_tokens=skip_special)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be "")."""
        token_id = int(token_id)
        self._held.append(token_id)
        delta: str | None = None
        if self._stream is not None:
            try:
                delta = self._stream.step(self._tok._backend, token_id)
            except Exception:   # tokenizers raises a plain Exception for the invalid prefix
                self._stream = None      # its window no longer matches what was released
        if self._stream is None:
            delta = self._window_delta()
            if not delta or delta.endswith("\ufffd"):
                return ""
        if delta is None:
            return ""
        self._context, self._held = self._held, []
        if self._stream is None:         # restart the stream after the released text
            self._stream = decoders.DecodeStream(self._context, skip_special_tokens=self._skip)
        return delta

    def flush(self) -> str:
        """Release whatever is held back (an incomplete character decodes as U+FFFD). This ends
        the stream: tokens pushed afterwards decode as a new one."""
        if not self._held:
            return ""
        delta = self._window_delta()
        self._context, self._held = [], []
        self._stream = decoders.DecodeStream(skip_special_tokens=self._skip)
        return delta

    def _window_delta(self) -> str:
        seen = self._tok.decode(self._context, self._skip)
        full = self._tok.decode(self._context + self._held, self._skip)
        return full[len(seen):]
