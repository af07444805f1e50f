"""Aggregate results.jsonl rows per variant (`summarize`) and write summary.csv.

Aggregation rules (metric definitions are in `mtad.bench.metrics`):
- tokens/s, ms/token: median and IQR over every successful (prompt, repeat) sample;
- speed-up vs `ar`: paired per (prompt, repeat) - the two generations ran back to back - as
  ar's ms/token / the method's ms/token; median and IQR of those ratios;
- acceptance rate, block efficiency, forwards per token, acceptance per draft position: pooled
  over samples (sums of counts, then the ratio), so long generations weigh more; acceptance is
  accepted / drafted tokens, where drafted = rounds x gamma less the rounds shortened by the
  max_new_tokens budget (engine `Stats`), and per position i it is the rounds that accepted
  position i / the rounds that drafted it;
- perplexity: token-weighted (pooled log-probs) and the mean of per-sample perplexities;
- task score: per prompt the fraction of repeats that passed, then the mean over prompts with a
  95% percentile-bootstrap CI over prompts; a failed generation counts as a wrong answer;
- HumanEval pass@k (k in `PASS_AT_K` up to the repeats n, and k = n): per problem the unbiased
  estimator of Chen et al. (2021) from its n samples, then the mean with the same bootstrap CI;
- paired differences vs `ar` and vs `sd` (when they ran): per prompt the method's value minus the
  baseline's, on the prompts both have, for the task score and the per-prompt perplexity (the mean
  of that prompt's per-sample perplexities); the mean difference with a paired bootstrap CI;
- MT-Bench judge score (1-10): per prompt the mean rating over repeats, then the mean over prompts
  with the same bootstrap CI; missing judgements (judge errors, replies without a valid rating) are
  left out and counted, failed generations have no answer to judge and count as failed only;
- J/token: total joules / total new tokens, or "n/a" when the machine has no meter;
- peak memory: the largest per-sample value (the report says which kind of peak it is).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mtad.bench import metrics
from mtad.bench.judge import METRIC as JUDGE_METRIC
from mtad.bench.metrics import ConfidenceInterval, PairedDifference, Spread
from mtad.bench.scoring import HUMANEVAL_METRIC

BASELINE = "ar"
# Methods every other method is compared with, prompt by prompt, in the quality section.
PAIRED_BASELINES = ("ar", "sd")
PASS_AT_K = (1, 5, 10, 100)
_NAN = float("nan")


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    method: str
    params: Mapping[str, Any]
    samples: int
    failed: int
    mean_new_tokens: float
    tokens_per_s: Spread
    ms_per_token: Spread
    throughput: float  # every new token over the total decoding time (a batch's time counted once)
    batch_size: int  # the largest batch the samples ran in (1: one prompt at a time)
    speedup: Spread | None  # None when the run has no ar baseline
    acceptance_rate: float
    block_efficiency: float
    acceptance_per_position: list[float]
    target_forwards_per_token: float
    draft_forwards_per_token: float
    perplexity_token_weighted: float
    perplexity_sample_mean: float
    task_metric: str | None  # pass@1, execution accuracy or JUDGE_METRIC; None without a task score
    task_score: ConfidenceInterval | None  # None also when every judgement is missing
    judge_missing: int  # samples generated but not judged (judged runs only)
    joules_per_token: float | None
    peak_memory_mb: float
    pass_at_k: Mapping[int, ConfidenceInterval] = field(default_factory=dict)  # k >= 2; pass@1 is task_score
    paired: tuple[Paired, ...] = ()  # vs each of PAIRED_BASELINES that ran (not itself)


@dataclass(frozen=True)
class Paired:
    """This variant minus `baseline`, prompt by prompt (see `mtad.bench.metrics.paired_difference`)."""

    baseline: str
    task: PairedDifference | None  # the task score (pass@1, execution accuracy, judge rating)
    perplexity: PairedDifference | None  # per-prompt mean of per-sample perplexities


def _ok(rows: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in rows if r.get("status") == "ok"]


def _number(value: Any) -> float:
    return _NAN if value is None else float(value)


def _pooled_ratio(rows: Sequence[Mapping], numerator: str, denominator: str) -> float:
    total = sum(r[denominator] for r in rows)
    return sum(r[numerator] for r in rows) / total if total else _NAN


def _per_position(rows: Sequence[Mapping]) -> list[float]:
    depth = max((len(r["drafted_per_position"]) for r in rows), default=0)
    accepted, drafted = [0] * depth, [0] * depth
    for row in rows:
        for i, (a, d) in enumerate(
            zip(row["accepted_per_position"], row["drafted_per_position"], strict=True)
        ):
            accepted[i] += a
            drafted[i] += d
    return [a / d if d else _NAN for a, d in zip(accepted, drafted, strict=True)]


def _speedups(rows: Sequence[Mapping], baseline: Mapping[tuple[str, int], float]) -> list[float]:
    pairs = [
        (baseline[(r["prompt_id"], r["repeat"])], r["ms_per_token"])
        for r in rows
        if (r["prompt_id"], r["repeat"]) in baseline and r["ms_per_token"]
    ]
    return metrics.paired_speedups([b for b, _ in pairs], [m for _, m in pairs])


def _outcomes(rows: Sequence[Mapping]) -> dict[str, list[bool]]:
    """Pass/fail per prompt over its repeats; failed generations count as wrong answers."""
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        outcomes[row["prompt_id"]].append(bool(row.get("task") and row["task"]["correct"]))
    return outcomes


def per_prompt_task(rows: Sequence[Mapping]) -> tuple[str | None, dict[str, float], int]:
    """(metric, the per-prompt task score, missing judgements): the unit of every task interval.

    Pass/fail tasks: the fraction of the prompt's repeats that passed. Judged MT-Bench: the mean
    rating over the prompt's judged repeats (missing judgements are left out and counted).
    """
    scored = [r for r in rows if r.get("task")]
    if not scored:
        return None, {}, 0
    metric = scored[0]["task"]["metric"]
    if metric != JUDGE_METRIC:
        return metric, metrics.pass_at_1_per_problem(_outcomes(rows)), 0
    ratings: dict[str, list[float]] = defaultdict(list)
    for row in scored:
        if row["task"]["score"] is not None:
            ratings[row["prompt_id"]].append(row["task"]["score"])
    missing = sum(row["task"]["score"] is None for row in scored)
    return metric, metrics.mean_per_problem(ratings), missing


def per_prompt_perplexity(rows: Sequence[Mapping]) -> dict[str, float]:
    """Per prompt, the mean of its successful samples' perplexities (empty generations have none)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in _ok(rows):
        if row.get("perplexity") is not None:
            values[row["prompt_id"]].append(row["perplexity"])
    return metrics.mean_per_problem({p: v for p, v in values.items() if v})


