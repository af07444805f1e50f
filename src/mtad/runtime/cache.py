"""A model with its incremental KV cache, and the named operations on that cache.

Invariant: the cache holds keys/values for `tokens[:, :length]` of the sequence the engine has
committed (plus, transiently inside a round, the draft tokens fed after them). The prefix is
never re-encoded: a forward feeds only what the cache lacks.

The cache itself is a `KVStore`: a `SoloStore` (one `DynamicCache` per model, the plain case) or a
row of a batch's shared cache (`mtad.runtime.ragged.RowStore`); `CachedModel` and everything above
it do not know which, so one decode loop serves a prompt alone and a prompt in a batch.

A `CachedModel` gives logits (`forward`, `own_logits`); the warp that turns them into p or q is
the decoding layer's (`mtad.decoding.sampling.distributions`).

Rollback has one named operation per shape:
- `truncate(length)`: a chain of tokens was rejected after `length`.
- `keep(positions)`: a verified tree keeps the context and its accepted path (gather, compact).
- `repeat(rows)` / `reorder(indices)` / `select(row)`: beams of the draft's beam sampling.

A target that feeds a feature draft also keeps, per cached position, the hidden states the draft
reads (`capture_features`); every operation above applies to them too, so they roll back with
the cache and the verification forward is the only forward that produces them.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.utils import ModelOutput

from mtad.runtime.grow import append_along
from mtad.runtime.taps import taps_for
from mtad.runtime.vocabulary import subset_of


class KVStore(Protocol):
    """Where a `CachedModel` keeps its keys and values. Positions are logical: `length` counts the
    cached tokens of this sequence, whatever the physical layout; `call` runs the model over new
    tokens after them and caches those tokens."""

    @property
    def length(self) -> int: ...

    def call(self, model: PreTrainedModel, **inputs) -> ModelOutput: ...

    def truncate(self, length: int) -> None: ...

    def keep(self, positions: torch.Tensor) -> None: ...

    def repeat(self, rows: int) -> None: ...

    def reorder(self, indices: torch.Tensor) -> None: ...

    def select(self, row: int) -> None: ...

    def reset(self) -> None: ...


class SoloStore:
    """One `DynamicCache` for one sequence (its rows are that sequence's beams)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.config = model.config
        self.device = model.get_input_embeddings().weight.device
        self.cache = DynamicCache(config=model.config)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def call(self, model: PreTrainedModel, **inputs) -> ModelOutput:
        return model(cache=self.cache, use_cache=True, **inputs)

    def truncate(self, length: int) -> None:
        excess = self.length - length
        if excess > 0:
            self.cache.crop(-excess)

    def keep(self, positions: torch.Tensor) -> None:
        positions = positions.to(self.device)
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys.index_select(-2, positions)
                layer.values = layer.values.index_select(-2, positions)

    def repeat(self, rows: int) -> None:
        self.cache.batch_repeat_interleave(rows)

    def reorder(self, indices: torch.Tensor) -> None:
        self.cache.reorder_cache(indices.to(self.device))

    def select(self, row: int) -> None:
        self.cache.batch_select_indices(torch.tensor([row], device=self.device))

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.config)


