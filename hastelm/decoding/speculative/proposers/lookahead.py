"""Lookahead decoding (Fu et al., 2024, "Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding"): a Jacobi window of guessed future tokens plus an n-gram pool.

Here the window is a draft chain: verifying it is one Jacobi iteration, because the target's
argmax at each window node is the new guess for the next position. Successive iterations form the
lookahead "levels"; the diagonal through them (each token predicted right after the previous one)
is an n-gram the model generated, and goes to the pool, as do the n-grams of the real tokens.
Each step proposes the pool's n-grams that start with the pending token, and the window.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ...sequence import Sequence
from ..tree import DraftTree
from .base import Budget, Feedback
from .trie import trie_tree


@dataclass
class _State:
    pool: dict[int, list[tuple[int, ...]]] = field(default_factory=dict)   # first token -> rest
    guesses: dict[int, int] = field(default_factory=dict)      # position -> guessed token
    levels: deque = field(default_factory=deque)               # past iterations: position -> input
    indexed: int = 0                                           # real tokens already in the pool
    last_tokens: list[int] = field(default_factory=list)       # the last proposal
    last_window: list[tuple[int, int, int]] = field(default_factory=list)   # (position, node, token)


class Lookahead:
    name = "lookahead"
    free = True

    def __init__(self, window: int = 8, ngram: int = 4, candidates: int = 4, per_key: int = 8) -> None:
        self.window = window
        self.ngram = ngram
        self.candidates = candidates
        self.per_key = per_key

    def propose(self, seq: Sequence, budget: Budget) -> DraftTree | None:
        st: _State = seq.strategy_state.setdefault(self.name, _State(levels=deque(maxlen=self.ngram - 2)))
        ids = seq.ids
        self._index_real(st, ids)
        root = len(ids) - 1
        window = []
        prev = ids[-1]
        for pos in range(root + 1, root + 1 + min(self.window, budget.depth)):
            tok = st.guesses.get(pos)
            if tok is None:          # no guess yet: start from the pool, else from the context
                options = st.pool.get(prev)
                tok = options[0][0] if options else ids[pos % len(ids)]
            window.append(tok)
            prev = tok
        found = [list(c) for c in st.pool.get(ids[-1], ())[:self.candidates]]
        cands = found[:1] + [window] + found[1:] if found else [window]
        if not cands[0]:
            return None
        tree = trie_tree(cands, budget.nodes, budget.depth, kind="pool" if found else "window")
        st.last_tokens = tree.tokens
        st.last_window = []
        node = 0
        for i, tok in enumerate(window):
            node = tree.children[node].get(tok, -1)
            if node < 0:
                break
            st.last_window.append((root + 1 + i, node, tok))
        return tree

    def update(self, seq: Sequence, feedback: Feedback) -> None:
        st: _State | None = seq.strategy_state.get(self.name)
        tree = feedback.tree
        if st is None or not len(tree) or st.last_tokens[:len(tree)] != tree.tokens:
            return
        verified = [(pos, node, tok) for pos, node, tok in st.last_window if node <= len(tree)]
        outputs = feedback.logits[[0] + [n for _, n, _ in verified]].argmax(-1).tolist()
        # the Jacobi step: the target's choice after each window position is the next guess there
        new_guesses = {feedback.root_position + 1: outputs[0]}
        inputs = {}
        for (pos, _, tok), out in zip(verified, outputs[1:]):
            new_guesses[pos + 1] = out
            inputs[pos] = tok
            self._add_diagonal(st, pos, tok, out)
        st.levels.append(inputs)
        next_root = feedback.root_position + feedback.acceptance.accepted + 1
        st.guesses = {p: t for p, t in {**st.guesses, **new_guesses}.items() if p > next_root}

    def release(self, seq: Sequence) -> None:
        seq.strategy_state.pop(self.name, None)

    # ---- the pool ------------------------------------------------------------------------------
    def _add_diagonal(self, st: _State, pos: int, tok: int, out: int) -> None:
        """The n-gram ending in (tok -> out): earlier levels supply the tokens before `tok`."""
        gram = [tok, out]
        for back, level in enumerate(reversed(st.levels), start=1):
            prev = level.get(pos - back)
            if prev is None:
                break
            gram.insert(0, prev)
        if len(gram) >= 3:
            self._add(st, gram)

    def _index_real(self, st: _State, ids: list[int]) -> None:
        n = self.ngram
        for end in range(max(st.indexed, n - 1), len(ids)):
            self._add(st, ids[end - n + 1:end + 1])
        st.indexed = len(ids)

    def _add(self, st: _State, gram: list[int]) -> None:
        rest = tuple(gram[1:])
        bucket = st.pool.setdefault(gram[0], [])
        if rest in bucket:
            bucket.remove(rest)
        bucket.insert(0, rest)          # most recent first
        del bucket[self.per_key:]
