"""Batches of prompts of different lengths (`mtad.decoding.batch`): every row as if it were alone.

Per row: lossless methods keep the exact target distribution (chi-square), greedy decoding equals
the solo run token for token in float32, the shared caches hold exactly what a fresh forward over
the row's committed tokens gives, and EOS in one row leaves the others untouched.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

import mtad
from conftest import tiny_llama, use_costs
from mtad.errors import ConfigError, ContextLengthError
from mtad.runtime import ragged
from test_distribution import VOCAB, WARP, chi_square_p_value
from test_feature_draft import feature_draft

NO_EOS = {"eos_token_id": []}
PROMPTS = [[0, 5, 7, 3], [0, 2], [0, 9, 9, 9, 4, 11, 12, 6, 1, 2, 3], [4]]
DRAFTED = ["sd", "mtad", "mmtad", "specinfer"]


@pytest.fixture(scope="module")
def close_draft(target):
    """A draft that agrees with the target often (rows accept different numbers of tokens).
    `target` and `draft` are conftest's tiny pair."""
    model = tiny_llama(seed=0)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(
                0.2 * parameter.std().nan_to_num(0.1) * torch.randn(parameter.shape, generator=generator)
            )
    return model


def solo(target, draft, **settings) -> list:
    seed = settings.pop("seed", 0)
    return [
        mtad.generate(target, draft, prompt, seed=seed + i, **settings) for i, prompt in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("method", mtad.METHODS)
def test_greedy_rows_equal_their_solo_runs(target, close_draft, method):
    settings = dict(method=method, temperature=0.0, max_new_tokens=30, **NO_EOS)
    results = mtad.generate(target, close_draft, PROMPTS, **settings)
    assert [r.tokens for r in results] == [r.tokens for r in solo(target, close_draft, **settings)]
    assert all(r.finish_reason == "length" and len(r.tokens) == 30 for r in results)


@pytest.mark.parametrize("method", DRAFTED)
def test_feature_draft_rows_equal_their_solo_runs(method):
    target = tiny_llama(seed=0, layers=3)
    fdraft = feature_draft(target, token_ids=[1, *range(3, 16)])
    settings = dict(method=method, temperature=0.0, max_new_tokens=25, **NO_EOS)
    results = mtad.generate(target, fdraft, PROMPTS, **settings)
    assert [r.tokens for r in results] == [r.tokens for r in solo(target, fdraft, **settings)]


def _assert_row_cache_is_fresh(store, model, sequence: torch.Tensor) -> None:
    """The row's cached keys and values (holes skipped) equal a fresh forward's over its tokens."""
    length = store.length
    assert sequence.shape[1] - 2 <= length < sequence.shape[1]  # incremental, nothing re-encoded
    fresh = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=sequence[:, :length], cache=fresh, use_cache=True)
    for index, layer in enumerate(fresh.layers):
        keys, values = store.cached(index)
        torch.testing.assert_close(keys, layer.keys, atol=1e-4, rtol=0)
        torch.testing.assert_close(values, layer.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer", "mtjd"])
def test_every_rows_caches_equal_a_fresh_forward_after_every_round(target, close_draft, method, monkeypatch):
    monkeypatch.setattr(ragged.slots, "COMPACT_MIN", 8)  # compaction happens within the run too
    compactions = []
    original = ragged.RaggedCache.compact
    monkeypatch.setattr(ragged.RaggedCache, "compact", lambda self: (compactions.append(1), original(self)))
    generation = mtad.stream(target, close_draft, PROMPTS, method=method, max_new_tokens=40, seed=3, **NO_EOS)
    rows = generation.batch.rows
    committed = [0] * len(rows)
    short_blocks = 0
    for index, block in generation:
        committed[index] += len(block.tokens)
        short_blocks += len(block.tokens) < 5
        row = rows[index]
        sequence = row.generation.sequence
        _assert_row_cache_is_fresh(row.stores[0], target, sequence)
        last_round_drafted_nothing = committed[index] == 40 and len(block.tokens) == 1
        if method != "mtjd" and not last_round_drafted_nothing:
            _assert_row_cache_is_fresh(row.stores[1], close_draft, sequence)
    assert committed == [40] * len(rows)
    assert compactions and (short_blocks or method == "mtjd")  # holes were made and compacted away
    assert not torch.is_inference_mode_enabled()  # the scheduler's context is closed again


@pytest.mark.parametrize(("method", "settings"), [("sd", {"gamma": 2}), ("specinfer", {"tree": (2, 2)})])
def test_lossless_methods_stay_lossless_in_every_row(method, settings):
    """Three rows with prompts of different lengths; each row's first two tokens follow its exact
    warped target distribution."""
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0)
    draft = tiny_llama(seed=11, vocab=VOCAB, sharpness=3.0, layers=1)
    prompts = [[0, 3, 5], [2], [1, 4, 6, 7, 2, 5]]
    counts = torch.zeros(len(prompts), VOCAB, VOCAB)
    accepted = 0
    for run in range(700):
        results = mtad.generate(
            target,
            draft,
            prompts,
            method=method,
            max_new_tokens=3,
            seed=run * 10,
            **NO_EOS,
            **WARP,
            **settings,
        )
        for row, result in enumerate(results):
            counts[row, result.tokens[0], result.tokens[1]] += 1
            accepted += result.stats.accepted_tokens
    assert accepted > 0
    for row, prompt in enumerate(prompts):
        assert chi_square_p_value(counts[row], _exact_first_two(target, prompt)) > 1e-3


