"""Every stop condition in one place: EOS / stop tokens, stop strings, max_tokens, context end.

It also turns accepted tokens into the text delta a stream may show: text that could be the start
of a stop string is held back until it is known not to be one.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formats.tokenizer import Tokenizer
from .sampling import SamplingParams


@dataclass
class StopUpdate:
    tokens: list[int]           # tokens that count as output this step
    text: str                   # text delta safe to show
    finish_reason: str | None   # "stop" | "length" | None


class StopChecker:
    def __init__(self, params: SamplingParams, tokenizer: Tokenizer, room: int) -> None:
        """`room`: how many tokens still fit in the context after the prompt."""
        self.params = params
        self.decoder = tokenizer.incremental_decoder()
        self.stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self.stop_ids |= tokenizer.eos_ids
        self.limit = min(params.max_tokens, room)
        self.count = 0
        self.text = ""          # all output text so far (up to any stop string)
        self.shown = 0          # how much of self.text has been released
        self.finished: str | None = None
        self.hit_stop_string = False

    def push(self, tokens: list[int]) -> StopUpdate:
        """Feed the tokens a step produced; returns what to emit and whether the request ended."""
        kept: list[int] = []
        for tok in tokens:
            if tok in self.stop_ids:
                self.finished = "stop"
                break
            kept.append(tok)
            self.count += 1
            piece = self.decoder.push(tok)
            self.text += piece
            if piece and self._cut_at_stop_string(len(piece)):
                self.finished = "stop"
                break
            if self.count >= self.limit:
                self.finished = "length"
                break
        if self.finished and not self.hit_stop_string:
            self.text += self.decoder.flush()   # release bytes held back for an incomplete character
        end = len(self.text) if self.finished else self._safe_end()
        delta, self.shown = self.text[self.shown:end], max(self.shown, end)
        return StopUpdate(kept, delta, self.finished)

    def _cut_at_stop_string(self, added: int) -> bool:
        """Whether a stop string ends in the `added` newest characters: only they and the
        len(stop) - 1 before them are searched, so a step costs the same at any output length."""
        hits = []
        for stop in self.params.stop:
            i = self.text.find(stop, max(0, len(self.text) - added - len(stop) + 1))
            if i >= 0:
                hits.append(i)
        if hits:
            self.text = self.text[:min(hits)]
            self.hit_stop_string = True
        return bool(hits)

    def _safe_end(self) -> int:
        """End of the text that cannot be the beginning of a stop string."""
        end = len(self.text)
        for stop in self.params.stop:
            end = min(end, len(self.text) - _held_back(self.text, stop))
        return max(end, self.shown)


def _held_back(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `stop` (0 if none)."""
    tail_start = max(0, len(text) - len(stop) + 1)
    i = text.find(stop[0], tail_start)
    while i >= 0:                       # the earliest candidate that matches is the longest
        if stop.startswith(text[i:]):
            return len(text) - i
        i = text.find(stop[0], i + 1)
    return 0
