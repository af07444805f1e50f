"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

Each function writes one file and returns its name; the report links them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from mtad.bench.summary import BASELINE, VariantSummary  # noqa: E402

_DPI = 120


def _save(figure: plt.Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path.name


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def speedup_vs_perplexity(summaries: Sequence[VariantSummary], path: Path) -> str:
    """One point per method: median speed-up over ar (IQR bars) against token-weighted perplexity."""
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for s in summaries:
        if s.speedup is None or not (_finite(s.speedup.median) and _finite(s.perplexity_token_weighted)):
            continue
        error = [[s.speedup.median - s.speedup.q1], [s.speedup.q3 - s.speedup.median]]
        axes.errorbar(
            s.perplexity_token_weighted, s.speedup.median, yerr=error, fmt="o", capsize=4, label=s.variant
        )
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("output perplexity under the target (token-weighted; lower is better)")
    axes.set_ylabel(f"speed-up vs {BASELINE} (median, IQR)")
    axes.set_title("Speed-up vs output perplexity")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return _save(figure, path)


def acceptance_per_position(summaries: Sequence[VariantSummary], path: Path) -> str:
    """Acceptance rate at each draft position, one line per method that drafts."""
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for s in summaries:
        values = s.acceptance_per_position
        if values:
            axes.plot(range(1, len(values) + 1), values, marker="o", label=s.variant)
    axes.set_xlabel("draft position")
    axes.set_ylabel("acceptance rate (rounds accepting / rounds drafting)")
    axes.set_ylim(0, 1.05)
    axes.set_title("Acceptance per draft position")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return _save(figure, path)


def tokens_per_s_distribution(rows: Sequence[Mapping], order: Sequence[str], path: Path) -> str:
    """Box plot of per-sample tokens/s for each method."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and _finite(row.get("tokens_per_s")):
            values[row["variant"]].append(row["tokens_per_s"])
    labels = [v for v in order if values.get(v)]
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4.5))
    if labels:
        axes.boxplot([values[v] for v in labels], tick_labels=labels)
        axes.tick_params(axis="x", labelrotation=30)
    axes.set_ylabel("tokens/s per sample")
    axes.set_title("Tokens/s distribution")
    return _save(figure, path)


def _sweep_order(value: float | str) -> tuple[bool, float, str]:
    return (isinstance(value, str), 0.0 if isinstance(value, str) else float(value), str(value))


def sweep_plot(summaries: Sequence[VariantSummary], param: str, path: Path) -> str:
    """Speed-up, acceptance rate and perplexity against the swept parameter, one line per method."""
    figure, panels = plt.subplots(1, 3, figsize=(13, 4))
    by_method: dict[str, list[VariantSummary]] = defaultdict(list)
    for s in summaries:
        if param in s.params and s.method != BASELINE:
            by_method[s.method].append(s)
    for method, group in by_method.items():
        # Numbers in order, then words ("auto"); a mixed axis is categorical, in that order.
        group = sorted(group, key=lambda s: _sweep_order(s.params[param]))
        xs = [s.params[param] for s in group]
        if any(isinstance(x, str) for x in xs):
            xs = [str(x) for x in xs]
        panels[0].plot(
            xs, [s.speedup.median if s.speedup else math.nan for s in group], marker="o", label=method
        )
        panels[1].plot(xs, [s.acceptance_rate for s in group], marker="o", label=method)
        panels[2].plot(xs, [s.perplexity_token_weighted for s in group], marker="o", label=method)
    for panel, ylabel in zip(
        panels, (f"speed-up vs {BASELINE} (median)", "acceptance rate", "perplexity"), strict=True
    ):
        panel.set_xlabel(param)
        panel.set_ylabel(ylabel)
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize="small")
    figure.suptitle(f"Sweep over {param}")
    return _save(figure, path)
