"""Lossless methods, end to end: the first two generated tokens follow the exact target distribution.

Through `mtad.generate` on a tiny random model with an 8-token vocabulary and the warp switched on
(temperature 1, top-k 6, top-p 0.95). The exact joint P(t1, t2) = p(t1 | prompt) p(t2 | prompt, t1)
comes from two full forward passes. A chi-square goodness-of-fit test at significance 1e-3 over
cells with expected count >= 5 (the rest merged): a correct sampler fails it with probability 1e-3;
the seeds are fixed, so the outcome is reproducible. Tokens the warp removes must never appear.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import mtad
from conftest import tiny_llama
from mtad.config import SamplingConfig
from mtad.decoding.sampling import warp

VOCAB = 8
RUNS = 2000
PROMPT = [0, 3, 5]
WARP = {"temperature": 1.0, "top_k": 6, "top_p": 0.95}


def exact_first_two(model) -> torch.Tensor:
    """P(t1, t2) under the warped target, [vocab, vocab]."""
    config = SamplingConfig(**WARP)
    with torch.inference_mode():
        first = warp(model(torch.tensor([PROMPT])).logits[0, -1], config)
        prefixes = torch.tensor([PROMPT + [t] for t in range(VOCAB)])
        second = warp(model(prefixes).logits[:, -1], config)
    return first.unsqueeze(1) * second


def chi_square_p_value(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    observed, expected_probs = observed.flatten().double(), expected_probs.flatten().double()
    expected = expected_probs / expected_probs.sum() * observed.sum()  # float32 rounding: renormalise
    assert observed[expected == 0].sum() == 0, "a token outside top-k/top-p was generated"
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum().unsqueeze(0)])
    exp = torch.cat([expected[big], expected[~big].sum().unsqueeze(0)])
    keep = exp > 0
    return float(chisquare(obs[keep].numpy(), exp[keep].numpy()).pvalue)


@pytest.mark.parametrize(
    ("method", "gamma", "dtype"),
    [("ar", 1, torch.float32), ("sd", 2, torch.float32), ("sd", 2, torch.bfloat16)],
)
def test_first_two_tokens_follow_the_target_distribution(method, gamma, dtype):
    """In bfloat16 too (dtype auto picks it on CPUs with native bf16): the reference is the bf16
    model's own warped distribution, whose rounding differs from a cached verification's by far
    less than 2000 samples can resolve."""
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0).to(dtype)
    draft = tiny_llama(seed=11, vocab=VOCAB, sharpness=3.0, layers=1).to(dtype)
    counts = torch.zeros(VOCAB, VOCAB)
    accepted = 0
    for seed in range(RUNS):
        # max_new_tokens = gamma + 1 lets the first round draft gamma tokens (one is always the target's)
        result = mtad.generate(
            target,
            draft,
            PROMPT,
            method=method,
            gamma=gamma,
            max_new_tokens=gamma + 1,
            seed=seed,
            eos_token_id=[],
            **WARP,
        )
        counts[result.tokens[0], result.tokens[1]] += 1
        accepted += result.stats.accepted_tokens
    if method == "sd":
        assert 0 < accepted < RUNS * 2  # both accepted and rejected drafts occurred
    assert chi_square_p_value(counts, exact_first_two(target)) > 1e-3


def test_chi_square_check_detects_a_wrong_distribution():
    """The check has teeth: samples from the draft's distribution are rejected."""
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0)
    draft = tiny_llama(seed=11, vocab=VOCAB, sharpness=3.0, layers=1)
    wrong = exact_first_two(draft).flatten()
    drawn = torch.multinomial(wrong, RUNS, replacement=True, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=VOCAB * VOCAB).view(VOCAB, VOCAB).float()
    expected = exact_first_two(target)
    support = expected > 0
    counts = counts * support  # keep only the target's support, so only the shape differs
    assert chi_square_p_value(counts, expected) < 1e-3
