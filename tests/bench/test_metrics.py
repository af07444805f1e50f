import math

import numpy as np
import pytest

from mtad.bench import metrics as m
from mtad.errors import MtadError


def test_perplexity_of_hand_made_logprobs():
    # p = 1/2, 1/4 -> mean log p = -1.5 ln 2 -> perplexity 2 ** 1.5
    assert m.perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(2**1.5)
    assert m.perplexity([0.0, 0.0]) == pytest.approx(1.0)
    assert math.isnan(m.perplexity([]))
    assert m.perplexity([-math.inf, 0.0]) == math.inf


def test_token_weighted_and_per_sample_perplexity_differ_as_defined():
    a = [math.log(0.5)] * 3  # perplexity 2, three tokens
    b = [math.log(0.25)]  # perplexity 4, one token
    # pooled: exp(-(3 ln .5 + ln .25) / 4) = exp(5 ln 2 / 4)
    assert m.token_weighted_perplexity([a, b]) == pytest.approx(2 ** (5 / 4))
    assert m.mean_sample_perplexity([a, b]) == pytest.approx(3.0)
    # an empty generation adds no tokens and has no perplexity of its own
    assert m.token_weighted_perplexity([a, [], b]) == pytest.approx(2 ** (5 / 4))
    assert m.mean_sample_perplexity([a, [], b]) == pytest.approx(3.0)
    assert math.isnan(m.token_weighted_perplexity([[], []]))


@pytest.mark.parametrize("bad", [[0.5], [float("nan")], [[-1.0]]])
def test_perplexity_rejects_values_that_are_not_logprobs(bad):
    with pytest.raises(MtadError):
        m.perplexity(bad)


def test_speed_metrics():
    assert m.speedup(baseline_ms_per_token=30.0, method_ms_per_token=10.0) == pytest.approx(3.0)
    assert m.paired_speedups([30.0, 20.0], [10.0, 40.0]) == pytest.approx([3.0, 0.5])
    with pytest.raises(MtadError):
        m.paired_speedups([1.0], [1.0, 2.0])
    assert m.joules_per_token(None, 10) is None
    assert m.joules_per_token(5.0, 10) == pytest.approx(0.5)