def _exact_first_two(model, prompt: list[int]) -> torch.Tensor:
    from mtad.config import SamplingConfig
    from mtad.decoding.sampling import warp

    config = SamplingConfig(**WARP)
    with torch.inference_mode():
        first = warp(model(torch.tensor([prompt])).logits[0, -1], config)
        second = warp(model(torch.tensor([prompt + [t] for t in range(VOCAB)])).logits[:, -1], config)
    return first.unsqueeze(1) * second


def test_eos_in_one_row_mid_block_leaves_the_others_alone(target, close_draft):
    base = dict(method="sd", temperature=0.0, max_new_tokens=30)
    free = mtad.generate(target, close_draft, PROMPTS, **base, **NO_EOS)
    # EOS = a token that ends the last row early and never occurs in some other row
    eos = next(t for t in free[3].tokens[2:] if t not in free[3].tokens[:2] and t not in free[1].tokens)
    results = mtad.generate(target, close_draft, PROMPTS, **base, eos_token_id=[eos])
    stopped = 0
    for result, alone in zip(results, free, strict=True):
        cut = alone.tokens.index(eos) + 1 if eos in alone.tokens else len(alone.tokens)
        assert result.tokens == alone.tokens[:cut]
        assert result.finish_reason == ("stop" if cut < 30 or alone.tokens[-1] == eos else "length")
        stopped += result.finish_reason == "stop"
    assert 0 < stopped < len(PROMPTS)


def test_seeded_batch_rows_take_consecutive_seeds_and_rerun_alone(target, draft):
    results = mtad.generate(target, draft, PROMPTS, method="mtad", max_new_tokens=12, seed=40, **NO_EOS)
    assert [r.seed for r in results] == [40, 41, 42, 43]
    again = mtad.generate(target, draft, PROMPTS[2], method="mtad", max_new_tokens=12, seed=42, **NO_EOS)
    assert again.tokens == results[2].tokens


def test_a_tensor_of_rows_is_a_batch_and_one_row_is_one_prompt(target, draft):
    rows = torch.tensor([[0, 5, 7], [1, 2, 3]])
    results = mtad.generate(target, draft, rows, method="ar", max_new_tokens=4, seed=0, **NO_EOS)
    assert isinstance(results, list) and len(results) == 2
    one = mtad.generate(target, draft, rows[:1], method="ar", max_new_tokens=4, seed=0, **NO_EOS)
    assert one.tokens == results[0].tokens


