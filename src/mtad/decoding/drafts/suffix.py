"""`suffix`: continuations of the context's longest suffix seen before, in the prompt, the output so
far and (optionally) a bounded store of a process's past outputs (after SuffixDecoding, Oliaro et
al., NeurIPS 2025, and prompt lookup decoding).

An index counts, for every n-gram of 1..`ORDER` tokens in its text, the tokens that followed it:
adding a token updates `ORDER` counters, a lookup reads at most `ORDER`. Drafting after a context
takes the longest suffix of it that the text holds, and q = its continuation counts, smoothed with
the next shorter suffix's (weight `SHORTER_WEIGHT`) so a tree has second choices. The request's
own text (prompt and output, caught up before every round) and the shared store are read
together: their counts add at the longest order either knows.

The shared store (`store_tokens` > 0) keeps the outputs of finished requests, oldest dropped
first, until they hold at most `store_tokens` tokens.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import torch

from mtad.decoding.drafts.base import Candidates, ModelFreeDraft, TokenDrafter, positive_int

ORDER = 8
SHORTER_WEIGHT = 0.2
#: Rough bytes a stored token costs in the index (ORDER counters in dictionaries), for `/health`.
TOKEN_BYTES = 8 * 180


class SuffixIndex:
    """n-gram (1..ORDER tokens) -> {next token: count} over texts added with `add` (and removed)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}

    def add(self, text: Sequence[int], start: int = 0, sign: int = 1) -> None:
        """Count the continuations of `text`'s tokens from `start` on (sign -1 removes them)."""
        for i in range(max(start, 1), len(text)):
            token = text[i]
            for n in range(1, min(ORDER, i) + 1):
                key = tuple(text[i - n : i])
                following = self.counts.setdefault(key, {})
                following[token] = following.get(token, 0) + sign
                if following[token] <= 0:
                    del following[token]
                    if not following:
                        del self.counts[key]

    def matches(self, context: Sequence[int]) -> list[dict[int, int]]:
        """Continuation counts for the suffixes of `context`, by order 1..ORDER (empty: unseen)."""
        return [self.counts.get(tuple(context[-n:]), {}) if len(context) >= n else {}
                for n in range(1, ORDER + 1)]  # fmt: skip


def suffix_candidates(indexes: list[SuffixIndex], context: Sequence[int]) -> Candidates | None:
    """q from the longest suffix of `context` any index knows (counts summed), smoothed."""
    by_order = [index.matches(context) for index in indexes]
    longest = max((n for n in range(ORDER) if any(found[n] for found in by_order)), default=None)
    if longest is None:
        return None

    def merged(n: int) -> dict[int, float]:  # the indexes' counts at order n + 1, summed
        counts: dict[int, float] = {}
        for found in by_order:
            for token, count in found[n].items():
                counts[token] = counts.get(token, 0) + count
        return counts

    weights = _normalised(merged(longest), 1.0 - SHORTER_WEIGHT if longest > 0 else 1.0)
    if longest > 0:
        for token, weight in _normalised(merged(longest - 1), SHORTER_WEIGHT).items():
            weights[token] = weights.get(token, 0.0) + weight
    return Candidates.from_weights(weights)


def _normalised(counts: dict[int, float], mass: float) -> dict[int, float]:
    total = sum(counts.values())
    return {token: mass * count / total for token, count in counts.items()}


class SuffixStore:
    """Past outputs of a process's requests, at most `max_tokens` tokens (oldest dropped first)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.index = SuffixIndex()
        self.texts: deque[tuple[int, ...]] = deque()
        self.tokens = 0
        self.lock = threading.Lock()

    def add(self, text: Sequence[int]) -> None:
        text = tuple(text[-self.max_tokens :])
        if len(text) < 2:
            return
        with self.lock:
            self.index.add(text)
            self.texts.append(text)
            self.tokens += len(text)
            while self.tokens > self.max_tokens:
                dropped = self.texts.popleft()
                self.index.add(dropped, sign=-1)
                self.tokens -= len(dropped)


class _SuffixDrafter(TokenDrafter):
    def __init__(self, store: SuffixStore | None, vocab_size: int, device: torch.device) -> None:
        super().__init__(vocab_size, device)
        self.store = store
        self.own = SuffixIndex()
        self.text: list[int] = []
        self.prompt_length: int | None = None

    def ready(self, sequence: torch.Tensor) -> bool:
        seen = len(self.text)
        self.text += sequence[0, seen:].tolist()  # committed tokens only grow
        if self.prompt_length is None:
            self.prompt_length = len(self.text)
        self.own.add(self.text, start=seen)
        return super().ready(sequence)

    def candidates(self, context):
        self.lookups += 1
        if self.store is None:
            return suffix_candidates([self.own], context)
        with self.store.lock:
            return suffix_candidates([self.own, self.store.index], context)

    def finish(self, tokens):
        if self.store is not None and self.prompt_length is not None:
            self.store.add(tokens[self.prompt_length :])


class SuffixDraft(ModelFreeDraft):
    """`draft="suffix"`: the request's own text, plus a process's past outputs when
    `store_tokens` is set (`--suffix-store N`)."""

    name = "suffix"

    def __init__(self, store_tokens: int | None = None) -> None:
        self.store = None if store_tokens is None else SuffixStore(positive_int(store_tokens, "suffix store"))

    def drafter(self, target) -> TokenDrafter:
        return _SuffixDrafter(self.store, target.vocab_size, target.device)

    def describe(self) -> dict:
        described = {"kind": self.name, "store": self.store is not None}
        if self.store is not None:
            described |= {
                "store_tokens": self.store.tokens,
                "max_store_tokens": self.store.max_tokens,
                "approx_bytes": self.store.tokens * TOKEN_BYTES,
                "max_bytes": self.store.max_tokens * TOKEN_BYTES,
            }
        return described
