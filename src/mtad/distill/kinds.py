"""The two kinds of draft `mtad distill` trains, behind one interface the training loop calls.

- "tokens": a few of the target's own layers over tokens (`student.py`), learning from the teacher
  top-k stored with the data.
- "features": an EAGLE-style draft over the target's hidden states (`mtad.models.feature_draft`), learning
  from a live target forward per batch with unrolled draft steps (`features.py`).

Each kind builds the initial draft, reconnects a draft loaded from a checkpoint, computes the
loss of a batch of samples, and scores held-out samples (expected acceptance per draft position).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mtad.distill.data import Sample, eos_ids
from mtad.distill.features import feature_heldout_metrics, feature_loss, sample_signal
from mtad.distill.metrics import heldout_metrics, topk_kl
from mtad.distill.student import (
    build_student,
    choose_subset,
    load_initial_draft,
    parse_layers,
    reduce_vocabulary,
)
from mtad.errors import ConfigError
from mtad.models import output_width
from mtad.models.feature_draft import build_feature_draft, grow_feature_draft, is_feature_draft
from mtad.runtime.vocabulary import TokenSubset, subset_of

KINDS = ("tokens", "features")


def make_batch(
    samples: list[Sample], seq_len: int, subset: TokenSubset | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded inputs and the flat list of trained (row, position) pairs with teacher rows.

    With a draft token subset, inputs and teacher ids become draft ids; `teacher_kept` marks the
    teacher's top-k entries the draft can predict at all (the loss renormalises over those).
    """
    width = min(seq_len, max(len(s.ids) for s in samples))
    input_ids = torch.zeros(len(samples), width, dtype=torch.long)
    attention = torch.zeros(len(samples), width, dtype=torch.long)
    rows, columns, ids, logp = [], [], [], []
    for row, sample in enumerate(samples):
        length = min(len(sample.ids), width)
        input_ids[row, :length] = sample.ids[:length]
        attention[row, :length] = 1
        trained = max(0, length - 1 - sample.start)  # positions start .. length-2 predict answer tokens
        rows += [row] * trained
        columns += range(sample.start, sample.start + trained)
        ids.append(sample.topk_ids[:trained])
        logp.append(sample.topk_logp[:trained])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "rows": torch.tensor(rows, dtype=torch.long),
        "columns": torch.tensor(columns, dtype=torch.long),
        "topk_ids": torch.cat(ids),
        "topk_logp": torch.cat(logp),
    }
    if subset is not None:
        batch["teacher_kept"] = subset.contains(batch["topk_ids"])
        batch["topk_ids"] = subset.to_draft(batch["topk_ids"])
        batch["input_ids"] = subset.to_draft(input_ids)
    return batch


class TokenDrafts:
    """A draft made of target layers over tokens; the loss reads the stored teacher top-k."""

    def __init__(self, target, settings) -> None:
        self.target, self.settings = target, settings

    def initial(self, tokenizer, draft_dir: str | None, train_set: list[Sample]):
        settings, target = self.settings, self.target
        torch.manual_seed(settings.seed)
        if draft_dir is not None:
            student = load_initial_draft(draft_dir, target, tokenizer)
        else:
            student = build_student(target, parse_layers(settings.layers, target.config.num_hidden_layers))
        existing = subset_of(student.config, output_width(target))
        if existing is not None and settings.draft_vocab not in (None, existing.size):
            raise ConfigError(
                f"--draft {draft_dir!r} already predicts {existing.size} tokens, got --draft-vocab "
                f"{settings.draft_vocab}; allowed: {existing.size} or no --draft-vocab"
            )
        if settings.draft_vocab is None or existing is not None:
            return student
        return reduce_vocabulary(student, _subset_ids(target, tokenizer, train_set, settings.draft_vocab))

    def loaded(self, student):
        return student

    def loss(self, student, samples: list[Sample]) -> torch.Tensor:
        """KL on trained positions only; the output head runs on those rows alone (it dominates
        cost). Assumes the head reads the decoder's final hidden states directly, as in Llama-family
        models. A subset draft's last row stands for other input tokens and is never predicted."""
        if any(sample.topk_ids is None for sample in samples):
            raise ConfigError(
                "--kind tokens learns from stored teacher log-probs; allowed: --teacher-top-k >= 1"
            )
        subset = subset_of(student.config, output_width(self.target))
        batch = make_batch(samples, self.settings.seq_len, subset)
        hidden = student.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # [batch, width, hidden]
        logits = student.get_output_embeddings()(hidden[batch["rows"], batch["columns"]])  # [N, vocab]
        kept = batch.get("teacher_kept")
        if kept is not None:
            logits = logits[:, :-1]
        return topk_kl(logits, batch["topk_ids"], batch["topk_logp"], kept)

    def heldout(self, student, samples: list[Sample]) -> dict:
        """A token draft reads no states, so its teacher-forced acceptance is the same at every
        draft position: the table repeats position 1."""
        metrics = heldout_metrics(self.target, student, samples)
        return metrics | {"acceptance_per_position": [metrics["acceptance"]] * self.settings.depths}


