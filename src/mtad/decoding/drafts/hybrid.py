"""Hybrid model-free drafts (`recycle+suffix`): several kinds' candidates merged into one q.

Each part keeps its own state and learns as it would alone (`ready`, `observe`, `finish` reach
every part). After a context, q is the mean of the parts that have candidates there: where only
one part knows the context, q is that part's; where both do, a token both propose gets the mass
of both. The target's own rows (recycle) and the text's repetitions (suffix) fail in different
places, so the merged q drafts more often than either, and ranks higher what both agree on.
"""

from __future__ import annotations

import torch

from mtad.decoding.drafts.base import Candidates, ModelFreeDraft, TokenDrafter


class _HybridDrafter(TokenDrafter):
    def __init__(self, parts: list[TokenDrafter], vocab_size: int, device: torch.device) -> None:
        super().__init__(vocab_size, device)
        self.parts = parts
        self.learns_from_prompt = any(part.learns_from_prompt for part in parts)

    def ready(self, sequence):
        for part in self.parts:
            part.ready(sequence)  # a part that learns from the text catches up, whatever the others say
        return super().ready(sequence)

    def candidates(self, context):
        self.lookups += 1
        found = [c for c in (part.candidates(context) for part in self.parts) if c is not None]
        if len(found) <= 1:
            return found[0] if found else None
        weights: dict[int, float] = {}
        for candidates in found:
            for token, probability in zip(candidates.ids.tolist(), candidates.probs.tolist(), strict=True):
                weights[token] = weights.get(token, 0.0) + probability / len(found)
        return Candidates.from_weights(weights)

    def observe(self, contexts, p):
        for part in self.parts:
            part.observe(contexts, p)

    def finish(self, tokens):
        for part in self.parts:
            part.finish(tokens)


class HybridDraft(ModelFreeDraft):
    """`draft="recycle+suffix"`: the parts' candidates merged (each part keeps its options)."""

    def __init__(self, parts: list[ModelFreeDraft]) -> None:
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)

    def drafter(self, vocab_size: int, device: torch.device) -> TokenDrafter:
        return _HybridDrafter([part.drafter(vocab_size, device) for part in self.parts], vocab_size, device)

    def describe(self) -> dict:
        return {"kind": self.name, "parts": [part.describe() for part in self.parts]}
