"""Model-free drafts: draft kinds that run no model, and the proposers that draft from them.

    base       Candidates (a sparse q), TokenDrafter (one request's drafter), ModelFreeDraft (a kind)
    recycle    the target's own earlier distributions, by the last one or two tokens
    suffix     continuations of the context's longest suffix in the prompt, output and past outputs
    hybrid     several kinds' candidates merged into one q ("recycle+suffix")
    proposers  chain, beams, beam tree, branching tree and the cost-sized tree over candidates

A draft is a model (`PreTrainedModel`), a kind's name (`"recycle"`, `"suffix"`, or kinds joined by
"+": `"recycle+suffix"`) or a `ModelFreeDraft` object (to set its options or share its state:
`RecycleDraft(shared=True)`, `HybridDraft([RecycleDraft(shared=True), SuffixDraft(10_000)])`).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from mtad.decoding.drafts.base import Candidates, ModelFreeDraft, TokenDrafter
from mtad.decoding.drafts.hybrid import HybridDraft
from mtad.decoding.drafts.kinds import DRAFT_KINDS, kind_named
from mtad.decoding.drafts.recycle import RecycleDraft
from mtad.decoding.drafts.suffix import SuffixDraft
from mtad.models import LoadedModel
from mtad.runtime.precision import dtype_name

#: A loaded draft as the applications hold it: a model with its tokenizer, a model-free draft, or none.
LoadedDraft = LoadedModel | ModelFreeDraft | None

__all__ = [
    "DRAFT_KINDS",
    "Candidates",
    "HybridDraft",
    "LoadedDraft",
    "ModelFreeDraft",
    "RecycleDraft",
    "SuffixDraft",
    "TokenDrafter",
    "as_draft",
    "describe_draft",
    "draft_model_of",
    "is_kind_name",
    "is_model_free",
    "resolve_draft",
]


def is_model_free(draft: object) -> bool:
    return isinstance(draft, ModelFreeDraft)


def is_kind_name(text: object) -> bool:
    """Whether `text` names model-free kinds ("recycle", "recycle+suffix"), not a model's path."""
    return isinstance(text, str) and all(part in DRAFT_KINDS for part in text.split("+"))


def resolve_draft(draft: object) -> object:
    """A kind's name (or kinds joined by "+") becomes its draft; a model, a `ModelFreeDraft` or
    None pass unchanged."""
    if isinstance(draft, str):
        parts = draft.split("+")
        if len(set(parts)) != len(parts):
            kind_named(draft)  # the error naming what is allowed
        drafts = [kind_named(part) for part in parts]
        return drafts[0] if len(drafts) == 1 else HybridDraft(drafts)
    return draft


def draft_model_of(draft: object) -> PreTrainedModel | None:
    """The model a draft runs: a draft model itself, a hybrid's model part, or None (model-free)."""
    if isinstance(draft, PreTrainedModel):
        return draft
    return draft.model if isinstance(draft, HybridDraft) else None


def as_draft(draft: LoadedDraft):
    """What `mtad.generate` takes for a loaded draft: the model, or the model-free draft itself."""
    return draft.model if isinstance(draft, LoadedModel) else draft


def describe_draft(draft: LoadedDraft) -> dict | None:
    """A draft as JSON reports it (`mtad generate --json`, `/health`, the bench's machine.json)."""
    if isinstance(draft, ModelFreeDraft):
        return draft.describe()
    if draft is None:
        return None
    return {"kind": "model", "name": draft.name, "dtype": dtype_name(draft.model.dtype),
            "fast_path": draft.fast_path.as_dict() if draft.fast_path else None}  # fmt: skip