def test_bad_rows_are_named(target, draft):
    with pytest.raises(ConfigError, match=r"input_ids\[1\] is empty"):
        mtad.generate(target, draft, [[1, 2], []], method="sd")
    with pytest.raises(ContextLengthError, match=r"input_ids\[2\] \(300 tokens\)"):
        mtad.generate(target, draft, [[1], [2], [3] * 300], method="sd", max_new_tokens=10)
    with pytest.raises(ConfigError, match=r"input_ids\[0\] must be token ids"):
        mtad.generate(target, draft, [["a", 1]], method="sd")
    with pytest.raises(ConfigError, match="empty batch"):
        mtad.generate(target, draft, torch.zeros((0, 3), dtype=torch.long), method="sd")


def test_a_failing_row_ends_alone(target, draft):
    """One row's error is raised after the other rows have finished their generations."""
    generation = mtad.stream(target, draft, PROMPTS[:2], method="sd", max_new_tokens=10, seed=0, **NO_EOS)
    broken = generation.batch.rows[1].generation

    def explode(*args, **kwargs):
        raise RuntimeError("row 1 broke")

    broken.stopper.cut = explode
    with pytest.raises(RuntimeError, match="row 1 broke"):
        for _ in generation:
            pass
    rows = generation.batch.rows
    assert rows[0].generation.result is not None and len(rows[0].generation.result.tokens) == 10
    assert rows[1].error is not None and generation.batch.target_cache.owners == []


def test_seeds_may_be_given_per_prompt(target, draft):
    results = mtad.generate(target, draft, PROMPTS[:2], method="sd", max_new_tokens=6, seed=[7, 3], **NO_EOS)
    assert [r.seed for r in results] == [7, 3]
    with pytest.raises(ConfigError, match=r"seed has 1 values for 2 prompts"):
        mtad.generate(target, draft, PROMPTS[:2], method="sd", seed=[7])
    with pytest.raises(ConfigError, match=r"seed\[1\] must be an integer in \[0, 2\*\*63\), got -1"):
        mtad.generate(target, draft, PROMPTS[:2], method="sd", seed=[7, -1])
    with pytest.raises(ConfigError, match="seed is a list"):
        mtad.generate(target, draft, PROMPTS[0], method="sd", seed=[7])


@pytest.mark.parametrize("method", mtad.METHODS)
def test_a_row_alone_in_a_batch_computes_exactly_what_it_computes_alone(target, close_draft, method):
    """The server's lone request: kept dense and called without a mask, it samples the same tokens
    (temperature 1) as the plain path."""
    settings = dict(method=method, max_new_tokens=30, **NO_EOS)
    for seed, prompt in enumerate(PROMPTS):
        alone = mtad.generate(target, close_draft, prompt, seed=seed, **settings)
        batch = mtad.generate(target, close_draft, [prompt], seed=[seed], **settings)
        assert batch[0].tokens == alone.tokens


def test_gamma_auto_prices_rounds_at_the_batch_size(target, draft, monkeypatch):
    """Costs are measured for the rows that share a forward (rounded down to a power of two) and
    re-priced when rows leave; a prompt alone is priced at one row."""
    from mtad.decoding import pricing

    asked, priced = [], []
    use_costs(monkeypatch, pricing.Costs({1: 1.0, 2: 1.01, 33: 1.5}, {1: 0.01, 2: 0.011, 4: 0.012}), asked)
    monkeypatch.setattr(pricing, "price", lambda *args: priced.append(args[-1]))
    budgets = [6, 30, 30, 30]  # row 0 leaves early: three rows are priced as two from then on
    generation = mtad.stream(
        target, draft, PROMPTS, method="sd", gamma="auto", max_new_tokens=30, seed=0, **NO_EOS
    )
    for row, budget in zip(generation.batch.rows, budgets, strict=True):
        row.generation.stopper.stop = dataclasses.replace(row.generation.stopper.stop, max_new_tokens=budget)
    for _ in generation:
        pass
    assert asked[:7] == [4, 4, 4, 4, 2, 2, 2] and set(asked[7:]) <= {1}  # a last row alone: one row
    assert priced == [1, 1, 1, 1, 1, 2, 3, 4]  # each row when built, then the batch as it grew
    assert [len(r.tokens) for r in generation.results] == budgets
    asked.clear()
    mtad.generate(target, draft, PROMPTS[0], method="sd", gamma="auto", max_new_tokens=5, **NO_EOS)
    assert asked == [1]