def _task_score(rows: Sequence[Mapping], seed: int) -> tuple[str | None, ConfidenceInterval | None, int]:
    """(metric, mean over prompts with its CI, missing judgements) of one variant's rows."""
    metric, per_prompt, missing = per_prompt_task(rows)
    score = metrics.bootstrap_ci(list(per_prompt.values()), seed=seed) if per_prompt else None
    return metric, score, missing


def _pass_at_k(rows: Sequence[Mapping], metric: str | None, seed: int) -> dict[int, ConfidenceInterval]:
    """HumanEval pass@k for k >= 2 in PASS_AT_K and k = n, where every prompt has n >= k samples."""
    if metric != HUMANEVAL_METRIC:
        return {}
    outcomes = _outcomes(rows)
    n = min(len(results) for results in outcomes.values())
    ks = sorted(({k for k in PASS_AT_K if k <= n} | {n}) - {1})
    return {
        k: metrics.bootstrap_ci(list(metrics.pass_at_k_per_problem(outcomes, k).values()), seed=seed)
        for k in ks
    }


def _throughput(rows: Sequence[Mapping]) -> float:
    """Tokens per second of decoding time, where the rows of one batch share one wall time."""
    if any("wall_time_s" not in r for r in rows):
        return _NAN
    tokens = sum(r["new_tokens"] for r in rows)
    batches = {(r["batch_id"], r["repeat"]): r["batch_wall_time_s"] for r in rows if "batch_id" in r}
    seconds = sum(r["wall_time_s"] for r in rows if "batch_id" not in r) + sum(batches.values())
    return tokens / seconds if seconds > 0 else _NAN


