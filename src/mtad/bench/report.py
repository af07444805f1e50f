"""report.md: the tables of a bench run, from the per-variant summaries of `mtad.bench.summary`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtad.bench.energy import NO_METER
from mtad.bench.judge import METRIC as JUDGE_METRIC
from mtad.bench.metrics import ConfidenceInterval, Spread
from mtad.bench.summary import BASELINE, VariantSummary


def fmt(value: float | None, digits: int = 2) -> str:
    """A table cell: '—' for undefined values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_spread(spread: Spread | None, digits: int = 2) -> str:
    if spread is None or spread.n == 0:
        return "—"
    return f"{fmt(spread.median, digits)} [{fmt(spread.q1, digits)}–{fmt(spread.q3, digits)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def speed_table(summaries: Sequence[VariantSummary]) -> str:
    header = [
        "method",
        "samples",
        "failed",
        "tokens/s",
        "ms/token",
        f"speed-up vs {BASELINE}",
        "throughput tok/s",
        "batch",
        "new tokens (mean)",
    ]
    rows = [
        [
            s.variant,
            str(s.samples),
            str(s.failed),
            fmt_spread(s.tokens_per_s, 1),
            fmt_spread(s.ms_per_token, 1),
            fmt_spread(s.speedup) if s.speedup is not None else f"n/a (no {BASELINE} in --methods)",
            fmt(s.throughput, 1),
            str(s.batch_size),
            fmt(s.mean_new_tokens, 1),
        ]
        for s in summaries
    ]
    return _table(header, rows)


def speculation_table(summaries: Sequence[VariantSummary]) -> str:
    header = [
        "method",
        "acceptance rate",
        "block efficiency",
        "target forwards/token",
        "draft forwards/token",
    ]
    rows = [
        [
            s.variant,
            fmt(s.acceptance_rate, 3),
            fmt(s.block_efficiency, 3),
            fmt(s.target_forwards_per_token, 3),
            fmt(s.draft_forwards_per_token, 3),
        ]
        for s in summaries
    ]
    return _table(header, rows)


def position_table(summaries: Sequence[VariantSummary]) -> str:
    depth = max((len(s.acceptance_per_position) for s in summaries), default=0)
    if depth == 0:
        return "_No method drafted tokens._"
    header = ["method"] + [f"pos {i + 1}" for i in range(depth)]
    rows = [
        [s.variant]
        + [fmt(v, 3) for v in s.acceptance_per_position]
        + ["—"] * (depth - len(s.acceptance_per_position))
        for s in summaries
        if s.acceptance_per_position
    ]
    return _table(header, rows)


def fmt_ci(ci: ConfidenceInterval | None, digits: int = 3, sign: bool = False) -> str:
    if ci is None:
        return "—"
    estimate = (
        f"{ci.estimate:+.{digits}f}" if sign and not math.isnan(ci.estimate) else fmt(ci.estimate, digits)
    )
    return f"{estimate} [{fmt(ci.low, digits)}–{fmt(ci.high, digits)}]"


def _score_cell(s: VariantSummary) -> str:
    if s.task_score is None:
        if s.task_metric == JUDGE_METRIC:
            return "— (every judgement missing)"
        return "n/a (no automatic score; see perplexity)"
    return fmt_ci(s.task_score, 2 if s.task_metric == JUDGE_METRIC else 3)


def quality_table(summaries: Sequence[VariantSummary]) -> str:
    metric = next((s.task_metric for s in summaries if s.task_metric), None)
    score_header = f"{metric} [95% CI]" if metric else "task score"
    ks = sorted({k for s in summaries for k in s.pass_at_k})
    header = ["method", "perplexity (token-weighted)", "perplexity (per-sample mean)", score_header]
    header += [f"pass@{k} [95% CI]" for k in ks]
    judged = metric == JUDGE_METRIC
    rows = [
        [s.variant, fmt(s.perplexity_token_weighted, 3), fmt(s.perplexity_sample_mean, 3), _score_cell(s)]
        + [fmt_ci(s.pass_at_k.get(k)) for k in ks]
        + ([str(s.judge_missing)] if judged else [])
        for s in summaries
    ]
    return _table(header + (["missing judgements"] if judged else []), rows)


def paired_table(summaries: Sequence[VariantSummary]) -> str | None:
    """method − baseline per prompt, for the task score and perplexity; None when nothing pairs."""
    pairs = [(s, p) for s in summaries for p in s.paired]
    if not pairs:
        return None
    metric = next((s.task_metric for s in summaries if s.task_metric), None)
    digits = 2 if metric == JUDGE_METRIC else 3
    header = ["method", "vs", f"Δ {metric or 'task score'} [95% CI]", "Δ perplexity [95% CI]", "prompts"]
    rows = []
    for s, p in pairs:
        task = fmt_ci(p.task.interval, digits, sign=True) if p.task else "n/a"
        ppl = fmt_ci(p.perplexity.interval, 3, sign=True) if p.perplexity else "—"
        shared = max(d.problems for d in (p.task, p.perplexity) if d) if (p.task or p.perplexity) else 0
        rows.append([s.variant, p.baseline, task, ppl, str(shared)])
    return _table(header, rows)


def resources_table(summaries: Sequence[VariantSummary]) -> str:
    header = ["method", "J/token", "peak memory (MiB)"]
    rows = [
        [
            s.variant,
            NO_METER if s.joules_per_token is None else fmt(s.joules_per_token, 4),
            fmt(s.peak_memory_mb, 0),
        ]
        for s in summaries
    ]
    return _table(header, rows)


