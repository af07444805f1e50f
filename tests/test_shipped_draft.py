"""The draft shipped in the package (src/mtad/data/draft/): small, a plain model directory over a
token subset of SmolLM2's vocabulary. Fast checks need no target; the slow group pairs it with the
real default target."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import mtad
from mtad.cache import CachedModel
from mtad.default_pair import default_draft_path
from mtad.vocabulary import subset_of

SMOLLM2_VOCAB = 49152


@pytest.fixture(scope="module")
def draft_dir():
    path = default_draft_path()
    assert path is not None, "the package must ship its default draft in src/mtad/data/draft/"
    return path


def test_shipped_draft_is_small_and_records_how_it_was_made(draft_dir):
    size = sum(f.stat().st_size for f in draft_dir.iterdir() if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MB"
    report = json.loads((draft_dir / "report.json").read_text())
    assert report["draft_vocab"] == 8192 and report["saved_dtype"] == "float16"
    assert 0.0 < report["heldout"]["acceptance"] <= 1.0


def test_shipped_draft_is_a_subset_draft_of_the_smollm2_vocabulary(draft_dir):
    model = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(draft_dir)
    assert len(tokenizer) == SMOLLM2_VOCAB
    subset = subset_of(model.config, SMOLLM2_VOCAB)
    assert subset is not None and subset.size == 8192
    assert {tokenizer.eos_token_id, *tokenizer.all_special_ids} <= set(subset.token_ids.tolist())
    cached = CachedModel(model, SMOLLM2_VOCAB)
    logits = cached.forward(torch.tensor([tokenizer("Hello, world")["input_ids"]]))
    assert logits.shape == (1, 1, SMOLLM2_VOCAB) and torch.isfinite(logits).sum() == 8192


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_default_pair_at_temperature_zero_equals_greedy(draft_dir, method):
    from mtad.default_pair import default_target_path

    try:
        target_path = default_target_path()
    except mtad.MtadError as error:
        pytest.skip(f"default target unavailable: {error}")
    target, draft = mtad.load_pair(target_path, draft_dir, dtype="float32")  # exactness: see test_real_model
    ids = mtad.encode_prompt(target.tokenizer, "Name three colours of the rainbow.")
    expected = mtad.generate(target.model, None, ids, method="greedy", max_new_tokens=24, eos_token_id=[])
    result = mtad.generate(target.model, draft.model, ids, method=method, temperature=0, max_new_tokens=24,
                           eos_token_id=[], tokenizer=target.tokenizer)  # fmt: skip
    assert result.tokens == expected.tokens
    assert result.stats.accepted_tokens > 0  # the distilled draft agrees with the target at times