def test_median_spread():
    spread = m.median_spread([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (spread.median, spread.q1, spread.q3, spread.n) == (3.0, 2.0, 4.0, 5)
    assert spread.iqr == 2.0
    assert m.median_spread([float("nan"), 1.0, 3.0]).median == 2.0
    assert m.median_spread([]).n == 0


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(1).normal(10.0, 2.0, size=200)
    ci = m.bootstrap_ci(values, seed=3, n_resamples=2000)
    assert ci.estimate == pytest.approx(values.mean())
    assert ci.low < ci.estimate < ci.high
    # standard error is 2 / sqrt(200) ~ 0.141, so a 95% interval is ~ +-0.28 wide
    assert 0.4 < ci.high - ci.low < 0.7
    assert m.bootstrap_ci(values, seed=3, n_resamples=2000) == ci
    assert m.bootstrap_ci(values, seed=4, n_resamples=2000) != ci
    narrow = m.bootstrap_ci(values, seed=3, n_resamples=2000, confidence=0.5)
    assert ci.low < narrow.low < narrow.high < ci.high


def test_bootstrap_ci_of_constant_and_median():
    assert m.bootstrap_ci([1.0, 1.0, 1.0]) == m.ConfidenceInterval(1.0, 1.0, 1.0, 0.95)
    ci = m.bootstrap_ci([0.0, 1.0, 2.0, 3.0, 1000.0], np.median, n_resamples=500)
    assert ci.estimate == 2.0 and ci.high <= 1000.0
    with pytest.raises(MtadError):
        m.bootstrap_ci([])
    with pytest.raises(MtadError):
        m.bootstrap_ci([1.0], confidence=1.0)


def test_pass_at_k_matches_the_combinatorial_definition():
    assert m.pass_at_k(n=10, c=3, k=1) == pytest.approx(0.3)
    assert m.pass_at_k(n=5, c=2, k=2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert m.pass_at_k(n=3, c=0, k=1) == 0.0
    assert m.pass_at_k(n=3, c=3, k=2) == 1.0
    with pytest.raises(MtadError):
        m.pass_at_k(n=2, c=3, k=1)


def test_pass_at_1_averages_problems_not_samples():
    outcomes = {"a": [True], "b": [False], "c": [True, False, False, False]}
    assert m.pass_at_1_per_problem(outcomes) == {"a": 1.0, "b": 0.0, "c": 0.25}
    assert m.pass_at_1(outcomes) == pytest.approx(1.25 / 3)
    with pytest.raises(MtadError):
        m.pass_at_1({"a": []})
    assert m.accuracy([True, False, True, True]) == 0.75
    assert math.isnan(m.accuracy([]))


def test_pass_at_k_against_hand_computed_values():
    # 1 - C(n-c, k) / C(n, k), worked by hand
    assert m.pass_at_k(n=5, c=2, k=2) == pytest.approx(1 - 3 / 10)
    assert m.pass_at_k(n=10, c=3, k=5) == pytest.approx(1 - 21 / 252)
    assert m.pass_at_k(n=4, c=1, k=3) == pytest.approx(1 - 1 / 4)
    assert m.pass_at_k(n=4, c=1, k=4) == 1.0  # every sample drawn: the one that passed is among them
    assert m.pass_at_k(n=20, c=0, k=10) == 0.0
    with pytest.raises(MtadError):
        m.pass_at_k(n=3, c=1, k=4)  # k > n has no unbiased estimate
    outcomes = {"a": [True, False, False, False], "b": [False] * 4, "c": [True, True, False, False]}
    assert m.pass_at_k_per_problem(outcomes, 2) == pytest.approx({"a": 0.5, "b": 0.0, "c": 1 - 1 / 6})
    assert m.pass_at_k_per_problem(outcomes, 1) == m.pass_at_1_per_problem(outcomes)


def test_paired_difference_is_a_seeded_bootstrap_over_shared_problems():
    a = {"p1": 1.0, "p2": 0.0, "p3": 1.0, "p4": 1.0, "only_a": 1.0, "nan": float("nan")}
    b = {"p1": 0.0, "p2": 0.0, "p3": 1.0, "p4": 0.0, "only_b": 0.0, "nan": 0.0}
    difference = m.paired_difference(a, b, seed=7, n_resamples=2000)
    assert difference.problems == 4  # unshared and NaN problems are left out
    # differences 1, 0, 0, 1: the bootstrap of their mean on seed 7
    assert difference.interval == m.bootstrap_ci([1.0, 0.0, 0.0, 1.0], seed=7, n_resamples=2000)
    assert (
        difference.interval.estimate == 0.5
        and 0.0 <= difference.interval.low < 0.5 < difference.interval.high
    )
    assert m.paired_difference(a, b, seed=7, n_resamples=2000) == difference
    assert m.paired_difference({"x": 1.0}, {"y": 1.0}) is None


def test_pairing_removes_the_spread_between_problems():
    rng = np.random.default_rng(0)
    problems = [f"p{i}" for i in range(100)]
    base = {p: v for p, v in zip(problems, rng.uniform(0, 1, 100), strict=True)}  # hard and easy problems
    better = {p: base[p] + 0.05 + rng.normal(0, 0.01) for p in problems}  # a small, consistent gain
    paired = m.paired_difference(better, base, seed=0, n_resamples=2000).interval
    separate = m.bootstrap_ci(list(better.values()), seed=0, n_resamples=2000)
    assert paired.low > 0  # the gain is resolved prompt by prompt
    assert separate.high - separate.low > 10 * (paired.high - paired.low)
