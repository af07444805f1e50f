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

import hashlib
import json
import math
import sys
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import mtad
from mtad import config as mtad_config
from mtad.api import validate_settings
from mtad.bench import metrics
from mtad.bench.datasets import PromptRecord
from mtad.bench.energy import EnergyMeter, detect_energy_meter
from mtad.bench.humaneval import CHAT_PROMPT_VERSION
from mtad.bench.judge import Judge, JudgeSettings
from mtad.bench.machine import PeakMemory, describe_machine
from mtad.bench.rundir import MACHINE_FILE, RESULTS_FILE, load_results
from mtad.bench.scoring import encode_record, prompt_is_chat, score_task, stop_strings
from mtad.errors import ConfigError
from mtad.methods import get_method
from mtad.models import LoadedModel
from mtad.precision import synchronise
from mtad.scoring import target_logprobs

SWEEP_PARAMS = {"gamma": mtad_config.parse_gamma, "beam_width": int, "threshold": float, "reference": str}
# Methods a swept parameter changes; the others run once, at the base setting.
_WARM_UP_TOKENS = 8


class SampleTimeout(Exception):
    pass


@dataclass(frozen=True)
class Sweep:
    param: str
    values: tuple[float | str, ...]

    @classmethod
    def parse(cls, text: str) -> Sweep:
        """`gamma=2,4,6`, `threshold=0.3,0.5,0.7`, `beam_width=2,4` or `reference=best,max,own`."""
        param, sep, values = text.partition("=")
        param = param.strip().replace("-", "_")
        if not sep or param not in SWEEP_PARAMS:
            raise ConfigError(
                f"--sweep must look like gamma=2,4,6; allowed parameters: {', '.join(SWEEP_PARAMS)}"
            )
        try:
            parsed = tuple(SWEEP_PARAMS[param](v.strip()) for v in values.split(",") if v.strip())
        except ValueError as exc:
            raise ConfigError(f"--sweep {param}: bad value ({exc})") from exc
        if len(parsed) < 2 or len(set(parsed)) != len(parsed):
            raise ConfigError(f"--sweep {param} needs at least two distinct values, got {values!r}")
        return cls(param, parsed)

    def affects(self, method: str) -> bool:
        """Whether the method reads the swept setting (`mtad.methods.Method.settings`): sweeping
        gamma over specinfer, which drafts its tree's depth, would rerun identical variants."""
        return self.param in get_method(method).settings


