"""A bench run's output directory: its files, its stored configuration, and resuming it.

The directory keeps `config.json` (the configuration and its hash): a run with another
configuration is refused unless `overwrite`, naming the changed settings; the same configuration
continues where `results.jsonl` stops. `LOCK_FILE` is held by the run writing it (`mtad.locking`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tqdm import tqdm

from mtad.bench.plan import plan_units, sample_key
from mtad.errors import ConfigError

if TYPE_CHECKING:
    from mtad.bench.datasets import PromptRecord
    from mtad.bench.plan import BenchConfig, Plan

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
MACHINE_FILE = "machine.json"
#: Held (flock) by the run writing the directory; see `mtad.locking`.
LOCK_FILE = ".mtad_bench.lock"


def prepare_output_dir(out: Path, config: BenchConfig, *, resume: bool, overwrite: bool) -> None:
    """Create `out`, or check that it holds this configuration; `overwrite` starts it afresh."""
    stored = read_stored_config(out)
    results = out / RESULTS_FILE
    if stored is None and resume:
        raise ConfigError(f"--resume: {out} holds no bench run to resume")
    if stored is None and results.exists() and not overwrite:
        raise ConfigError(
            f"{out} holds {RESULTS_FILE} without {CONFIG_FILE}; pass --overwrite or another --out"
        )
    if stored is not None and not overwrite and not _same_configuration(stored, config):
        changed = _differences(stored.get("config", {}), config.identity())
        hint = ""
        if "humaneval_prompt" in changed and stored.get("config", {}).get("prompt_format") == "auto":
            hint = " (it was run raw: --prompt-format raw resumes it)"
        raise ConfigError(
            f"{out} holds results of a different configuration ({changed}){hint}; "
            "pass --overwrite to replace them, or another --out"
        )
    if overwrite:
        _remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"hash": config.config_hash(), "config": config.identity()}
    (out / CONFIG_FILE).write_text(json.dumps(payload, indent=2, default=list) + "\n")


def read_stored_config(out: Path) -> dict | None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); pass --overwrite to start over") from exc
    return stored if isinstance(stored, dict) else None


def _same_configuration(stored: Mapping[str, Any], config: BenchConfig) -> bool:
    """The stored run is this configuration: same hash, or the same identity once the stored
    methods are sorted too (runs stored before the order stopped counting)."""
    if stored.get("hash") == config.config_hash():
        return True
    old = dict(stored.get("config") or {})
    if isinstance(old.get("methods"), list):
        old["methods"] = sorted(old["methods"])
    if "dtype" in old and old["dtype"] is None:  # the default was float32 before dtype auto
        old["dtype"] = "float32"
    if (
        old.get("dataset") == "humaneval"
        and "humaneval_prompt" not in old
        and old.get("prompt_format") == "auto"
    ):
        old["prompt_format"] = "raw"  # before the chat prompt existed, auto meant raw for HumanEval
    return not _changed_keys(old, _as_stored(config.identity()))


def _as_stored(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))  # tuples -> lists, as config.json holds them


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs, e.g. ("decoding.gamma", 4, 2)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            changes += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return changes
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The changed settings by name, e.g. "decoding.gamma: 4 -> 2" (at most three)."""
    changes = _changed_keys(old, _as_stored(new))
    shown = "; ".join(f"{key}: {was!r} -> {now!r}" for key, was, now in changes[:3])
    more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
    return shown + more if changes else "unknown difference"


def _remove_outputs(out: Path) -> None:
    if not out.is_dir():
        return
    for name in (RESULTS_FILE, CONFIG_FILE, MACHINE_FILE, "summary.csv", "report.md"):
        (out / name).unlink(missing_ok=True)
    for plot in out.glob("*.png"):
        plot.unlink()


def load_results(path: Path) -> list[dict]:
    """The records in results.jsonl; an unparsable line (an interrupted write) is dropped for good."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records, kept = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "prompt_id" in record:
            records.append(record)
            kept.append(line)
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return records


class ResultsWriter:
    """Appends rows to results.jsonl, skipping any already there (no sample is written twice), and
    moves the progress bar. Only the driver of a run writes."""

    def __init__(self, sink: IO[str], done: set, bar: tqdm) -> None:
        self.sink, self.done, self.bar = sink, done, bar

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            if sample_key(row) in self.done:
                continue
            self.sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done.add(sample_key(row))
            self.bar.update()
        self.sink.flush()
        if rows:
            rate = rows[-1].get("batch_tokens_per_s") or rows[-1].get("tokens_per_s") or 0
            self.bar.set_postfix_str(f"{rows[-1]['variant']}: {rate:.1f} tok/s", refresh=False)


@contextlib.contextmanager
def results_writer(out: Path, plan: Plan, done: set, progress: bool) -> Iterator[ResultsWriter]:
    """The run's writer, with a progress bar over the whole plan and the resume notice."""
    if done and plan.units:
        print(f"mtad bench: resuming, {plan.finished} of {plan.total} generations done", file=sys.stderr)
    bar = tqdm(total=plan.total, initial=plan.finished, desc="mtad bench", unit="gen", disable=not progress)
    with (out / RESULTS_FILE).open("a", encoding="utf-8") as sink, bar:
        yield ResultsWriter(sink, done, bar)


def read_plan(config: BenchConfig, records: Sequence[PromptRecord], out: Path) -> tuple[Plan, set]:
    """What is left of the run in `out`, and the sample keys already written there."""
    done = {sample_key(r) for r in load_results(out / RESULTS_FILE)}
    return plan_units(config, records, done), done


def plan_rows(plan: Plan, out: Path) -> list[dict]:
    """All rows of this plan in results.jsonl, in file order."""
    return [r for r in load_results(out / RESULTS_FILE) if sample_key(r) in plan.keys]
