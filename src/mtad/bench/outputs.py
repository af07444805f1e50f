"""Turn a run's results into its files: summary.csv, report.md and the PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtad.bench import plots
from mtad.bench.plan import BenchConfig, Variant, format_sweep_value
from mtad.bench.report import render_report
from mtad.bench.rundir import CONFIG_FILE, MACHINE_FILE
from mtad.bench.summary import summarize, write_summary_csv

SUMMARY_FILE = "summary.csv"
REPORT_FILE = "report.md"


def setup_table(config: BenchConfig, prompts: int, formats: Sequence[str] = ()) -> dict[str, Any]:
    """The settings a reader needs to interpret the numbers, as the report lists them;
    `formats` are what the samples' prompt format resolved to (chat, raw)."""
    setup = {
        "dataset": config.dataset,
        "data path": config.data_path or "built in",
        "prompts": prompts,
        "repeats": config.repeats,
        "target": config.target,
        "draft": config.draft or "none",
        "device / dtype": f"{config.device or 'auto'} / {config.dtype or 'float32'}"
        + (f" (draft {config.draft_dtype})" if config.draft_dtype else ""),
        "methods": ",".join(config.methods),
        **{k.replace("_", " "): v for k, v in config.decoding.items()},
        "seed": config.seed,
        "prompt format": config.prompt_format
        + (
            f" (resolved: {', '.join(formats)})"
            if formats and list(formats) != [config.prompt_format]
            else ""
        ),
        "sample timeout (s)": config.sample_timeout_s,
    }
    if "humaneval_prompt" in config.identity():
        setup["humaneval chat prompt"] = config.identity()["humaneval_prompt"]
    if config.judge is not None:
        setup["judge"] = f"{config.judge.model} at {config.judge.url}"
        setup["judge prompt / timeout (s)"] = f"{config.judge.prompt} / {config.judge.timeout_s:g}"
        setup["judge API key variable"] = config.judge.api_key_env
    if config.sweep is not None:
        setup["sweep"] = f"{config.sweep.param} = {', '.join(map(format_sweep_value, config.sweep.values))}"
    setup["config hash"] = config.config_hash()
    return setup


def quality_notes(config: BenchConfig, formats: Sequence[str] = ()) -> list[str]:
    """What the report says under its output-quality table: how HumanEval answers became programs,
    or which judge graded MT-Bench."""
    if config.dataset == "humaneval":
        if "chat" in formats:
            return [
                "HumanEval was asked in chat form (the target has a chat template): the program is "
                "extracted from each answer (fenced blocks first, then the longest parseable span; the "
                "entry point must be defined, the prompt's imports are added) and run against the tests. "
                "Each sample's `task.program` in results.jsonl is what ran; `task.detail` says why it "
                "failed, or `no code: ...` when nothing could be extracted."
            ]
        return [
            "HumanEval was run as a raw completion of the prompt's code (`task.program` in "
            "results.jsonl is the prompt plus the cut completion that ran)."
        ]
    if config.judge is not None:
        return [
            f"MT-Bench answers were graded 1–10 by `{config.judge.model}` at {config.judge.url} "
            f"(prompt `{config.judge.prompt}`, temperature 0). Judge scores depend on the judge model: "
            "compare them only between runs graded by the same judge."
        ]
    if config.dataset == "mtbench":
        return ["No judge was given (`--judge-url`): MT-Bench answers are scored by perplexity only."]
    return []


def write_outputs(
    out: Path, config: BenchConfig, variants: Sequence[Variant], rows: Sequence[Mapping], command: str
) -> dict[str, Path]:
    """Write every output file of the run in `out` from its rows; returns {kind: path}."""
    summaries = summarize(rows, [v.label for v in variants], seed=config.seed)
    write_summary_csv(out / SUMMARY_FILE, summaries)
    figures = [
        (
            "speed-up vs output perplexity",
            plots.speedup_vs_perplexity(summaries, out / "speedup_vs_perplexity.png"),
        ),
        (
            "acceptance per draft position",
            plots.acceptance_per_position(summaries, out / "acceptance_per_position.png"),
        ),
        (
            "tokens/s distribution",
            plots.tokens_per_s_distribution(rows, [v.label for v in variants], out / "tokens_per_s.png"),
        ),
    ]
    sweep_param = config.sweep.param if config.sweep else None
    if sweep_param:
        figures.append(
            (
                f"sweep over {sweep_param}",
                plots.sweep_plot(summaries, sweep_param, out / f"sweep_{sweep_param}.png"),
            )
        )
    machine = json.loads((out / MACHINE_FILE).read_text()) if (out / MACHINE_FILE).is_file() else {}
    prompts = len({r["prompt_id"] for r in rows})
    formats = sorted({r["prompt_format"] for r in rows if r.get("prompt_format")})
    report = render_report(
        summaries,
        rows,
        title=f"mtad bench: {config.dataset}, {prompts} prompts × {config.repeats} repeat(s)",
        command=command,
        setup=setup_table(config, prompts, formats),
        machine=machine,
        plots=figures,
        sweep_param=sweep_param,
        quality_notes=quality_notes(config, formats),
    )
    (out / REPORT_FILE).write_text(report, encoding="utf-8")
    files = {"results": out / "results.jsonl", "config": out / CONFIG_FILE, "summary": out / SUMMARY_FILE}
    files["report"] = out / REPORT_FILE
    files.update({name.removesuffix(".png"): out / name for _, name in figures})
    return files
