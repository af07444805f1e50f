"""Hybrid drafts: several drafts' candidates merged into one q (`recycle+suffix`, `recycle+DIR`).

Each model-free part keeps its own state and learns as it would alone (`ready`, `observe`,
`finish` reach every part). A draft *model* part (at most one) runs one forward a round, over the
committed tokens it has not read, and adds its warped q after the committed sequence to the
root's candidates (its `TOP` most likely tokens); deeper nodes are drafted by the model-free
parts only, so a round costs one draft forward whatever the tree. The model part's cache only
ever holds committed tokens, so it never rolls back.

After a context, q is the mean of the parts that have candidates there: where one part knows the
context, q is that part's; where several do, a token they agree on gets the mass of each. The
target's own rows (recycle), the text's repetitions (suffix) and a trained draft fail in
different places.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from mtad.decoding.drafts.base import Candidates, ModelFreeDraft, TokenDrafter, tail
from mtad.decoding.drafts.kinds import kind_named
from mtad.decoding.sampling import distributions
from mtad.errors import ConfigError
from mtad.models.feature_draft import is_feature_draft
from mtad.runtime.cache import CachedModel, FeatureDrafter

#: Candidates a model part adds at the root (the paper's warp keeps at most 10 anyway).
TOP = 10


def model_drafter(draft: PreTrainedModel, target: CachedModel) -> CachedModel:
    """The cached drafting model for `draft`: a feature draft reads `target`'s states."""
    if is_feature_draft(draft):
        return FeatureDrafter(draft, target.vocab_size, target)
    return CachedModel(draft, target.vocab_size)


class _HybridDrafter(TokenDrafter):
    def __init__(self, parts: list[TokenDrafter], model: CachedModel | None, target: CachedModel) -> None:
        super().__init__(target.vocab_size, target.device)
        self.parts, self.model_part = parts, model
        self.learns_from_prompt = any(part.learns_from_prompt for part in parts)
        self.root: tuple[int, ...] | None = None
        self.root_candidates: Candidates | None = None

    @property
    def calls(self) -> int:  # the model part's forwards
        return self.model_part.calls if self.model_part is not None else 0

    def ready(self, sequence):
        for part in self.parts:
            part.ready(sequence)  # a part that learns from the text catches up, whatever the others say
        self.root, self.root_candidates = tail(sequence), None
        model = self.model_part
        if model is not None and model.ready(sequence):
            q = distributions(model, sequence[:, model.length :], self.sampling)[0, -1]
            values, ids = q.topk(min(TOP, q.shape[-1]))
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
            self.root_candidates = Candidates.from_weights(top)
        return super().ready(sequence)

    def candidates(self, context):
        self.lookups += 1
        found = [c for c in (part.candidates(context) for part in self.parts) if c is not None]
        if self.root_candidates is not None and tuple(context) == self.root:
            found.append(self.root_candidates)
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
    """`draft="recycle+suffix"`, or model-free parts with one draft model: `HybridDraft(["recycle",
    draft_model])` (`--draft recycle+DIR`). Model-free parts keep their options and shared state."""

    def __init__(self, parts: list[ModelFreeDraft | PreTrainedModel]) -> None:
        parts = [kind_named(part) if isinstance(part, str) else part for part in parts]
        self.models = [part for part in parts if isinstance(part, PreTrainedModel)]
        self.parts = [part for part in parts if isinstance(part, ModelFreeDraft)]
        if len(self.models) > 1 or not self.parts or len(self.parts) + len(self.models) != len(parts):
            raise ConfigError(
                "a hybrid draft takes model-free drafts (recycle, suffix) and at most one draft model, got "
                + ", ".join(type(part).__name__ for part in parts),
                "draft",
            )
        self.name = "+".join([part.name for part in self.parts] + ["model"] * len(self.models))

    @property
    def model(self) -> PreTrainedModel | None:
        """The draft model part, if any (a batch keeps its cache with the other rows')."""
        return self.models[0] if self.models else None

    def drafter(self, target: CachedModel) -> TokenDrafter:
        model = model_drafter(self.model, target) if self.model is not None else None
        return _HybridDrafter([part.drafter(target) for part in self.parts], model, target)

    def describe(self) -> dict:
        described = {"kind": self.name, "parts": [part.describe() for part in self.parts]}
        if self.model is not None:
            described["model"] = getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__
        return described