def _joules_per_token(rows: Sequence[Mapping]) -> float | None:
    if not rows or any(r.get("joules") is None for r in rows):
        return None
    return metrics.joules_per_token(sum(r["joules"] for r in rows), sum(r["new_tokens"] for r in rows))


def summarize_variant(
    rows: Sequence[Mapping], baseline: Mapping[tuple[str, int], float] | None, seed: int = 0
) -> VariantSummary:
    """One variant's row of the report from all its samples (failed ones included)."""
    ok = _ok(rows)
    logprobs = [r["logprobs"] for r in ok]
    metric, score, judge_missing = _task_score(rows, seed)
    return VariantSummary(
        variant=rows[0]["variant"],
        method=rows[0]["method"],
        params=rows[0]["params"],
        samples=len(ok),
        failed=len(rows) - len(ok),
        mean_new_tokens=float(np.mean([r["new_tokens"] for r in ok])) if ok else _NAN,
        tokens_per_s=metrics.median_spread([_number(r["tokens_per_s"]) for r in ok]),
        ms_per_token=metrics.median_spread([_number(r["ms_per_token"]) for r in ok]),
        throughput=_throughput(ok),
        batch_size=max((r.get("batch_size", 1) for r in ok), default=1),
        speedup=None if baseline is None else metrics.median_spread(_speedups(ok, baseline)),
        acceptance_rate=_pooled_ratio(ok, "accepted_tokens", "drafted_tokens"),
        block_efficiency=_pooled_ratio(ok, "new_tokens", "target_calls"),
        acceptance_per_position=_per_position(ok),
        target_forwards_per_token=_pooled_ratio(ok, "target_calls", "new_tokens"),
        draft_forwards_per_token=_pooled_ratio(ok, "draft_calls", "new_tokens"),
        perplexity_token_weighted=metrics.token_weighted_perplexity(logprobs),
        perplexity_sample_mean=metrics.mean_sample_perplexity(logprobs),
        task_metric=metric,
        task_score=score,
        judge_missing=judge_missing,
        joules_per_token=_joules_per_token(ok),
        peak_memory_mb=max((r["peak_memory_mb"] for r in ok), default=_NAN),
        pass_at_k=_pass_at_k(rows, metric, seed),
    )