def sweep_table(summaries: Sequence[VariantSummary], param: str) -> str:
    header = ["method", param, f"speed-up vs {BASELINE}", "acceptance rate", "block efficiency", "perplexity"]
    rows = [
        [
            s.method,
            str(s.params.get(param)),
            fmt_spread(s.speedup),
            fmt(s.acceptance_rate, 3),
            fmt(s.block_efficiency, 3),
            fmt(s.perplexity_token_weighted, 3),
        ]
        for s in summaries
    ]
    return _table(header, rows)


def _sample_list(rows: Sequence[Mapping], reason, limit: int = 20) -> str:
    if not rows:
        return "None."
    lines = [f"- `{r['prompt_id']}` {r['variant']} repeat {r['repeat']}: {reason(r)}" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"- … and {len(rows) - limit} more (see results.jsonl)")
    return "\n".join(lines)


def _failures(rows: Sequence[Mapping]) -> str:
    return _sample_list([r for r in rows if r.get("status") != "ok"], lambda r: r.get("reason"))


def _judged(rows: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in rows if r.get("task") and r["task"]["metric"] == JUDGE_METRIC]


def _missing_judgements(rows: Sequence[Mapping]) -> str:
    missing = [r for r in _judged(rows) if r["task"]["score"] is None]
    return _sample_list(missing, lambda r: r["task"]["detail"])


_DEFINITIONS = """\
- tokens/s, ms/token: timed around generation only (no loading, no scoring); median [IQR] over samples.
- speed-up: per (prompt, repeat), `ar` ms/token / method ms/token, both measured back to back in this run.
- throughput: all new tokens / all decoding time; with `--batch-size` > 1 a batch's wall time counts once
  (its rows' tokens/s are each row's rate inside the batch, its latency view).
- acceptance rate: accepted / drafted tokens, pooled; drafted = rounds × gamma less rounds cut by the budget.
- acceptance per position i: rounds that accepted draft position i / rounds that drafted it, pooled.
- block efficiency: new tokens / target forward passes (the bonus or recovered token counts).
- perplexity: exp(−mean log p) of the generated tokens under the unwarped target at T = 1, in a separate pass.
- task score: per prompt the fraction of repeats correct, mean over prompts, 95% bootstrap CI over prompts;
  a failed generation counts as wrong.
- pass@k (HumanEval, n = repeats samples per problem): per problem 1 − C(n−c, k) / C(n, k) with c passing
  samples (Chen et al. 2021, unbiased), mean over problems, 95% bootstrap CI over problems.
- paired differences: per prompt the method's task score (or mean per-sample perplexity) minus the
  baseline's, on the prompts both have; mean with a 95% paired-bootstrap CI (one resample of prompts serves
  both methods). An interval that excludes 0 is a difference at that confidence; lower perplexity means
  the target finds the output more likely.
- MT-Bench judge score: an LLM judge rates each answer 1–10 (single-answer grading, temperature 0);
  per prompt the mean over repeats, mean over prompts, 95% bootstrap CI over prompts. A missing
  judgement (judge error or no valid rating) is left out and counted. Scores depend on the judge."""


def render_report(
    summaries: Sequence[VariantSummary],
    rows: Sequence[Mapping],
    *,
    title: str,
    command: str,
    setup: Mapping[str, Any],
    machine: Mapping[str, str],
    plots: Sequence[tuple[str, str]],
    sweep_param: str | None = None,
    quality_notes: Sequence[str] = (),
) -> str:
    """The Markdown report: tables, plots (caption, file name), the command, setup and machine;
    `quality_notes` are paragraphs under the output-quality table (which judge, or none)."""
    parts = [f"# {title}", "", "## Command", "", "```", command, "```", ""]
    parts += ["## Speed", "", speed_table(summaries), ""]
    if sweep_param:
        parts += [f"## Sweep over {sweep_param}", "", sweep_table(summaries, sweep_param), ""]
    parts += ["## Speculation", "", speculation_table(summaries), ""]
    parts += ["### Acceptance per draft position", "", position_table(summaries), ""]
    parts += ["## Output quality", "", quality_table(summaries), ""]
    paired = paired_table(summaries)
    if paired is not None:
        parts += ["### Paired differences (method − baseline, same prompts)", "", paired, ""]
    for note in quality_notes:
        parts += [note, ""]
    parts += ["## Energy and memory", "", resources_table(summaries), ""]
    parts += [f"Peak memory: {machine.get('peak_memory', 'n/a')}.", ""]
    if machine.get("energy_meter_notes"):
        parts += [f"Energy meter: {machine['energy_meter']} ({machine['energy_meter_notes']}).", ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{caption}]({name})" for caption, name in plots] + [""]
    parts += ["## Failed samples", "", _failures(rows), ""]
    if _judged(rows):
        parts += ["## Missing judgements", "", _missing_judgements(rows), ""]
    parts += ["## Setup", "", _table(["setting", "value"], [[k, f"`{v}`"] for k, v in setup.items()]), ""]
    parts += ["## Machine", "", _table(["item", "value"], _machine_rows(machine)), ""]
    parts += ["## Definitions", "", _DEFINITIONS, ""]
    return "\n".join(parts)


def _machine_rows(machine: Mapping[str, Any]) -> list[list[str]]:
    """One row per item; a sharded run's actors (`nodes`, `mtad.bench.ray`) one row each."""
    rows = [[key, str(value)] for key, value in machine.items() if key != "nodes"]
    for number, node in enumerate(machine.get("nodes") or (), start=1):
        cpus, gpus = node.get("node_cpus") or 0, node.get("node_gpus") or 0
        where = f"{node.get('node_ip')} ({cpus:g} CPUs, {gpus:g} GPUs)"
        what = ", ".join(str(node[key]) for key in ("cpu", "gpu", "device", "dtype") if node.get(key))
        rows.append([f"actor {number}", f"{where}: {what}, {node.get('torch_threads')} torch threads"])
    return rows
