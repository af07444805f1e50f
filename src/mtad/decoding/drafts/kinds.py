"""The model-free draft kinds by name (what `--draft` and `draft="..."` accept, alone or joined by +)."""

from __future__ import annotations

from collections.abc import Callable

from mtad.config import shown
from mtad.decoding.drafts.base import ModelFreeDraft
from mtad.decoding.drafts.recycle import RecycleDraft
from mtad.decoding.drafts.suffix import SuffixDraft
from mtad.errors import ConfigError

#: Model-free draft kinds by name; each makes its default draft.
DRAFT_KINDS: dict[str, Callable[[], ModelFreeDraft]] = {"recycle": RecycleDraft, "suffix": SuffixDraft}


def kind_named(name: object) -> ModelFreeDraft:
    """The default draft of the kind called `name`, or a `ConfigError` naming the kinds."""
    if not isinstance(name, str) or name not in DRAFT_KINDS:
        raise ConfigError(
            f"unknown draft kind {shown(name)}; allowed: {', '.join(DRAFT_KINDS)} or several joined by + "
            "(recycle+suffix), or a draft model",
            "draft",
        )
    return DRAFT_KINDS[name]()
