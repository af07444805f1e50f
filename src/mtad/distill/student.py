"""The draft's shape: a few of the target's own layers, its embeddings and output head.

Why this shape (timings in docs/distill.md): SmolLM2-135M's 49152 x 576 output head costs about
a seventh of a whole target forward, so it dominates any small draft. Hence `reduce_vocabulary`
(`--draft-vocab K`, format in `mtad.runtime.vocabulary`): the draft keeps only the K target ids
with the most teacher probability in the training answers; with K = 8192 a one-layer draft
costs about 0.06 of a target forward, and the lossless methods stay lossless because q = 0
outside the subset.
The layers come from the target (default: its first, with its final norm and tied embeddings):
before any training that already agrees with the target's argmax on 6% of held-out answer tokens
(KL 13.9, acceptance 0.07), while layers (0, 29) start at KL 63 and acceptance 0.00 (layer 29
expects the residual stream of layer 28, not of layer 0). More layers are a flag away (--layers).
"""

from __future__ import annotations

import copy
import re

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from mtad.errors import ConfigError, VocabularyMismatchError
from mtad.models import check_same_vocabulary, load_model, output_width
from mtad.runtime.vocabulary import CONFIG_KEY, subset_of

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


def choose_subset(samples, size: int, width: int, always: list[int]) -> list[int]:
    """The `size` target ids the draft keeps: `always` (special tokens) first, then by teacher
    probability summed over every trained position (the mass a draft can ever match; without a
    stored teacher, by how often the target wrote each id), ties by id."""
    if not len(always) <= size <= width:
        raise ConfigError(f"--draft-vocab must be in [{len(always)}, {width}], got {size}")
    mass = torch.zeros(width, dtype=torch.float64)
    for sample in samples:
        if sample.topk_ids is not None:
            mass.index_add_(0, sample.topk_ids.flatten().long(), sample.topk_logp.flatten().double().exp())
        else:  # data made without a stored teacher: the target's sampled answer tokens (draws from p)
            answer = sample.ids[sample.start + 1 :].long()
            mass.index_add_(0, answer, torch.ones(len(answer), dtype=torch.float64))
    mass[always] = float("inf")
    order = torch.sort(-mass, stable=True).indices  # stable: ties keep id order
    special = list(dict.fromkeys(always))
    excluded = set(special)
    return special + [i for i in order[:size].tolist() if i not in excluded]


def reduce_vocabulary(student: PreTrainedModel, token_ids: list[int]) -> PreTrainedModel:
    """The student over `token_ids` only: K + 1 embedding rows, the last (mean of the dropped rows)
    standing for any other input token. Special-token ids in its configs become draft ids."""
    embedding = student.get_input_embeddings().weight.detach()
    head = student.get_output_embeddings().weight.detach()
    ids = torch.tensor(token_ids, dtype=torch.long)
    dropped = torch.ones(embedding.shape[0], dtype=torch.bool)
    dropped[ids] = False
    other = embedding[dropped].mean(0, keepdim=True) if dropped.any() else torch.zeros_like(embedding[:1])
    to_draft = {target_id: row for row, target_id in enumerate(token_ids)}
    config = copy.deepcopy(student.config)
    config.vocab_size = len(token_ids) + 1
    setattr(config, CONFIG_KEY, list(token_ids))
    _map_special_ids(config, to_draft)
    reduced = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = student.state_dict()
    vocab_rows = {k for k, v in state.items() if v.shape[:1] == embedding.shape[:1]}  # embedding, head
    missing, unexpected = reduced.load_state_dict(
        {k: v for k, v in state.items() if k not in vocab_rows}, strict=False
    )
    if unexpected or not set(missing) <= vocab_rows:
        raise RuntimeError(f"reduced student does not match the original: {missing=}, {unexpected=}")
    with torch.no_grad():
        reduced.get_input_embeddings().weight.copy_(torch.cat([embedding[ids], other]))
        if not config.tie_word_embeddings:
            reduced.get_output_embeddings().weight.copy_(
                torch.cat([head[ids], head.new_zeros(1, head.shape[1])])
            )
    reduced.generation_config = copy.deepcopy(student.generation_config)
    _map_special_ids(reduced.generation_config, to_draft)
    return reduced


def _map_special_ids(config, to_draft: dict[int, int]) -> None:
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            setattr(config, name, to_draft.get(value))
        elif isinstance(value, list):
            setattr(config, name, [to_draft[v] for v in value if v in to_draft] or None)


def load_initial_draft(path: str, target: PreTrainedModel, target_tokenizer) -> PreTrainedModel:
    """An existing draft to continue distilling; refused unless it shares the target's vocabulary."""
    loaded = load_model(path, dtype=torch.float32, fast="off")  # trained: nn.Linear weights
    if loaded.tokenizer is not None:
        check_same_vocabulary(target_tokenizer, loaded.tokenizer)
    widths = [output_width(m) for m in (target, loaded.model)]
    if widths[0] != widths[1] and subset_of(loaded.model.config, widths[0]) is None:
        raise VocabularyMismatchError(
            f"draft {path!r} predicts {widths[1]} token ids, the target {widths[0]}; allowed: a draft with "
            "the target's vocabulary"
        )
    return loaded.model.train()
