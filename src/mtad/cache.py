"""A model with its incremental KV cache, and the named operations on that cache.

Invariant: the cache holds keys/values for `tokens[:, :length]` of the sequence the engine has
committed (plus, transiently inside a round, the draft tokens fed after them). The prefix is
never re-encoded: a forward feeds only what the cache lacks.

Rollback has one named operation per shape:
- `truncate(length)`: a chain of tokens was rejected after `length`.
- `keep(positions)`: a verified tree keeps the context and its accepted path (gather, compact).
- `repeat(rows)` / `reorder(indices)` / `select(row)`: beams of the draft's beam sampling.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from mtad.config import SamplingConfig
from mtad.sampling import warp
from mtad.vocabulary import subset_of


class CachedModel:
    """A causal LM, its `DynamicCache`, and a count of forward passes.

    vocab_size: the width every distribution is aligned to (the target's), so draft and target
    probabilities index the same token ids even when one model pads its output head, or is a
    draft over a token subset (`mtad.vocabulary`): it is fed target ids mapped to its own, and
    its logits come back at target width with -inf outside the subset.
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int) -> None:
        self.model = model
        self.vocab_size = vocab_size
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.subset = subset_of(model.config, vocab_size)
        if self.subset is not None:
            self.subset.to(self.device)
        self.cache = DynamicCache(config=model.config)
        self.calls = 0

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        keep: int = 1,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed `tokens` [rows, m] after the cache; logits of the last `keep` positions [rows, keep, V].

        Tree attention passes `position_ids` [rows, m] and a 4D additive `attention_mask`
        [rows, 1, m, cached + m] (see `mtad.tree.tree_inputs`); plain causal decoding passes neither.
        """
        return self._align_vocab(self._own_logits(tokens, keep, position_ids, attention_mask))

    @torch.inference_mode()
    def distributions(
        self,
        tokens: torch.Tensor,
        sampling: SamplingConfig,
        keep: int = 1,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`, then the warp: distributions of the last `keep` positions [rows, keep, V].

        A subset draft is warped over its own K ids and only then scattered to target width: the
        same distribution as warping target-width logits that are -inf outside the subset (the
        warp never gives those ids mass), with K / V of the vocabulary-wide work.
        """
        logits = self._own_logits(tokens, keep, position_ids, attention_mask)
        if self.subset is not None:
            return self.subset.to_target_probs(warp(logits[..., : self.subset.size], sampling))
        return warp(self._align_vocab(logits), sampling)

    def _own_logits(
        self,
        tokens: torch.Tensor,
        keep: int,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Float32 logits over the model's own output ids [rows, keep, own width]."""
        tokens = tokens.to(self.device)
        if self.subset is not None:
            tokens = self.subset.to_draft(tokens)
        out = self.model(
            input_ids=tokens, cache=self.cache, use_cache=True, logits_to_keep=keep,
            position_ids=position_ids, attention_mask=attention_mask,
        )  # fmt: skip
        self.calls += 1
        return out.logits[:, -keep:].float()

    def _align_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        if self.subset is not None:
            return self.subset.to_target_logits(logits)
        width = logits.shape[-1]
        if width > self.vocab_size:  # padded head: ids past the vocabulary are not tokens
            return logits[..., : self.vocab_size]
        if width < self.vocab_size:  # smaller head: the missing ids have probability 0
            pad = logits.new_full((*logits.shape[:-1], self.vocab_size - width), float("-inf"))
            return torch.cat([logits, pad], dim=-1)
        return logits

    def truncate(self, length: int) -> None:
        """Forget every cached position from `length` on."""
        excess = self.length - length
        if excess > 0:
            self.cache.crop(-excess)

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the cached `positions` (ascending), compacted: a tree pruned to its accepted path."""
        positions = positions.to(self.device)
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys.index_select(-2, positions)
                layer.values = layer.values.index_select(-2, positions)

    def repeat(self, rows: int) -> None:
        """One cache row becomes `rows` identical rows (beams that share the prefix)."""
        self.cache.batch_repeat_interleave(rows)

    def reorder(self, indices: torch.Tensor) -> None:
        """Row i becomes old row indices[i] (beam parents after a beam step)."""
        self.cache.reorder_cache(indices.to(self.device))

    def select(self, row: int) -> None:
        """Keep only one row (the chosen beam)."""
        self.cache.batch_select_indices(torch.tensor([row], device=self.device))

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.calls = 0
