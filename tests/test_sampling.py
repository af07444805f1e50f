"""The one warp: temperature, top-k, top-p — checked against a plain reference implementation."""

from __future__ import annotations

import math

import pytest
import torch

from mtad.config import SamplingConfig
from mtad.errors import NumericalError
from mtad.sampling import warp


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
