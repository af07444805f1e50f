"""The one warp: temperature, top-k, top-p — checked against a plain reference implementation."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_counts
from mtad.config import SamplingConfig
from mtad.decoding.sampling import draw, sample, warp
from mtad.errors import NumericalError


def reference_warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Written for clarity, one row at a time: mask below the k-th logit, softmax, keep the nucleus."""
    rows = []
    for row in logits / temperature:
        if 0 < top_k < row.numel():
            row = row.masked_fill(row < row.topk(top_k).values[-1], -math.inf)
        probs = torch.softmax(row, -1)
        order = probs.argsort(descending=True, stable=True)
        kept, mass = torch.zeros_like(probs), 0.0
        for token in order.tolist():
            if mass >= top_p:
                break
            kept[token] = probs[token]
            mass += float(probs[token])
        rows.append(kept / kept.sum())
    return torch.stack(rows)


@pytest.mark.parametrize("top_k", [0, 1, 5, 50, 300])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_warp_matches_reference(top_k, top_p, temperature):
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(top_k + int(10 * top_p))) * 3
    ours = warp(logits, SamplingConfig(temperature, top_k, top_p))
    torch.testing.assert_close(ours, reference_warp(logits, temperature, top_k, top_p), atol=1e-6, rtol=1e-5)


def test_ties_at_the_kth_logit_are_all_kept():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    probs = warp(logits, SamplingConfig(1.0, 2, 1.0))
    assert (probs[0] > 0).tolist() == [True, True, True, True, False]
    torch.testing.assert_close(probs, reference_warp(logits, 1.0, 2, 1.0))


def test_temperature_zero_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 1.0, 4.9]])
    assert warp(logits, SamplingConfig(0.0, 0, 1.0)).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_most_likely_token_is_always_kept():
    logits = torch.tensor([[2.0, 1.9, 1.8]])
    probs = warp(logits, SamplingConfig(1.0, 0, 1e-9))
    assert probs.tolist() == [[1.0, 0.0, 0.0]]


def test_masked_vocabulary_tail_stays_zero():
    logits = torch.tensor([[1.0, 0.5, -math.inf, -math.inf]])
    probs = warp(logits, SamplingConfig(1.0, 3, 0.99))
    assert probs[0, 2:].tolist() == [0.0, 0.0]
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_positive_inf_are_refused(bad):
    logits = torch.zeros(2, 5)
    logits[1, 3] = bad
    with pytest.raises(NumericalError):
        warp(logits, SamplingConfig())


def test_all_negative_inf_row_is_refused():
    with pytest.raises(NumericalError, match="all -inf"):
        warp(torch.full((1, 4), -math.inf), SamplingConfig())


def test_ties_inside_the_top_k_take_the_fast_path_and_match_the_reference():
    logits = torch.tensor([[3.0, 3.0, 1.0, 0.5, 0.0], [1.0, 2.0, 2.0, 2.0, 0.0]])
    torch.testing.assert_close(warp(logits, SamplingConfig(1.0, 2, 1.0)), reference_warp(logits, 1.0, 2, 1.0))


def test_fewer_finite_logits_than_k_keep_every_finite_one():
    logits = torch.tensor([[1.0, -math.inf, 0.5, -math.inf, -math.inf]])
    probs = warp(logits, SamplingConfig(1.0, 3, 1.0))
    assert (probs[0] > 0).tolist() == [True, False, True, False, False]


@pytest.mark.parametrize("count", [1, 3])
def test_draw_follows_the_weights_and_never_draws_a_zero_weight(count):
    """Inverse-transform draws against their weights: per-bin 6 sigma + 5 (false failure < 1e-8),
    unnormalised rows, zero weights at the start, middle and end of a row, several rows at once."""
    weights = torch.tensor([[0.0, 2.0, 0.0, 1.0, 5.0, 0.0, 0.0, 2.0, 0.0],
                            [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # fmt: skip
    generator = torch.Generator().manual_seed(count)
    draws = torch.cat([draw(weights, count, generator) for _ in range(20_000 // count)], dim=-1)
    assert draws.shape == (2, 20_000 // count * count)
    for row in range(2):
        assert_counts(draws[row], weights[row] / weights[row].sum())


def test_draw_of_a_one_point_distribution_is_that_point_and_sample_keeps_rows():
    one_point = torch.zeros(4, 49152)
    one_point[torch.arange(4), torch.tensor([0, 7, 49151, 300])] = 1.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert sample(one_point, generator).tolist() == [0, 7, 49151, 300]


def test_draw_is_reproducible_by_seed():
    weights = torch.rand(3, 1000, generator=torch.Generator().manual_seed(1))
    first = draw(weights, 5, torch.Generator().manual_seed(9))
    assert torch.equal(first, draw(weights, 5, torch.Generator().manual_seed(9)))


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_many_ties_across_the_top_k_cut_are_all_kept(top_p):
    """30 logits tie at the k-th value (bfloat16 logits tie often): the fast path reads on until the
    ties end, and matches the reference."""
    logits = torch.cat([torch.tensor([5.0, 4.0]), torch.full((30,), 3.0), torch.linspace(2.0, -2.0, 68)])
    logits = logits[torch.randperm(100, generator=torch.Generator().manual_seed(0))].unsqueeze(0)
    ours = warp(logits, SamplingConfig(1.0, 3, top_p))
    torch.testing.assert_close(ours, reference_warp(logits, 1.0, 3, top_p))
    if top_p == 1.0:
        assert int((ours > 0).sum()) == 32