class FeatureDrafts:
    """An EAGLE-style draft; the loss reads a target forward per sample (states and teacher), made
    the first time a sample is drawn, kept in memory and, with `cache_dir`, on disk (keyed by the
    sample's tokens and the layers), so a resumed run or a later session does not redo it."""

    def __init__(self, target, settings, cache_dir: Path | None = None) -> None:
        self.target, self.settings, self.cache_dir = target, settings, cache_dir
        self.signal: dict[int, tuple] = {}  # id(sample) -> (states, teacher ids, teacher log-probs)

    def initial(self, tokenizer, draft_dir: str | None, train_set: list[Sample]):
        settings, target = self.settings, self.target
        torch.manual_seed(settings.seed)
        if draft_dir is not None:
            student = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
            if not is_feature_draft(student):
                raise ConfigError(
                    f"--draft {draft_dir!r} is not a feature draft; allowed: one, with --kind features"
                )
            student = self.loaded(student)
            if settings.draft_layers > student.config.num_hidden_layers:  # grow it, keeping its function
                student = grow_feature_draft(student, target, settings.draft_layers)
            return student.train()
        width = output_width(target)
        ids = (
            list(range(width))
            if settings.draft_vocab is None
            else _subset_ids(target, tokenizer, train_set, settings.draft_vocab)
        )
        layers = parse_feature_layers(settings.feature_layers, target.config.num_hidden_layers)
        return build_feature_draft(target, ids, layers, settings.draft_layers)

    def loaded(self, student):
        student.attach(self.target)
        return student

    def loss(self, student, samples: list[Sample]) -> torch.Tensor:
        for sample in samples:  # the first epoch pays one target forward per sample; later ones reuse it
            if id(sample) not in self.signal:
                self.signal[id(sample)] = self._signal(sample, student.config.feature_layers)
        taught = [
            Sample(s.ids, s.start, self.signal[id(s)][1], self.signal[id(s)][2]) for s in samples
        ]  # the teacher from the same forward as the states
        batch = make_batch(taught, self.settings.seq_len)
        return feature_loss(student, batch, [self.signal[id(s)][0] for s in samples], self.settings.depths)

    def heldout(self, student, samples: list[Sample]) -> dict:
        return feature_heldout_metrics(student, self.target, samples, self.settings.depths)

    def _signal(self, sample: Sample, layers: list[int]) -> tuple:
        if self.cache_dir is None:
            return sample_signal(self.target, sample, layers)
        key = hashlib.sha256(sample.ids.numpy().tobytes() + f"{sample.start}:{layers}".encode()).hexdigest()
        path = self.cache_dir / f"{key[:32]}.pt"
        if path.is_file():
            return tuple(torch.load(path, weights_only=True))
        made = sample_signal(self.target, sample, layers)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(list(made), path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        return made


def draft_kind(target, settings, cache_dir: Path | None = None) -> TokenDrafts | FeatureDrafts:
    """The trainer for `settings.kind`; a feature trainer keeps its per-sample signal in `cache_dir`."""
    if settings.kind == "features":
        return FeatureDrafts(target, settings, cache_dir)
    return TokenDrafts(target, settings)


def parse_feature_layers(text: str | None, num_layers: int) -> list[int] | None:
    """`hidden_states` indices, e.g. "2,15,30" (0 = embeddings, num_layers = the final normed one)."""
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        layers = [-1]
    if not layers or any(not 0 <= layer <= num_layers for layer in layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"--feature-layers must be distinct integers in [0, {num_layers}], got {text!r}")
    return layers


def _subset_ids(target, tokenizer, train_set: list[Sample], size: int) -> list[int]:
    always = sorted({*tokenizer.all_special_ids, *eos_ids(target, tokenizer)})
    return choose_subset(train_set, size, output_width(target), always)
