"""The acceptance rules as pure functions on hand-made probability tables (no model).

Statistical checks use a per-bin bound |count - expected| <= 6 sigma + 5 over 65,536 independent
rows (the form used by kernel libraries' sampling tests). For a correct rule a bin leaves that
band with probability below 1e-8, so with fixed seeds a failure means a wrong rule, not bad luck.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_counts
from mtad.decoding.acceptance import accept_all, accept_none, mtad_joint, speculative

ROWS = 65_536
VOCAB = 16


def _dist(seed: int, zero: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(VOCAB, generator=g) ** 3
    weights[list(zero)] = 0
    return weights / weights.sum()


@pytest.fixture(scope="module")
def speculative_run():
    """p and q tables for n = 2 draft positions, draft tokens drawn from q, and the verdicts."""
    p = torch.stack([_dist(1, zero=(3, 4)), _dist(2), _dist(3, zero=(0,))])  # [3, V]
    q = torch.stack([_dist(4, zero=(5,)), _dist(5, zero=(3,))])  # [2, V]
    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.multinomial(q[j], ROWS, replacement=True, generator=g) for j in range(2)], 1)
    verdict = speculative(p.expand(ROWS, -1, -1), q.expand(ROWS, -1, -1), tokens, g)
    return p, q, tokens, verdict


def test_speculative_first_token_follows_target(speculative_run):
    p, _, tokens, verdict = speculative_run
    first = torch.where(verdict.accepted > 0, tokens[:, 0], verdict.next_token)
    assert_counts(first, p[0])


def test_speculative_accepted_length_histogram_is_analytic(speculative_run):
    p, q, _, verdict = speculative_run
    a0, a1 = torch.minimum(p[0], q[0]).sum(), torch.minimum(p[1], q[1]).sum()
    expected = torch.stack([1 - a0, a0 * (1 - a1), a0 * a1])
    assert_counts(verdict.accepted, expected)


def test_speculative_recovered_token_follows_residual(speculative_run):
    p, q, _, verdict = speculative_run
    rejected_first = verdict.accepted == 0
    residual = (p[0] - q[0]).clamp_min(0)
    assert_counts(verdict.next_token[rejected_first], residual / residual.sum())


def test_speculative_bonus_token_follows_target_after_full_acceptance(speculative_run):
    p, _, _, verdict = speculative_run
    assert_counts(verdict.next_token[verdict.accepted == 2], p[2])


def test_speculative_with_identical_distributions_accepts_everything():
    p = _dist(7).expand(1000, 3, -1)
    tokens = torch.multinomial(p[0, 0], 2000, replacement=True).view(1000, 2)
    verdict = speculative(p, p[:, :2], tokens, torch.Generator().manual_seed(0))
    assert torch.all(verdict.accepted == 2)


def test_speculative_with_empty_block_samples_target():
    p = _dist(8).expand(ROWS, 1, -1)
    verdict = speculative(
        p, p[:, :0], torch.zeros((ROWS, 0), dtype=torch.long), torch.Generator().manual_seed(1)
    )
    assert torch.all(verdict.accepted == 0)
    assert_counts(verdict.next_token, p[0, 0])


def _tables(p_tokens: list[float], q_tokens: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row whose draft tokens are 0..n-1 with the given probabilities; p after the block is one-hot
    on token n, and the target at position j puts its remaining mass on token VOCAB-1-j, so the next
    token tells which position the rule stopped at."""
    n = len(p_tokens)
    p = torch.zeros(1, n + 1, VOCAB)
    q = torch.zeros(1, n, VOCAB)
    for j, (pj, qj) in enumerate(zip(p_tokens, q_tokens, strict=True)):
        p[0, j, j], p[0, j, VOCAB - 1 - j] = pj, 1 - pj
        q[0, j, j], q[0, j, VOCAB - 2 - j] = qj, 1 - qj
    p[0, n, n] = 1.0
    return p, q, torch.arange(n).unsqueeze(0)


