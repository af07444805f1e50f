"""What a bench run is: its configuration (`BenchConfig`, hashed into the output directory), the
variants it compares (methods x a swept setting), and the interleaved order it runs them in.
Nothing here loads a model; `mtad.bench.runner` runs the plan."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mtad.api import validate_settings
from mtad.bench.datasets import PromptRecord
from mtad.bench.humaneval import CHAT_PROMPT_VERSION
from mtad.bench.judge import JudgeSettings
from mtad.config import SETTINGS
from mtad.decoding.methods import get_method
from mtad.decoding.speculation import Limits
from mtad.errors import ConfigError

#: Settings `--sweep` takes, with their parsers (those declared sweepable).
SWEEP_PARAMS = {name: setting.parse for name, setting in SETTINGS.items() if setting.sweepable}


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
        """Whether the method reads the swept setting (`mtad.decoding.methods.Method.settings`): sweeping
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
    batch_size: int = 1  # prompts decoded together (`mtad.decoding.batch`); 1 = one at a time
    limit: int | None = field(default=None, compare=False)
    # ceilings on gamma, beams and tree nodes: they refuse settings, never change results
    limits: Limits = field(default_factory=Limits, compare=False)

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


Item = tuple[tuple[PromptRecord, ...], int, Variant]  # (records decoded together, repeat, variant)


@dataclass(frozen=True)
class Unit:
    """The items of one group of records (one prompt without batching) still to run, in plan order:
    every variant and repeat of that prompt runs back to back on one worker, so speed ratios are
    measured on one machine. `index` orders units as the plan does."""

    index: int
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Plan:
    units: list[Unit]  # the units with anything left to run
    total: int  # generations in the plan
    finished: int  # generations already in results.jsonl
    keys: set[tuple[str, str, int]]  # the plan's sample keys


def plan_units(config: BenchConfig, records: Sequence[PromptRecord], done: set) -> Plan:
    """The run's units not yet finished; `done`: the sample keys results.jsonl holds."""
    variants = plan_variants(config)
    plan = list(schedule(records, variants, config.repeats, config.batch_size))
    units: dict[tuple[str, ...], list[Item]] = {}
    for item in plan:
        if any((r.id, item[2].label, item[1]) not in done for r in item[0]):
            units.setdefault(tuple(r.id for r in item[0]), []).append(item)
    keys = {(r.id, v.label, rep) for group, rep, v in plan for r in group}
    return Plan(
        units=[Unit(index, tuple(items)) for index, items in enumerate(units.values())],
        total=len(keys),
        finished=len(keys & done),
        keys=keys,
    )
