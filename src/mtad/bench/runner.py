"""Run decoding methods over benchmark records and append one JSON line per generation.

Order (what makes speed-ups comparable): for each prompt, for each repeat, every variant once,
back to back, so all methods see the same machine state; the variant order rotates by one per
(prompt, repeat) so no method always runs first. Before the first measured sample each variant
runs one short warm-up generation (not recorded). Every method of a (prompt, repeat) gets the
same seed (common random numbers), derived from --seed, the prompt id and the repeat, so a
resumed run draws exactly what an uninterrupted one would.

Per generation, in this order:
1. time, energy and peak memory around `mtad.stream` only (a cooperative timeout is checked
   between committed blocks);
2. not timed: the perplexity scoring pass of the target over prompt + generated tokens;
3. not timed: the task score (HumanEval tests in a sandboxed subprocess, Spider SQL on the db,
   MT-Bench answers graded by the judge endpoint when one is given; see `mtad.bench.judge`).
A generation that raises or times out is written with `status: "failed"` and its reason, and
the run goes on. Failed samples count as finished: a resume does not retry them.

The output directory keeps `config.json` (the configuration and its hash): a run with another
configuration is refused unless `overwrite`; the same configuration continues where
`results.jsonl` stops (`--limit` and the order of the methods are not part of the hash, so a run
can be extended). The judge settings are part of the hash, so a resumed run cannot mix judges.
HumanEval runs that may use the chat format (`--prompt-format auto` or `chat`) also hash the
chat prompt's version: before it existed `auto` meant raw for HumanEval, so such a stored run is
refused under `auto` and resumes under `--prompt-format raw` (which is what it ran).
One run writes a directory at a time: `mtad bench` holds `LOCK_FILE` there (`mtad.locking`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mtad
from mtad.bench import metrics
from mtad.bench.datasets import PromptRecord
from mtad.bench.energy import EnergyMeter, detect_energy_meter
from mtad.bench.judge import Judge
from mtad.bench.machine import PeakMemory, describe_machine
from mtad.bench.plan import BenchConfig, Unit, Variant, plan_variants, sample_seed
from mtad.bench.rundir import MACHINE_FILE, plan_rows, read_plan, results_writer
from mtad.bench.scoring import encode_record, prompt_is_chat, score_task, stop_strings
from mtad.decoding.drafts import as_draft, describe_draft
from mtad.decoding.methods import get_method
from mtad.errors import ConfigError
from mtad.models import LoadedModel
from mtad.models.scoring import target_logprobs
from mtad.runtime.precision import synchronise

_WARM_UP_TOKENS = 8


class SampleTimeout(Exception):
    pass


# ---- one generation ----------------------------------------------------------------------------


@dataclass
class BenchContext:
    target: LoadedModel
    draft: LoadedModel | None
    config: BenchConfig
    meter: EnergyMeter
    memory: PeakMemory
    judge: Judge | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # what it runs on, for machine.json
    warmed: bool = False  # every variant has run its warm-up generation in this context
    encoded: dict[str, list[int]] = field(default_factory=dict)  # prompt ids by record id

    def encoded_prompt(self, record: PromptRecord) -> list[int]:
        if record.id not in self.encoded:
            self.encoded[record.id] = encode_record(record, self.target.tokenizer, self.config.prompt_format)
        return self.encoded[record.id]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: undefined values are written as null."""
    return None if value is None or not math.isfinite(value) else value


def _measured_generation(context: BenchContext, prompt_ids, variant: Variant, seed, stop):
    """Generate with time, energy and memory measured around decoding only. `prompt_ids` is one
    prompt (then `seed` is an int) or a batch (a list of prompts and one seed each); returns the
    result (or the results), joules, peak memory and the wall time of the whole decode."""
    draft = as_draft(context.draft) if get_method(variant.method).needs_draft else None
    timeout = context.config.sample_timeout_s
    device = context.memory.device
    context.memory.reset()
    context.meter.start()
    generation = mtad.stream(
        context.target.model,
        draft,
        prompt_ids,
        seed=seed,
        stop=stop,
        tokenizer=context.target.tokenizer,
        limits=context.config.limits,
        **variant.params,
    )
    start = time.perf_counter()
    for _ in generation:
        if timeout is not None and time.perf_counter() - start > timeout:
            context.meter.stop()
            raise SampleTimeout(f"generation ran past the {timeout:g} s sample timeout")
    synchronise(device)
    wall = time.perf_counter() - start
    reading = context.meter.stop()
    result = generation.results if isinstance(seed, list) else generation.result
    return result, reading.joules, context.memory.read_mb(), wall


