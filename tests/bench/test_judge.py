"""The MT-Bench judge: rating parser, grading with a scripted client, settings, and aggregation."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest

from mtad.bench import report, summary
from mtad.bench.datasets import PromptRecord
from mtad.bench.judge import (
    METRIC,
    REPLY_CHARS,
    Judge,
    JudgeError,
    JudgeSettings,
    parse_rating,
    resolve_model,
)
from mtad.bench.scoring import score_task
from mtad.errors import ConfigError

from .test_runner import make_config

# ---- the rating parser ----------------------------------------------------------------------


def test_parse_rating_reads_the_last_rating_in_range():
    assert parse_rating("[[7]]") == 7.0
    assert parse_rating("Clear and correct.\nRating: [[8.5]]") == 8.5
    assert parse_rating("I first thought [[3]], but on reflection: Rating: [[ 9 ]]") == 9.0
    assert parse_rating("Rating: [[1]]") == 1.0 and parse_rating("[[10]]") == 10.0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("A fine answer. Rating: [[11]]", "outside 1..10"),
        ("Rating: [[0]]", "outside 1..10"),
        ("Rating: [[10.5]]", "outside 1..10"),
        ("[[7]] at first, then Rating: [[12]]", "outside 1..10"),  # the last one decides
        ("A fine answer, I would say 7 out of 10.", "no \\[\\[N\\]\\] rating"),
        ("Rating: [7]", "no \\[\\[N\\]\\] rating"),
        ("Rating: [[-3]]", "no \\[\\[N\\]\\] rating"),
        ("Rating: [[seven]]", "no \\[\\[N\\]\\] rating"),
        ("", "no \\[\\[N\\]\\] rating"),
    ],
)
def test_parse_rating_rejects_missing_and_out_of_range_ratings(reply, reason):
    with pytest.raises(JudgeError, match=reason):
        parse_rating(reply)


# ---- grading with a scripted client ---------------------------------------------------------


class ScriptedClient:
    """Stands in for openai.OpenAI: `reply` is returned (or raised) for every chat request."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.models = SimpleNamespace(list=lambda: [SimpleNamespace(id="judge-a"), SimpleNamespace(id="b")])

    def create(self, **request):
        self.requests.append(request)
        if isinstance(self.reply, Exception):
            raise self.reply
        message = SimpleNamespace(content=self.reply)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


SETTINGS = JudgeSettings("http://127.0.0.1:9/v1", model="judge-a")


def test_grade_sends_question_and_answer_at_temperature_0_and_keeps_the_reply():
    client = ScriptedClient("Correct and concise. " * 200 + "Rating: [[8]]")
    judgement = Judge(SETTINGS, client).grade("What is 2 + 2?", "It is 4.")
    assert (judgement.score, judgement.model, judgement.reason) == (8.0, "judge-a", "")
    assert len(judgement.reply) == REPLY_CHARS and judgement.reply.startswith("Correct")
    (request,) = client.requests
    assert request["model"] == "judge-a" and request["temperature"] == 0
    system, user = request["messages"]
    assert system["role"] == "system" and "[[N]]" in system["content"]
    assert "What is 2 + 2?" in user["content"] and "It is 4." in user["content"]


def test_a_judge_failure_is_a_missing_judgement_with_a_one_line_reason():
    cases = {
        "no rating": ("Good answer,\nbut I will not rate it.", "no [[N]] rating"),
        "out of range": ("Rating: [[42]]", "outside 1..10"),
        "empty": ("", "empty"),
        "error": (TimeoutError("timed out\nafter 120 s"), "TimeoutError: timed out after 120 s"),
    }
    for name, (reply, reason) in cases.items():
        judgement = Judge(SETTINGS, ScriptedClient(reply)).grade("q", "a")
        assert judgement.score is None, name
        assert reason in judgement.reason and "\n" not in judgement.reason, name
    unparsable = Judge(SETTINGS, ScriptedClient("Rating: [[42]]")).grade("q", "a")
    assert unparsable.reply == "Rating: [[42]]"  # kept so the reason can be checked


def test_score_task_grades_mtbench_only_when_a_judge_is_given():
    record = PromptRecord("mtbench/81", "mtbench", messages=({"role": "user", "content": "Write a poem."},))
    assert score_task(record, "Roses.") is None
    outcome = score_task(record, "Roses.", judge=Judge(SETTINGS, ScriptedClient("Rating: [[6.5]]")))
    assert outcome.record() == {
        "metric": METRIC,
        "score": 6.5,
        "detail": "judged",
        "correct": None,
        "judge_model": "judge-a",
        "judge_reply": "Rating: [[6.5]]",
    }
    missing = score_task(record, "Roses.", judge=Judge(SETTINGS, ScriptedClient(ValueError("bad"))))
    assert missing.score is None and missing.detail == "ValueError: bad"