@dataclass(frozen=True)
class Variant:
    """One column of the results: a method with its generate() settings (`params`)."""

    label: str
    method: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides a run's results; `identity()` (all but `limit`) is hashed."""

    dataset: str
    data_path: str | None
    methods: tuple[str, ...]
    # generate() settings shared by every method: gamma, beam_width, threshold, temperature, ...,
    # max_new_tokens, and whatever else the engine takes (tree, reference); not method or seed
    decoding: Mapping[str, Any]
    target: str
    draft: str | None
    device: str | None = None
    dtype: str | None = None  # None: float32 (runs made before dtype auto existed)
    draft_dtype: str | None = None  # None: the target's
    weights: str | None = None  # linear weights' format (`mtad.runtime.fast`); None: dense
    repeats: int = 1
    seed: int = 0
    sweep: Sweep | None = None
    prompt_format: str = "auto"
    sample_timeout_s: float | None = 300.0
    judge: JudgeSettings | None = None  # MT-Bench only; its model is resolved before the run starts
    batch_size: int = 1  # prompts decoded together (`mtad.batch`); 1 = one at a time
    limit: int | None = field(default=None, compare=False)
    # ceilings on gamma, beams and tree nodes: they refuse settings, never change results
    limits: mtad_config.Limits = field(default_factory=mtad_config.Limits, compare=False)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("--methods is empty; name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods repeats a method: {','.join(self.methods)}")
        for method in self.methods:
            get_method(method)  # ConfigError naming the allowed methods
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}", "batch_size")
        if self.sample_timeout_s is not None and self.sample_timeout_s <= 0:
            raise ConfigError(f"--sample-timeout must be > 0 seconds, got {self.sample_timeout_s}")
        if self.judge is not None and self.dataset != "mtbench":
            raise ConfigError(
                f"--judge-url grades MT-Bench answers only; use it with --dataset mtbench, not {self.dataset}"
            )

    def identity(self) -> dict[str, Any]:
        """What decides the results. The order of `methods` does not (samples are keyed by method
        and the order rotates per prompt), so it is sorted: a reordered --methods resumes."""
        data = asdict(self)
        data.pop("limit")
        data.pop("limits")
        if data["draft_dtype"] is None:  # keeps the hash of runs made before --draft-dtype existed
            data.pop("draft_dtype")
        if data["weights"] in (None, "dense"):  # and dense runs the hash they had before packed weights
            data.pop("weights")
        data["methods"] = sorted(data["methods"])
        if data["judge"] is None:  # runs without a judge keep the hash they had before judges existed
            data.pop("judge")
        if data["batch_size"] == 1:  # and runs of one prompt at a time the hash they had before batches
            data.pop("batch_size")
        if self.dataset == "humaneval" and self.prompt_format != "raw":
            # The instruction and the extraction rules decide the scores; raw runs keep their old hash.
            data["humaneval_prompt"] = CHAT_PROMPT_VERSION
        return data

    def config_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def format_sweep_value(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def plan_variants(config: BenchConfig) -> list[Variant]:
    """The method x sweep-value grid, each variant's settings validated before any model loads."""
    variants = []
    for method in config.methods:
        swept = config.sweep is not None and config.sweep.affects(method)
        for value in config.sweep.values if swept else (None,):
            params = {"method": method, **config.decoding}
            label = method
            if value is not None:
                params[config.sweep.param] = value
                label = f"{method} {config.sweep.param}={format_sweep_value(value)}"
            config.limits.check(validate_settings(**params)[0])
            variants.append(Variant(label, method, params))
    return variants


def needs_draft(config: BenchConfig) -> bool:
    return any(get_method(method).needs_draft for method in config.methods)


def sample_seed(base_seed: int, prompt_id: str, repeat: int) -> int:
    """The seed shared by every method on one (prompt, repeat): stable across runs and resumes."""
    return (base_seed * 1_000_003 + zlib.crc32(f"{prompt_id}#{repeat}".encode())) % 2**31


def sample_key(record: Mapping[str, Any]) -> tuple[str, str, int]:
    return (record["prompt_id"], record["variant"], record["repeat"])


def schedule(
    records: Sequence[PromptRecord], variants: Sequence[Variant], repeats: int, batch_size: int = 1
) -> Iterator[tuple[tuple[PromptRecord, ...], int, Variant]]:
    """(records decoded together, repeat, variant) in interleaved order, the variant order rotating
    by one each time; groups hold `batch_size` consecutive records (one each without batching)."""
    turn = 0
    for first in range(0, len(records), batch_size):
        group = tuple(records[first : first + batch_size])
        for repeat in range(repeats):
            shift = turn % len(variants)
            for variant in list(variants[shift:]) + list(variants[:shift]):
                yield group, repeat, variant
            turn += 1


# ---- one generation ----------------------------------------------------------------------------


@dataclass
class BenchContext:
    target: LoadedModel
    draft: LoadedModel | None
    config: BenchConfig
    meter: EnergyMeter
    memory: PeakMemory
    judge: Judge | None = None


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: undefined values are written as null."""
    return None if value is None or not math.isfinite(value) else value


def _measured_generation(context: BenchContext, prompt_ids, variant: Variant, seed, stop):
    """Generate with time, energy and memory measured around decoding only. `prompt_ids` is one
    prompt (then `seed` is an int) or a batch (a list of prompts and one seed each); returns the
    result (or the results), joules, peak memory and the wall time of the whole decode."""
    draft = context.draft.model if context.draft and get_method(variant.method).needs_draft else None
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


def _failed(head: dict, exc: Exception) -> dict[str, Any]:
    return head | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}


def run_sample(
    context: BenchContext, record: PromptRecord, prompt_ids: list[int], variant: Variant, repeat: int
) -> dict[str, Any]:
    """One measured generation, scored; never raises for a failing sample (status "failed")."""
    head = _sample_head(context, record, prompt_ids, variant, repeat)
    try:
        stop = stop_strings(record.dataset, head["prompt_format"] == "chat")
        result, joules, peak_mb, _ = _measured_generation(context, prompt_ids, variant, head["seed"], stop)
        return _scored(context, record, prompt_ids, head, result, joules, peak_mb)
    except Exception as exc:  # a failing sample is a result, not the end of the run
        return _failed(head, exc)


def run_batch(
    context: BenchContext,
    records: Sequence[PromptRecord],
    prompts: Sequence[list[int]],
    variant: Variant,
    repeat: int,
) -> list[dict[str, Any]]:
    """Records decoded together (`mtad.batch`), one row each; never raises (rows "failed").

    Each row keeps its own statistics (its `wall_time_s` and `tokens_per_s` are its latency and
    rate inside the batch) and adds the batch's: `batch_size`, `batch_wall_time_s`,
    `batch_new_tokens` and `batch_tokens_per_s` (every row's tokens over the batch's wall time,
    the throughput). Energy is the batch's, shared out by new tokens.
    """
    heads = [_sample_head(context, r, p, variant, repeat) for r, p in zip(records, prompts, strict=True)]
    try:
        chat = {head["prompt_format"] for head in heads}
        if len(chat) > 1:
            raise ConfigError("a batch mixes chat and raw prompts; use --prompt-format chat or raw")
        stop = stop_strings(records[0].dataset, chat == {"chat"})
        seeds = [head["seed"] for head in heads]
        results, joules, peak_mb, wall = _measured_generation(context, list(prompts), variant, seeds, stop)
    except Exception as exc:
        return [_failed(head, exc) for head in heads]
    total = sum(result.stats.new_tokens for result in results)
    batch = {
        "batch_id": records[0].id,  # with the repeat, names the batch (its rows share the numbers below)
        "batch_size": len(records),
        "batch_wall_time_s": wall,
        "batch_new_tokens": total,
        "batch_tokens_per_s": total / wall if wall > 0 else None,
    }
    rows = []
    for record, prompt_ids, head, result in zip(records, prompts, heads, results, strict=True):
        share = None if joules is None or not total else joules * result.stats.new_tokens / total
        try:
            rows.append(_scored(context, record, prompt_ids, head, result, share, peak_mb) | batch)
        except Exception as exc:
            rows.append(_failed(head, exc) | batch)
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


# ---- the run -----------------------------------------------------------------------------------


def model_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


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
    variants = plan_variants(config)
    device = model_device(target.model)
    machine = describe_machine(device, next(target.model.parameters()).dtype)
    machine["fast_path"] = target.fast_path.as_dict() if target.fast_path is not None else None
    machine["draft_fast_path"] = draft.fast_path.as_dict() if draft and draft.fast_path else None
    meter = detect_energy_meter(str(device))
    machine["energy_meter"] = meter.description
    machine["energy_meter_notes"] = "; ".join(getattr(meter, "reasons", ()))
    memory = PeakMemory(device)
    machine["peak_memory"] = memory.kind
    (out / MACHINE_FILE).write_text(json.dumps(machine, indent=2) + "\n")
    judge = None if config.judge is None else Judge(config.judge)
    context = BenchContext(target, draft, config, meter, memory, judge)

    results_path = out / RESULTS_FILE
    done = {sample_key(r) for r in load_results(results_path)}
    plan = list(schedule(records, variants, config.repeats, config.batch_size))
    todo = [item for item in plan if any((r.id, item[2].label, item[1]) not in done for r in item[0])]
    total = sum(len(group) for group, _, _ in plan)
    finished = sum((r.id, v.label, rep) in done for group, rep, v in plan for r in group)
    if done and todo:
        print(f"mtad bench: resuming, {finished} of {total} generations done", file=sys.stderr)
    encoded: dict[str, list[int]] = {}
    with (
        results_path.open("a", encoding="utf-8") as sink,
        tqdm(total=total, initial=finished, desc="mtad bench", unit="gen", disable=not progress) as bar,
    ):
        for group, repeat, variant in todo:
            for record in group:
                if record.id not in encoded:
                    encoded[record.id] = encode_record(record, target.tokenizer, config.prompt_format)
                    if len(encoded) == 1:
                        _warm_up(context, encoded[record.id], variants)
            prompts = [encoded[record.id] for record in group]
            if config.batch_size == 1:
                rows = [run_sample(context, group[0], prompts[0], variant, repeat)]
            else:  # a partly written group (an interrupted run) is decoded again, whole
                rows = run_batch(context, group, prompts, variant, repeat)
            for row in rows:
                if sample_key(row) in done:
                    continue
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                bar.update()
            sink.flush()
            rate = rows[-1].get("batch_tokens_per_s") or rows[-1].get("tokens_per_s") or 0
            bar.set_postfix_str(f"{variant.label}: {rate:.1f} tok/s", refresh=False)
    keys = {(r.id, v.label, rep) for group, rep, v in plan for r in group}
    return [r for r in load_results(results_path) if sample_key(r) in keys]
