"""A draft over a subset of the target's token ids: q = 0 outside it, every method stays exact."""

from __future__ import annotations

import copy

import pytest
import torch

import mtad
from conftest import tiny_llama, tiny_subset_draft, tiny_tokenizer
from mtad.config import SamplingConfig
from mtad.decoding.sampling import warp
from mtad.errors import VocabularyMismatchError
from mtad.models import load_pair
from mtad.runtime.cache import CachedModel
from mtad.runtime.vocabulary import TokenSubset, subset_of, target_logits
from test_distribution import PROMPT, RUNS, VOCAB, WARP, chi_square_p_value, exact_first_two

NO_EOS = {"eos_token_id": []}
SUBSET = [9, 2, 3, 5, 7, 11, 13, 14]  # of 16 ids; order is the draft's own id order


def test_subset_maps_inputs_and_outputs():
    subset = TokenSubset([4, 1, 6], target_width=8)
    assert subset.to_draft(torch.tensor([4, 1, 6, 0, 7])).tolist() == [0, 1, 2, 3, 3]  # 3: other row
    full = subset.to_target_logits(torch.tensor([[1.0, 2.0, 3.0, 99.0]]))
    assert full[0, [4, 1, 6]].tolist() == [1.0, 2.0, 3.0]
    assert torch.isneginf(full[0, [0, 2, 3, 5, 7]]).all()  # the other row is never an output
    assert subset.contains(torch.tensor([1, 2])).tolist() == [True, False]


@pytest.mark.parametrize(
    ("ids", "message"), [([0, 8], r"ids in \[0, 8\)"), ([1, 1], "repeats"), ([], "ids in")]
)
def test_bad_subsets_are_refused(ids, message):
    with pytest.raises(VocabularyMismatchError, match=message):
        TokenSubset(ids, target_width=8)


def test_config_rows_must_match_the_subset():
    draft = tiny_subset_draft(1, SUBSET)
    draft.config.mtad_token_ids = SUBSET[:-1]
    with pytest.raises(VocabularyMismatchError, match="vocab_size 8"):
        subset_of(draft.config, 16)


def test_cached_draft_puts_zero_mass_outside_the_subset():
    cached = CachedModel(tiny_subset_draft(1, SUBSET), vocab_size=16)
    logits = cached.forward(torch.tensor([[0, 1, 4, 9]]), keep=4)  # ids 0, 1, 4 lie outside
    assert logits.shape == (1, 4, 16)
    outside = [i for i in range(16) if i not in SUBSET]
    assert torch.isneginf(logits[..., outside]).all() and torch.isfinite(logits[..., SUBSET]).all()


@pytest.mark.parametrize("method", ["sd", "specinfer"])  # the lossless ones
def test_first_two_tokens_follow_the_target_with_a_subset_draft(method):
    """The target puts real mass outside the subset; those tokens must come from the residual."""
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0)
    draft = tiny_subset_draft(11, [5, 0, 3, 6], sharpness=3.0)
    exact = exact_first_two(target)
    assert exact[[1, 2, 4, 7]].sum() > 0.2  # the first token leaves the subset often
    counts = torch.zeros(VOCAB, VOCAB)
    accepted = 0
    for seed in range(RUNS):
        result = mtad.generate(
            target, draft, PROMPT, method=method, gamma=2, beam_width=2, tree=(2, 1),
            max_new_tokens=3, seed=seed, **NO_EOS, **WARP,
        )  # fmt: skip
        counts[result.tokens[0], result.tokens[1]] += 1
        accepted += result.stats.accepted_tokens
    assert 0 < accepted  # the draft's proposals were accepted at times
    assert chi_square_p_value(counts, exact) > 1e-3


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_subset_draft_at_temperature_zero_equals_greedy(method):
    target = tiny_llama(seed=0)
    draft = tiny_subset_draft(1, SUBSET)
    prompt = [0, 5, 7, 3]
    greedy = mtad.generate(target, None, prompt, method="greedy", max_new_tokens=30, **NO_EOS)
    result = mtad.generate(
        target, draft, prompt, method=method, temperature=0.0, max_new_tokens=30, seed=0, **NO_EOS
    )
    assert result.tokens == greedy.tokens


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_subset_draft_cache_equals_fresh_forward_after_every_step(method):
    target = tiny_llama(seed=0)
    draft = tiny_subset_draft(1, SUBSET)
    generation = mtad.stream(target, draft, [0, 4, 1], method=method, max_new_tokens=30, seed=3, **NO_EOS)
    for _ in generation:
        drafter, sequence = generation.drafter, generation.sequence
        with torch.inference_mode():
            pending = drafter.subset.to_draft(sequence[:, drafter.length :])
            cache = copy.deepcopy(drafter.cache)
            via_cache = drafter.model(input_ids=pending, cache=cache, use_cache=True).logits[:, -1]
            fresh = target_logits(drafter.model, sequence, 16)[:, -1]
        torch.testing.assert_close(drafter.subset.to_target_logits(via_cache), fresh, atol=1e-4, rtol=0)
    assert any(t not in SUBSET for t in generation.result.tokens)  # inputs outside the subset were fed


def test_subset_draft_round_trips_through_a_model_directory(tmp_path):
    tokenizer = tiny_tokenizer()
    for name, model in (("target", tiny_llama(seed=0)), ("draft", tiny_subset_draft(1, SUBSET))):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    target, draft = load_pair(tmp_path / "target", tmp_path / "draft")
    assert draft.model.config.mtad_token_ids == SUBSET
    result = mtad.generate(target.model, draft.model, "w5 w7", method="sd", max_new_tokens=8, seed=0,
                           tokenizer=target.tokenizer)  # fmt: skip
    assert len(result.tokens) == 8
    broken = copy.deepcopy(draft.model)
    broken.config.mtad_token_ids = [0, 16] + SUBSET[2:]
    with pytest.raises(VocabularyMismatchError, match=r"\[0, 16\)"):
        mtad.generate(target.model, broken, "w5", method="sd", max_new_tokens=2, tokenizer=target.tokenizer)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(1.0, 2, 0.9),
        SamplingConfig(0.7, 0, 1.0),
        SamplingConfig(1.0, 10, 0.5),
        SamplingConfig(0.0),
    ],
)
def test_warping_in_the_subset_equals_warping_at_target_width(sampling):
    """CachedModel.distributions warps a subset draft over its own K ids, then scatters: the same
    distribution as the warp of target-width logits that are -inf outside the subset."""
    subset = TokenSubset([5, 1, 9, 3], target_width=12)
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))  # K + 1 = 5 head rows
    dense = warp(subset.to_target_logits(logits), sampling)
    torch.testing.assert_close(subset.to_target_probs(warp(logits[:, :4], sampling)), dense)