# ---- settings -------------------------------------------------------------------------------


def test_settings_are_validated_and_the_key_comes_from_the_named_variable(monkeypatch):
    for url in ("ftp://host/v1", "127.0.0.1:8000/v1", "http://", "localhost"):
        with pytest.raises(ConfigError, match="http\\(s\\) URL"):
            JudgeSettings(url)
    for timeout in (0, -1.0, math.nan):
        with pytest.raises(ConfigError, match="judge-timeout"):
            JudgeSettings("https://example.org/v1", timeout_s=timeout)
    settings = JudgeSettings("https://example.org/v1", api_key_env="MTAD_TEST_JUDGE_KEY")
    monkeypatch.delenv("MTAD_TEST_JUDGE_KEY", raising=False)
    assert settings.api_key() == "none"
    monkeypatch.setenv("MTAD_TEST_JUDGE_KEY", "sk-test")
    assert settings.api_key() == "sk-test"


def test_resolve_model_takes_the_first_listed_model_or_explains_why_not():
    unnamed = JudgeSettings("http://127.0.0.1:9/v1")
    assert resolve_model(unnamed, ScriptedClient("")).model == "judge-a"
    assert resolve_model(SETTINGS) is SETTINGS
    with pytest.raises(ConfigError, match="not resolved"):
        Judge(unnamed, ScriptedClient(""))

    def refuse():
        raise ConnectionError("refused")

    broken = ScriptedClient("")
    broken.models = SimpleNamespace(list=refuse)
    with pytest.raises(ConfigError, match="cannot list the models.*pass --judge-model"):
        resolve_model(unnamed, broken)


# ---- aggregation ----------------------------------------------------------------------------


def judged_row(prompt, variant, repeat, score, status="ok"):
    task = {"metric": METRIC, "score": score, "detail": "judged" if score else "HTTP 500", "correct": None}
    return {
        "prompt_id": prompt,
        "variant": variant,
        "method": variant,
        "repeat": repeat,
        "params": {"method": variant},
        "status": status,
        "reason": None if status == "ok" else "boom",
        "new_tokens": 4,
        "target_calls": 4,
        "draft_calls": 0,
        "drafted_tokens": 0,
        "accepted_tokens": 0,
        "drafted_per_position": [],
        "accepted_per_position": [],
        "tokens_per_s": 100.0,
        "ms_per_token": 10.0,
        "logprobs": [-1.0] * 4,
        "joules": None,
        "peak_memory_mb": 1.0,
        "task": task if status == "ok" else None,
    }


def test_judge_scores_average_per_prompt_then_over_prompts_and_count_missing_judgements():
    rows = [
        judged_row("a", "ar", 0, 8.0),
        judged_row("a", "ar", 1, 6.0),  # prompt a: mean 7 over its repeats
        judged_row("b", "ar", 0, 4.0),
        judged_row("b", "ar", 1, None),  # missing: left out of b's mean, counted
        judged_row("c", "ar", 0, None, status="failed"),  # no answer: counted as failed only
    ]
    (ar,) = summary.summarize(rows, ["ar"], seed=3)
    assert ar.task_metric == METRIC and ar.judge_missing == 1 and ar.failed == 1
    assert ar.task_score.estimate == pytest.approx(5.5)  # mean of 7 and 4
    assert 4.0 <= ar.task_score.low <= 5.5 <= ar.task_score.high <= 7.0
    assert summary.summarize(rows, ["ar"], seed=3)[0].task_score == ar.task_score  # seeded
    csv_row = summary.summary_row(ar)
    assert csv_row["mtbench_judge_score_1to10"] == 5.5 and csv_row["mtbench_judge_missing"] == 1
    assert csv_row["task_score"] == "" and csv_row["task_metric"] == ""
    table = report.quality_table([ar])
    assert "MT-Bench judge score (1-10) [95% CI]" in table and "missing judgements" in table
    assert "| 5.50 [" in table

    every_judgement_missing = [judged_row("a", "ar", 0, None)]
    (none,) = summary.summarize(every_judgement_missing, ["ar"])
    assert none.task_score is None and none.judge_missing == 1
    assert "every judgement missing" in report.quality_table([none])


def test_judge_settings_are_hashed_and_runs_without_a_judge_keep_their_hash():
    plain = make_config(dataset="mtbench", data_path=None)
    judged = make_config(dataset="mtbench", data_path=None, judge=SETTINGS)
    other_judge = make_config(dataset="mtbench", data_path=None, judge=replace(SETTINGS, model="judge-b"))
    assert len({plain.config_hash(), judged.config_hash(), other_judge.config_hash()}) == 3
    assert "judge" not in plain.identity()  # the identity of runs made before judges existed
    with pytest.raises(ConfigError, match="MT-Bench answers only"):
        make_config(judge=SETTINGS)  # a prompts file