@pytest.mark.parametrize(
    ("p_tokens", "q_tokens", "threshold", "accepted"),
    [
        ([0.9, 0.9, 0.9], [0.9, 0.9, 0.9], 0.5, 3),  # p == q: ratio 1 everywhere
        ([0.1, 0.9, 0.9], [0.5, 0.3, 0.3], 0.5, 3),  # ratios 0.2, 0.6, 1.8: later tokens compensate
        ([0.2, 0.9, 0.1], [0.5, 0.3, 0.5], 0.5, 2),  # ratios 0.4, 1.2, 0.24: the longest passing is 2
        ([0.9, 0.1, 0.9], [0.3, 0.5, 0.9], 0.7, 1),  # ratios 3, 0.6, 0.6: only d = 1 passes tau 0.7
        ([0.1, 0.1, 0.1], [0.9, 0.9, 0.9], 0.5, 0),  # nothing passes
        ([0.5, 0.0, 1.0], [0.5, 0.5, 1e-6], 0.5, 1),  # p = 0 fails every prefix containing it
        ([0.6, 0.6], [0.6, 0.6], 1.0, 0),  # tau = 1 needs ratio strictly above 1
        ([0.61, 0.6], [0.6, 0.6], 1.0, 2),  # just above 1 at both depths
        ([0.3], [0.9], 1 / 3 - 1e-4, 1),  # ratio 1/3 just above tau
        ([0.3], [0.9], 1 / 3 + 1e-4, 0),  # ratio 1/3 just below tau
    ],
)
def test_mtad_accepts_longest_passing_prefix(p_tokens, q_tokens, threshold, accepted):
    p, q, tokens = _tables(p_tokens, q_tokens)
    verdict = mtad_joint(p, q, tokens, torch.Generator().manual_seed(0), threshold=threshold)
    assert int(verdict.accepted) == accepted
    # The next token comes from p at the first position not accepted (not a residual).
    p_next = p[0, accepted]
    assert p_next[int(verdict.next_token)] > 0
    if accepted == len(p_tokens):
        assert int(verdict.next_token) == accepted


def test_mtad_next_token_is_drawn_from_target_not_residual():
    """At a rejected position MTAD samples p itself: the draft's token stays possible."""
    p, q, tokens = _tables([0.1, 0.1], [0.9, 0.9])
    g = torch.Generator().manual_seed(0)
    rows = 20_000
    verdict = mtad_joint(
        p.expand(rows, -1, -1), q.expand(rows, -1, -1), tokens.expand(rows, -1), g, threshold=0.5
    )
    assert torch.all(verdict.accepted == 0)
    assert_counts(verdict.next_token, p[0, 0])


def test_mtad_is_batched_with_ragged_lengths():
    rows = [_tables([0.9, 0.9], [0.9, 0.9]), _tables([0.1, 0.9], [0.9, 0.9]), _tables([0.1, 0.1], [0.9, 0.9])]
    p, q, tokens = (torch.cat(parts) for parts in zip(*rows, strict=True))
    verdict = mtad_joint(p, q, tokens, torch.Generator().manual_seed(0), threshold=0.5)
    assert verdict.accepted.tolist() == [2, 0, 0]
    verdict = mtad_joint(p, q, tokens, torch.Generator().manual_seed(0), threshold=0.1)
    # row 1: ratios 1/9, 1/9 -> both pass 0.1; row 2: ratios 1/9, 1/81 -> only d = 1 passes
    assert verdict.accepted.tolist() == [2, 2, 1]


def test_accept_all_and_accept_none():
    p, q, tokens = _tables([0.1, 0.2], [0.9, 0.9])
    g = torch.Generator().manual_seed(0)
    assert int(accept_all(p, q, tokens, g).accepted) == 2
    assert int(accept_all(p, q, tokens, g).next_token) == 2  # bonus from the one-hot p after the block
    assert int(accept_none(p, q, tokens, g).accepted) == 0


def test_mtad_log_space_survives_tiny_probabilities():
    p, q, tokens = _tables([1e-30, 1e-30, 1.0], [1e-30, 1e-30, 1.0])
    verdict = mtad_joint(p, q, tokens, torch.Generator().manual_seed(0), threshold=0.5)
    assert int(verdict.accepted) == 3
    assert math.isfinite(float(p.sum()))