class FollowsCache:
    """A tensor with one entry per cached position ([rows, positions, ...]) that follows the KV
    cache's rollback operations, so it always describes exactly the positions cached: the target
    states a feature draft reads (`CachedModel.features`), a feature draft's own outputs."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.buffer: torch.Tensor | None = None  # `tensor` is its leading view while appends fit

    def append(self, fed: torch.Tensor) -> None:
        """Add positions [rows, new, ...], in place after the kept ones (`mtad.runtime.grow`: a
        concatenation would copy a feature draft's target states, ~2 MB after 300 tokens, each step)."""
        if self.tensor is None:
            self.tensor, self.buffer = fed, None
        else:
            self.tensor, self.buffer = append_along(self.tensor, self.buffer, fed, 1)

    def truncate(self, length: int) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor[:, :length]

    def keep(self, positions: torch.Tensor) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor.index_select(1, positions.to(self.tensor.device))

    def repeat(self, rows: int) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor.repeat_interleave(rows, dim=0)

    def reorder(self, indices: torch.Tensor) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor.index_select(0, indices.to(self.tensor.device))

    def select(self, row: int) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor[row : row + 1]

    def reset(self) -> None:
        self.tensor = self.buffer = None


class CachedModel:
    """A causal LM, its KV cache (`KVStore`), and a count of forward passes.

    vocab_size: the width every distribution is aligned to (the target's), so draft and target
    probabilities index the same token ids even when one model pads its output head, or is a
    draft over a token subset (`mtad.runtime.vocabulary`): it is fed target ids mapped to its own, and
    its logits come back at target width with -inf outside the subset.
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int, store: KVStore | None = None) -> None:
        self.model = model
        self.store = store if store is not None else SoloStore(model)
        self.vocab_size = vocab_size
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.subset = subset_of(model.config, vocab_size)
        if self.subset is not None:
            self.subset.to(self.device)
        # A subset draft is fed its own ids; a feature draft embeds target ids with the target's table.
        self.maps_inputs = self.subset is not None and not getattr(model.config, "embeds_with_target", False)
        self.calls = 0
        self.feature_layers: list[int] | None = None
        self.captured = FollowsCache()  # [rows, length, layers x hidden] when captured
        self.following = [self.captured]  # what every rollback operation applies to beside the cache

    @property
    def features(self) -> torch.Tensor | None:
        """The captured `hidden_states` of every cached position (`capture_features`), or None."""
        return self.captured.tensor

    def capture_features(self, layers: list[int]) -> None:
        """From now on keep these `hidden_states` layers of every fed position (a feature draft's input)."""
        if self.feature_layers not in (None, list(layers)):
            raise ValueError(f"already capturing layers {self.feature_layers}, asked for {list(layers)}")
        if self.feature_layers is None and self.length:
            raise ValueError("capture features before the first forward: cached positions would lack them")
        self.feature_layers = list(layers)

    def ready(self, sequence: torch.Tensor) -> bool:
        """Whether this model can draft after `sequence` now (a feature draft waits for the target)."""
        return True

    @property
    def length(self) -> int:
        return self.store.length

    @property
    def cache(self) -> DynamicCache:
        """The `DynamicCache` of a model decoding alone (tests compare it with a fresh forward)."""
        return self.store.cache

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
        [rows, 1, m, cached + m] (see `mtad.decoding.tree.tree_inputs`); plain causal decoding passes neither.
        """
        return self.align_vocab(self.own_logits(tokens, keep, position_ids, attention_mask))

    def own_logits(
        self,
        tokens: torch.Tensor,
        keep: int,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Float32 logits over the model's own output ids [rows, keep, own width]."""
        tokens = tokens.to(self.device)
        if self.maps_inputs:
            tokens = self.subset.to_draft(tokens)
        layers = self.feature_layers

        def run(**extra):
            return self.store.call(
                self.model, input_ids=tokens, logits_to_keep=keep, position_ids=position_ids,
                attention_mask=attention_mask, **extra,
            )  # fmt: skip

        if layers is None:
            out = run()
        elif isinstance(self.store, SoloStore) and (taps := taps_for(self.model, layers)) is not None:
            # hooks on the chosen layers only (a batch row's forward runs later, for all rows)
            out, states = taps.call(run, layers)
            self.captured.append(states)
        else:
            out = run(output_hidden_states=True)
            self.captured.append(torch.cat([out.hidden_states[i] for i in layers], dim=-1))
        self.calls += 1
        return out.logits[:, -keep:].float()

    def align_vocab(self, logits: torch.Tensor) -> torch.Tensor:
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
        self.store.truncate(length)
        for state in self.following:
            state.truncate(length)

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the cached `positions` (ascending), compacted: a tree pruned to its accepted path."""
        self.store.keep(positions)
        for state in self.following:
            state.keep(positions)

    def repeat(self, rows: int) -> None:
        """One cache row becomes `rows` identical rows (beams that share the prefix)."""
        self.store.repeat(rows)
        for state in self.following:
            state.repeat(rows)

    def reorder(self, indices: torch.Tensor) -> None:
        """Row i becomes old row indices[i] (beam parents after a beam step)."""
        self.store.reorder(indices)
        for state in self.following:
            state.reorder(indices)

    def select(self, row: int) -> None:
        """Keep only one row (the chosen beam)."""
        self.store.select(row)
        for state in self.following:
            state.select(row)

    def reset(self) -> None:
        self.store.reset()
        self.calls = 0
        for state in self.following:
            state.reset()


class FeatureDrafter(CachedModel):
    """A feature draft (`mtad.models.feature_draft`), its cache, and the target whose states it reads.

    Slot s reads token x_s with the target's state at position s - 1 (`target.features`); a
    drafted slot reads the draft's own output at its parent slot instead (the previous slot in a
    chain or a beam row; the last slot it attends to in a tree). Only slots fed with the target's
    real states survive a rollback: accepted draft tokens were read with the draft's guesses, so
    the next round re-reads them with the target's states (as EAGLE does). The draft can only
    draft once the target has read everything but the last committed token (`ready`); before
    that, the engine takes a target-only round (the prefill).
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int, target: CachedModel) -> None:
        super().__init__(model, vocab_size)
        model.attach(target.model)
        target.capture_features(model.config.feature_layers)
        self.target = target
        self.own_outputs = FollowsCache()  # [rows, length, hidden]: own output per slot
        self.following.append(self.own_outputs)
        self.real = 0  # leading slots fed with the target's states

    @property
    def outputs(self) -> torch.Tensor | None:
        """The draft's own output at every cached slot (what a drafted slot's child reads)."""
        return self.own_outputs.tensor

    def ready(self, sequence: torch.Tensor) -> bool:
        return self.target.length >= sequence.shape[1] - 1

    def own_logits(self, tokens, keep, position_ids, attention_mask) -> torch.Tensor:
        tokens = tokens.to(self.device)
        rows, fed = tokens.shape
        start = self.length
        real = max(0, min(fed, self.target.length + 1 - start))  # slots s with a target state at s - 1
        if real and start != self.real:
            raise RuntimeError(
                f"feature draft: real slots must follow real slots (slot {start}, {self.real} real)"
            )
        parts = []
        if real:
            if start == 0:  # slot 0 has no state before it (and a one-token prompt has none at all yet)
                width = self.model.config.target_hidden_size * len(self.model.config.feature_layers)
                states = torch.zeros((1, 1, width), device=self.device, dtype=self.dtype)
                if real > 1:
                    states = torch.cat(
                        [states.to(self.target.features.dtype), self.target.features[:, : real - 1]], 1
                    )
            else:
                states = self.target.features[:, start - 1 : start - 1 + real]
            parts.append(self.model.fuse_features(states).expand(rows, -1, -1))
        if real < fed:
            parents = _parent_slots(start, fed, attention_mask)[real:]
            if int(parents.max()) >= start:
                raise RuntimeError("feature draft: a drafted token's parent must be fed before it")
            parts.append(self.outputs[:, parents.to(self.outputs.device)])
        out = self.store.call(
            self.model, input_ids=tokens, features=torch.cat(parts, dim=1), logits_to_keep=keep,
            position_ids=position_ids, attention_mask=attention_mask,
        )  # fmt: skip
        self.calls += 1
        self.own_outputs.append(out.hidden_states[0])
        self.real += real
        return out.logits[:, -keep:].float()

    def truncate(self, length: int) -> None:
        length = min(length, self.real)  # drafted slots are always re-read
        super().truncate(length)
        self.real = length

    def keep(self, positions: torch.Tensor) -> None:
        positions = positions[positions < self.real]  # drafted slots are always re-read
        super().keep(positions)
        self.real = positions.numel()

    def reset(self) -> None:
        super().reset()
        self.real = 0


def _parent_slots(start: int, fed: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """For each fed slot start + j, the last earlier slot it attends to (its parent in a tree)."""
    if attention_mask is None:
        return torch.arange(start - 1, start + fed - 1)
    columns = torch.arange(start + fed, device=attention_mask.device)
    own = torch.arange(start, start + fed, device=attention_mask.device).unsqueeze(-1)
    allowed = (attention_mask[0, 0] == 0) & (columns < own)  # [fed, start + fed]
    return ((allowed * (columns + 1)).max(-1).values - 1).cpu()