def _stats_fields(stats: mtad.Stats) -> dict[str, Any]:
    return {
        "new_tokens": stats.new_tokens,
        "rounds": stats.rounds,
        "target_calls": stats.target_calls,
        "draft_calls": stats.draft_calls,
        "drafted_tokens": stats.drafted_tokens,
        "accepted_tokens": stats.accepted_tokens,
        "drafted_per_position": list(stats.drafted_per_position),
        "accepted_per_position": list(stats.accepted_per_position),
        "rounds_per_gamma": list(stats.rounds_per_gamma),  # the depth gamma "auto" chose, as a histogram
        "accepted_lengths": list(stats.accepted_lengths),  # [L] = rounds that accepted L draft tokens
        "tree_nodes": stats.tree_nodes,  # draft nodes verified, summed over rounds (tree methods)
        "draft_seconds": stats.draft_seconds,  # a model-free draft's own time, inside wall_time_s
        # Defined once, in mtad.Stats: None (null) where undefined, e.g. ar's acceptance.
        "acceptance_rate": stats.acceptance_rate,
        "block_efficiency": stats.block_efficiency,
        "target_forwards_per_token": _finite(
            metrics.forwards_per_token(stats.target_calls, stats.new_tokens)
        ),
        "draft_forwards_per_token": _finite(metrics.forwards_per_token(stats.draft_calls, stats.new_tokens)),
        "wall_time_s": stats.wall_time_s,
        "tokens_per_s": stats.tokens_per_s,
        "ms_per_token": stats.ms_per_token,
    }


def _sample_head(context: BenchContext, record: PromptRecord, prompt_ids: list[int], variant: Variant,
                 repeat: int) -> dict[str, Any]:  # fmt: skip
    chat = prompt_is_chat(record, context.target.tokenizer, context.config.prompt_format)
    return {
        "prompt_id": record.id,
        "dataset": record.dataset,
        "variant": variant.label,
        "method": variant.method,
        "repeat": repeat,
        "seed": sample_seed(context.config.seed, record.id, repeat),
        "params": dict(variant.params),
        "prompt_tokens": len(prompt_ids),
        "prompt_format": "chat" if chat else "raw",  # what `auto` resolved to for this record
    }


def _scored(context: BenchContext, record: PromptRecord, prompt_ids: list[int], head: dict, result,
            joules: float | None, peak_mb: float) -> dict[str, Any]:  # fmt: skip
    """The finished row: not timed, the target's perplexity pass and the task score."""
    logprobs = target_logprobs(context.target.model, prompt_ids, result.tokens)
    task = score_task(record, result.text or "", judge=context.judge, chat=head["prompt_format"] == "chat")
    return head | {
        "status": "ok",
        "reason": None,
        "text": result.text,
        "finish_reason": result.finish_reason,
        **_stats_fields(result.stats),
        "logprobs": [round(v, 6) for v in logprobs],
        "perplexity": _finite(metrics.perplexity(logprobs)),
        "joules": joules,
        "joules_per_token": _finite(metrics.joules_per_token(joules, result.stats.new_tokens)),
        "peak_memory_mb": round(peak_mb, 1),
        "task": None if task is None else task.record(),
    }


def failed_row(head: dict, exc: Exception) -> dict[str, Any]:
    return head | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}


