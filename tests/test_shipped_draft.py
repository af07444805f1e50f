"""The draft shipped in the package (src/mtad/data/draft/): a small feature draft (EAGLE-style,
`mtad.models.feature_draft`) over an 8,192-token subset of SmolLM2's vocabulary, bound to the default
target by its fingerprint. Fast checks need no target; the slow group pairs it with the real one."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import mtad
from mtad.models.default_pair import default_draft_path
from mtad.models.feature_draft import is_feature_draft
from mtad.runtime.vocabulary import subset_of

SMOLLM2_VOCAB = 49152
#: feature_draft.target_fingerprint of SmolLM2-135M-Instruct's config (the slow test checks it live).
SMOLLM2_FINGERPRINT = "200b545bd6983f23"


@pytest.fixture(scope="module")
def draft_dir():
    path = default_draft_path()
    assert path is not None, "the package must ship its default draft in src/mtad/data/draft/"
    return path


def test_shipped_draft_is_small_and_records_how_it_was_made(draft_dir):
    size = sum(f.stat().st_size for f in draft_dir.iterdir() if f.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MB"
    report = json.loads((draft_dir / "report.json").read_text())
    assert report["draft_vocab"] == 8192 and report["saved_dtype"] == "bfloat16"
    assert 0.0 < report["heldout"]["acceptance"] <= 1.0
    made = json.loads((draft_dir / "mtad_distill.json").read_text())
    assert made["train"]["kind"] == "features" and made["train"]["seed"] == 0


def test_shipped_draft_is_a_feature_draft_of_the_smollm2_vocabulary(draft_dir):
    model = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(draft_dir)
    assert is_feature_draft(model) and model.config.target_fingerprint == SMOLLM2_FINGERPRINT
    assert len(tokenizer) == SMOLLM2_VOCAB
    subset = subset_of(model.config, SMOLLM2_VOCAB)
    assert subset is not None and subset.size == 8192
    assert {tokenizer.eos_token_id, *tokenizer.all_special_ids} <= set(subset.token_ids.tolist())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_shipped_draft_is_bound_to_the_default_target(draft_dir):
    from mtad.models.default_pair import default_target_path
    from mtad.models.feature_draft import target_fingerprint

    try:
        target_path = default_target_path()
    except mtad.MtadError as error:
        pytest.skip(f"default target unavailable: {error}")
    target = mtad.load_model(target_path, dtype=torch.float32).model
    assert target_fingerprint(target.config) == SMOLLM2_FINGERPRINT


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_default_pair_at_temperature_zero_equals_greedy(draft_dir, method):
    from mtad.models.default_pair import default_target_path

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