def summarize(rows: Sequence[Mapping], variant_order: Sequence[str], seed: int = 0) -> list[VariantSummary]:
    """Summaries in `variant_order`; speed-ups are against the `ar` variant's samples when it ran,
    paired quality differences against each of PAIRED_BASELINES that ran."""
    by_variant: dict[str, list[Mapping]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    baseline = None
    if BASELINE in by_variant:
        baseline = {(r["prompt_id"], r["repeat"]): r["ms_per_token"] for r in _ok(by_variant[BASELINE])}
        baseline = {k: v for k, v in baseline.items() if v}
    summaries = [summarize_variant(by_variant[v], baseline, seed) for v in variant_order if by_variant.get(v)]
    return [replace(s, paired=paired_comparisons(by_variant, s.variant, seed)) for s in summaries]


def paired_comparisons(
    by_variant: Mapping[str, Sequence[Mapping]], variant: str, seed: int
) -> tuple[Paired, ...]:
    """`variant` minus each baseline in PAIRED_BASELINES that ran, on task score and perplexity."""
    rows = by_variant[variant]
    task, ppl = per_prompt_task(rows)[1], per_prompt_perplexity(rows)
    comparisons = []
    for name in PAIRED_BASELINES:
        if name == variant or not by_variant.get(name):
            continue
        base = by_variant[name]
        comparisons.append(
            Paired(
                name,
                metrics.paired_difference(task, per_prompt_task(base)[1], seed=seed),
                metrics.paired_difference(ppl, per_prompt_perplexity(base), seed=seed),
            )
        )
    return tuple(comparisons)


# ---- summary.csv -------------------------------------------------------------------------------


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(value, 6) if isinstance(value, float) else value


def summary_row(s: VariantSummary) -> dict[str, Any]:
    speed = s.speedup or Spread(_NAN, _NAN, _NAN, 0)
    none = ConfidenceInterval(_NAN, _NAN, _NAN, 0.95)
    judged = s.task_metric == JUDGE_METRIC
    # Pass/fail fractions (0..1) and judge ratings (1..10) never share a column.
    score = (None if judged else s.task_score) or none
    judge = (s.task_score if judged else None) or none
    row = {
        "variant": s.variant,
        "method": s.method,
        "samples": s.samples,
        "failed": s.failed,
        "mean_new_tokens": s.mean_new_tokens,
        "tokens_per_s_median": s.tokens_per_s.median,
        "tokens_per_s_q1": s.tokens_per_s.q1,
        "tokens_per_s_q3": s.tokens_per_s.q3,
        "ms_per_token_median": s.ms_per_token.median,
        "ms_per_token_q1": s.ms_per_token.q1,
        "ms_per_token_q3": s.ms_per_token.q3,
        "throughput_tokens_per_s": s.throughput,
        "batch_size": s.batch_size,
        "speedup_vs_ar_median": speed.median,
        "speedup_vs_ar_q1": speed.q1,
        "speedup_vs_ar_q3": speed.q3,
        "acceptance_rate": s.acceptance_rate,
        "block_efficiency": s.block_efficiency,
        "acceptance_per_position": ";".join(f"{v:.4f}" for v in s.acceptance_per_position),
        "target_forwards_per_token": s.target_forwards_per_token,
        "draft_forwards_per_token": s.draft_forwards_per_token,
        "perplexity_token_weighted": s.perplexity_token_weighted,
        "perplexity_sample_mean": s.perplexity_sample_mean,
        "task_metric": None if judged else s.task_metric,
        "task_score": score.estimate,
        "task_ci_low": score.low,
        "task_ci_high": score.high,
        "mtbench_judge_score_1to10": judge.estimate,
        "mtbench_judge_ci_low": judge.low,
        "mtbench_judge_ci_high": judge.high,
        "mtbench_judge_missing": s.judge_missing if judged else None,
        "joules_per_token": s.joules_per_token,
        "peak_memory_mb": s.peak_memory_mb,
    }
    paired = {p.baseline: p for p in s.paired}
    for name in PAIRED_BASELINES:  # fixed columns, empty where the baseline did not run
        for kind in ("task", "perplexity"):
            difference = getattr(paired[name], kind) if name in paired else None
            ci = difference.interval if difference else none
            row[f"{kind}_diff_vs_{name}"] = ci.estimate
            row[f"{kind}_diff_vs_{name}_ci_low"] = ci.low
            row[f"{kind}_diff_vs_{name}_ci_high"] = ci.high
    for k, ci in s.pass_at_k.items():
        row[f"pass_at_{k}"], row[f"pass_at_{k}_ci_low"], row[f"pass_at_{k}_ci_high"] = (
            ci.estimate,
            ci.low,
            ci.high,
        )
    return {k: _csv_value(v) for k, v in row.items()}


def write_summary_csv(path: Path, summaries: Sequence[VariantSummary]) -> None:
    rows = [summary_row(s) for s in summaries]
    # pass@k columns depend on each variant's samples per prompt: a partial run may lack some
    fieldnames = list(dict.fromkeys(key for row in rows for key in row)) or ["variant"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)


# ---- report.md ---------------------------------------------------------------------------------