def run_group(
    context: BenchContext,
    records: Sequence[PromptRecord],
    prompts: Sequence[list[int]],
    variant: Variant,
    repeat: int,
) -> list[dict[str, Any]]:
    """Measured generations of `records`, scored, one row each; never raises (rows "failed").

    With `--batch-size` 1 a group is one record, decoded alone. Otherwise the records decode
    together (`mtad.decoding.batch`): each row keeps its own statistics (its `wall_time_s` and
    `tokens_per_s` are its latency and rate inside the batch) and adds the batch's: `batch_size`,
    `batch_wall_time_s`, `batch_new_tokens` and `batch_tokens_per_s` (every row's tokens over the
    batch's wall time, the throughput). Energy is the batch's, shared out by new tokens.
    """
    heads = [_sample_head(context, r, p, variant, repeat) for r, p in zip(records, prompts, strict=True)]
    alone = context.config.batch_size == 1
    try:
        chat = {head["prompt_format"] for head in heads}
        if len(chat) > 1:
            raise ConfigError("a batch mixes chat and raw prompts; use --prompt-format chat or raw")
        stop = stop_strings(records[0].dataset, chat == {"chat"})
        seeds = [head["seed"] for head in heads]
        given, seed = (prompts[0], seeds[0]) if alone else (list(prompts), seeds)
        results, joules, peak_mb, wall = _measured_generation(context, given, variant, seed, stop)
    except Exception as exc:  # a failing sample is a result, not the end of the run
        return [failed_row(head, exc) for head in heads]
    results = [results] if alone else results
    total = sum(result.stats.new_tokens for result in results)
    batch = {} if alone else {
        "batch_id": records[0].id,  # with the repeat, names the batch (its rows share the numbers below)
        "batch_size": len(records),
        "batch_wall_time_s": wall,
        "batch_new_tokens": total,
        "batch_tokens_per_s": total / wall if wall > 0 else None,
    }  # fmt: skip
    rows = []
    for record, prompt_ids, head, result in zip(records, prompts, heads, results, strict=True):
        share = None if joules is None or not total else joules * result.stats.new_tokens / total
        try:
            rows.append(_scored(context, record, prompt_ids, head, result, share, peak_mb) | batch)
        except Exception as exc:
            rows.append(failed_row(head, exc) | batch)
    return rows


def _warm_up(context: BenchContext, prompt_ids: list[int], variants: Sequence[Variant]) -> None:
    """One short unrecorded generation per variant: first-call allocations and lazy init happen here."""
    for variant in variants:
        params = dict(variant.params) | {
            "max_new_tokens": min(_WARM_UP_TOKENS, variant.params["max_new_tokens"])
        }
        warm = Variant(variant.label, variant.method, params)
        try:
            _measured_generation(context, prompt_ids, warm, seed=0, stop=())
            if context.config.batch_size > 1:
                prompts = [prompt_ids] * context.config.batch_size
                _measured_generation(context, prompts, warm, seed=[0] * len(prompts), stop=())
        except Exception:
            pass  # the measured sample will record the failure with its reason


# ---- a unit, the grain a run is sharded by (`mtad.bench.plan.Unit`) ------------------------------


def unit_rows(context: BenchContext, unit: Unit) -> Iterator[list[dict[str, Any]]]:
    """Run a unit's items in order, yielding each item's rows (one, or a batch's); the first unit a
    context runs warms every variant up first."""
    for group, repeat, variant in unit.items:
        prompts = [context.encoded_prompt(record) for record in group]
        if not context.warmed:
            _warm_up(context, prompts[0], plan_variants(context.config))
            context.warmed = True
        yield run_group(context, group, prompts, variant, repeat)  # a partly written group runs again, whole


# ---- the run -----------------------------------------------------------------------------------


def model_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def open_context(config: BenchConfig, target: LoadedModel, draft: LoadedModel | None) -> BenchContext:
    """The context generations run in, and (`context.machine`) what they run on."""
    device = model_device(target.model)
    machine = describe_machine(device, next(target.model.parameters()).dtype)
    machine["fast_path"] = target.fast_path.as_dict() if target.fast_path is not None else None
    machine["draft_fast_path"] = (describe_draft(draft) or {}).get("fast_path")
    machine["draft"] = describe_draft(draft)
    meter = detect_energy_meter(str(device))
    machine["energy_meter"] = meter.description
    machine["energy_meter_notes"] = "; ".join(getattr(meter, "reasons", ()))
    memory = PeakMemory(device)
    machine["peak_memory"] = memory.kind
    judge = None if config.judge is None else Judge(config.judge)
    return BenchContext(target, draft, config, meter, memory, judge, machine=machine)


def run_bench(
    config: BenchConfig,
    records: Sequence[PromptRecord],
    target: LoadedModel,
    draft: LoadedModel | None,
    out: Path,
    *,
    progress: bool = True,
) -> list[dict]:
    """Run every (record, repeat, variant) not yet in `out/results.jsonl`; returns all this plan's rows."""
    context = open_context(config, target, draft)
    (out / MACHINE_FILE).write_text(json.dumps(context.machine, indent=2) + "\n")
    plan, done = read_plan(config, records, out)
    with results_writer(out, plan, done, progress) as writer:
        for unit in plan.units:
            for rows in unit_rows(context, unit):
                writer.write(rows)
    return plan_rows(plan, out)
