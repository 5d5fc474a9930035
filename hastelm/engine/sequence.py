"""A request's life as the scheduler sees it: start a `Sequence` (sampler, stop checker, slot),
then turn each decoding step's tokens into a `StepResult` through the stop conditions."""
from __future__ import annotations

from ..decoding.plain import StepOutcome
from ..decoding.sampling import Sampler, SamplingParams, top_logprobs
from ..decoding.sequence import Sequence
from ..decoding.step import StepResult, TokenLogprob
from ..decoding.stopping import StopChecker
from ..formats.tokenizer import Tokenizer


def start_sequence(ids: list[int], params: SamplingParams, tokenizer: Tokenizer, context_length: int,
                   vocab_size: int, slot: int = 0, index: int = 0) -> Sequence:
    """A sequence for prompt `ids`; raises InvalidParameterError for ids the model cannot take."""
    params.check_vocab(vocab_size)
    room = context_length - len(ids)
    return Sequence(ids=list(ids), prompt_len=len(ids), params=params, sampler=Sampler(params, len(ids)),
                    stopper=StopChecker(params, tokenizer, room), slot=slot, index=index)


def apply_step(seq: Sequence, outcome: StepOutcome, elapsed: float) -> StepResult:
    """Apply stop conditions to a step's tokens and record them in the sequence."""
    update = seq.stopper.push(outcome.tokens)
    seq.ids.extend(update.tokens)
    logprobs = None
    if seq.params.logprobs is not None:
        logprobs = [TokenLogprob(t, *top_logprobs(l, t, seq.params.logprobs))
                    for t, l in zip(update.tokens, outcome.logits)]
    return StepResult(seq.index, update.tokens, update.text, outcome.accepted, outcome.proposed,
                      update.finish_reason, elapsed, logprobs)
