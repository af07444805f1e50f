"""A draft that speaks only a subset of the target's vocabulary.

Why: in a small draft the output head dominates the cost (SmolLM2's 49152 x 576 head is about
three quarters of a one-layer draft's forward on a CPU; docs/distill.md has the timings), and
most of those rows are tokens the target almost never emits. A draft may therefore keep K of the
target's token ids.

Format (a plain transformers model directory): the draft's `config.json` carries
`mtad_token_ids`, the K target ids it predicts, in draft-id order; its embedding has K + 1 rows,
row K standing for every target token outside the subset. That row is an input only: a token
the target committed may lie outside the subset, but the draft never proposes one.

Losslessness: the draft's distribution over target ids is q = 0 outside the subset. Speculative
and tree acceptance only need q to be a distribution over the target's ids, so every lossless
method stays lossless; tokens outside the subset simply come from the residual.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from mtad.errors import VocabularyMismatchError

CONFIG_KEY = "mtad_token_ids"


class TokenSubset:
    """Maps target ids to draft ids (inputs) and draft logits to target-width logits (outputs)."""

    def __init__(self, token_ids: list[int] | torch.Tensor, target_width: int) -> None:
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= target_width:
            raise VocabularyMismatchError(
                f"draft token subset must hold ids in [0, {target_width}), got "
                f"{ids.numel()} ids in [{int(ids.min()) if ids.numel() else '-'}, "
                f"{int(ids.max()) if ids.numel() else '-'}]"
            )
        if torch.unique(ids).numel() != ids.numel():
            raise VocabularyMismatchError("draft token subset repeats a token id; allowed: distinct ids")
        self.token_ids = ids
        self.target_width = target_width
        self.other_row = ids.numel()  # the input row for every target token outside the subset
        self._to_draft = torch.full((target_width,), self.other_row, dtype=torch.long)
        self._to_draft[ids] = torch.arange(ids.numel())

    @property
    def size(self) -> int:
        return self.token_ids.numel()

    def contains(self, target_ids: torch.Tensor) -> torch.Tensor:
        return self.to_draft(target_ids) != self.other_row

    def to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        table = self._to_draft.to(target_ids.device)
        return table[target_ids.long()]

    def to_target_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """[..., K + 1] draft logits -> [..., target_width], -inf outside the subset (q = 0 there)."""
        full = draft_logits.new_full((*draft_logits.shape[:-1], self.target_width), float("-inf"))
        full[..., self.token_ids.to(draft_logits.device)] = draft_logits[..., : self.size]
        return full

    def to_target_probs(self, draft_probs: torch.Tensor) -> torch.Tensor:
        """[..., K] probabilities over the subset -> [..., target_width], 0 outside it."""
        full = draft_probs.new_zeros((*draft_probs.shape[:-1], self.target_width))
        index = self.token_ids.to(draft_probs.device).expand(*draft_probs.shape[:-1], -1)
        return full.scatter(-1, index, draft_probs)

    def to(self, device: torch.device | str) -> TokenSubset:
        self.token_ids = self.token_ids.to(device)
        self._to_draft = self._to_draft.to(device)
        return self


def subset_of(config: PretrainedConfig, target_width: int) -> TokenSubset | None:
    """The draft's token subset from its config, checked against its head and the target's width."""
    token_ids = getattr(config, CONFIG_KEY, None)
    if token_ids is None:
        return None
    subset = TokenSubset(token_ids, target_width)
    rows = getattr(config, "vocab_size", None)
    # A draft fed through the target's embedding (a feature draft) has no input row for others.
    extra = 0 if getattr(config, "embeds_with_target", False) else 1
    if rows != subset.size + extra:
        raise VocabularyMismatchError(
            f"draft config lists {subset.size} token ids but has vocab_size {rows}; allowed: "
            f"vocab_size {subset.size + extra} (the subset{' plus one row for other tokens' * extra})"
        )
    return subset


def target_logits(model, input_ids: torch.Tensor, target_width: int, **kwargs) -> torch.Tensor:
    """Logits over the target's ids for a plain or a subset draft, fed target ids (no cache)."""
    subset = subset_of(model.config, target_width)
    if subset is None:
        return model(input_ids=input_ids, **kwargs).logits
    subset.to(input_ids.device)
    return subset.to_target_logits(model(input_ids=subset.to_draft(input_ids), **kwargs).logits)
