"""The draft's shape: a few of the target's own layers, its embeddings and output head.

Why this shape (measured on the 2-core CPU, SmolLM2-135M target, 1 token after a 200-token
prefix, see docs/distill.md): the target forward costs ~63 ms; the 49152 x 576 output head alone
~9 ms, so it dominates any small draft. Two layers cost ~15 ms (0.24 of the target), one layer
~12 ms (0.19). A narrower width would shrink the head but leaves nothing to initialise from;
a reduced output vocabulary would shrink it most (an 8k-token head ~1.4 ms) but makes the draft a
non-standard model, so the student stays a plain model of the target's architecture.
So the default is one layer, the target's first, with its final norm and tied embeddings: before
any training it already agrees with the target's argmax on 6% of held-out answer tokens (KL 13.9,
acceptance 0.07), while layers (0, 29) start at KL 63 and acceptance 0.00 (layer 29 expects the
residual stream of layer 28, not of layer 0). More layers are a flag away (--layers 0,-1).
"""

from __future__ import annotations

import copy
import re

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from mtad.errors import ConfigError, VocabularyMismatchError
from mtad.models import check_same_vocabulary, load_model, output_width

_LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")


def parse_layers(text: str | None, num_layers: int) -> tuple[int, ...]:
    """Target layer indices for the student, e.g. "0,-1"; None means the first layer alone."""
    if text is None:
        return (0,)
    try:
        picked = tuple(
            int(part) % num_layers if -num_layers <= int(part) < num_layers else None
            for part in text.split(",")
        )
    except ValueError:
        picked = (None,)
    if None in picked or len(set(picked)) != len(picked):
        raise ConfigError(
            f"--layers must be distinct integers in [-{num_layers}, {num_layers}), got {text!r}"
        )
    return picked  # type: ignore[return-value]


def build_student(target: PreTrainedModel, layers: tuple[int, ...]) -> PreTrainedModel:
    """A float32 model of the target's architecture keeping only `layers` (in that order)."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    config.use_cache = True
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    renumber = {old: new for new, old in enumerate(layers)}
    state = {}
    for key, value in target.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in renumber:
            new_key = key[: match.start(2)] + str(renumber[int(match.group(2))]) + key[match.end(2) :]
            state[new_key] = value
    student.load_state_dict(state, strict=True)
    student.generation_config = copy.deepcopy(target.generation_config)
    return student


def load_initial_draft(path: str, target: PreTrainedModel, target_tokenizer) -> PreTrainedModel:
    """An existing draft to continue distilling; refused unless it shares the target's vocabulary."""
    loaded = load_model(path, dtype=torch.float32)
    if loaded.tokenizer is not None:
        check_same_vocabulary(target_tokenizer, loaded.tokenizer)
    widths = [output_width(m) for m in (target, loaded.model)]
    if widths[0] != widths[1]:
        raise VocabularyMismatchError(
            f"draft {path!r} predicts {widths[1]} token ids, the target {widths[0]}; allowed: a draft with "
            "the target's vocabulary"
        )
    return loaded.model.train()
