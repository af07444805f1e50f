"""`mtad bench --dataset mtbench --judge-url`: end to end against a stub OpenAI-compatible judge."""

from __future__ import annotations

import csv
import json
import shlex
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mtad.bench.datasets import load_mtbench
from mtad.bench.judge import JudgeSettings
from mtad.cli import main

from .test_cli_bench import read_results

# (status, content type, body) for one POST /v1/chat/completions request body
Responder = Callable[[dict], tuple[int, str, bytes]]


def completion(content: str) -> tuple[int, str, bytes]:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-judge",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return 200, "application/json", json.dumps(body).encode()


@contextmanager
def stub_judge(respond: Responder) -> Iterator[tuple[str, list[dict]]]:
    """A judge on 127.0.0.1 (any free port); yields its base URL and the chat requests it got."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's naming)
            if self.path == "/v1/models":
                models = {"object": "list", "data": [{"id": "stub-judge", "object": "model", "created": 0}]}
                self._send(200, "application/json", json.dumps(models).encode())
            else:
                self._send(404, "text/plain", b"not found")

        def do_POST(self):  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(request)
            if self.path != "/v1/chat/completions":
                self._send(404, "text/plain", b"not found")
                return
            self._send(*respond(request))

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("retry-after-ms", "1")  # the client's retries stay fast
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def mtbench_args(pair_dirs, out, *extra):
    target, draft = pair_dirs
    return [
        "bench",
        "--dataset",
        "mtbench",
        "--limit",
        "2",
        "--methods",
        "ar,sd",
        "--target",
        target,
        "--draft",
        draft,
        "--max-new-tokens",
        "6",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def test_judged_run_records_scores_and_reports_them(pair_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("MTAD_TEST_JUDGE_KEY", "sk-stub")
    out = tmp_path / "run"
    with stub_judge(lambda request: completion("Short but on topic.\nRating: [[7]]")) as (url, requests):
        args = mtbench_args(pair_dirs, out, "--judge-url", url, "--judge-api-key-env", "MTAD_TEST_JUDGE_KEY")
        assert main(args) == 0
    rows = read_results(out)
    assert len(rows) == 4
    for row in rows:
        task = row["task"]
        assert row["status"] == "ok" and task["score"] == 7.0 and task["correct"] is None
        assert task["judge_model"] == "stub-judge"  # the first model the endpoint lists
        assert task["judge_reply"].endswith("Rating: [[7]]")

    # One judge request per sample, at temperature 0, holding the question and that sample's answer.
    questions = [r.messages[0]["content"] for r in load_mtbench()[:2]]
    assert len(requests) == 4
    for request, row in zip(requests, rows, strict=True):
        assert request["temperature"] == 0 and request["model"] == "stub-judge"
        prompt = request["messages"][-1]["content"]
        assert questions[int(row["prompt_id"] == "mtbench/82")] in prompt and row["text"] in prompt

    summary = {r["variant"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert float(summary["sd"]["mtbench_judge_score_1to10"]) == 7.0
    assert summary["ar"]["mtbench_judge_missing"] == "0" and summary["ar"]["task_score"] == ""
    report = (out / "report.md").read_text()
    assert "MT-Bench judge score (1-10) [95% CI]" in report and "| 7.00 [7.00–7.00] | 0 |" in report
    assert "graded 1–10 by `stub-judge`" in report and "--judge-model stub-judge" in report
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["judge"]["model"] == "stub-judge" and "sk-stub" not in (out / "config.json").read_text()


def test_judge_failures_leave_missing_judgements_and_the_run_finishes(pair_dirs, tmp_path):
    first_question = load_mtbench()[0].messages[0]["content"]

    def respond(request):  # the first question gets HTTP 500, the second a body that is no JSON
        if first_question in request["messages"][-1]["content"]:
            return 500, "application/json", b'{"error": {"message": "judge overloaded"}}'
        return 200, "text/plain", b"<html>garbage</html>"

    out = tmp_path / "run"
    with stub_judge(respond) as (url, requests):
        assert main(mtbench_args(pair_dirs, out, "--judge-url", url, "--judge-model", "j")) == 0
    rows = read_results(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(r["task"]["score"] is None and r["task"]["judge_model"] == "j" for r in rows)
    reasons = {r["prompt_id"]: r["task"]["detail"] for r in rows}
    assert "InternalServerError" in reasons["mtbench/81"] and "judge overloaded" in reasons["mtbench/81"]
    assert "not a chat completion" in reasons["mtbench/82"]
    assert len(requests) == 2 * 3 + 2  # a 500 is tried 3 times, a 200 once

    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["mtbench_judge_missing"] for r in summary] == ["2", "2"]
    assert all(r["mtbench_judge_score_1to10"] == "" for r in summary)
    report = (out / "report.md").read_text()
    assert "every judgement missing" in report and "## Missing judgements" in report


def test_without_a_judge_mtbench_is_scored_by_perplexity_only(pair_dirs, tmp_path):
    out = tmp_path / "run"
    assert main(mtbench_args(pair_dirs, out, "--methods", "ar", "--limit", "1")) == 0
    assert read_results(out)[0]["task"] is None
    report = (out / "report.md").read_text()
    assert "No judge was given (`--judge-url`)" in report and "## Missing judgements" not in report
    assert "judge" not in json.loads((out / "config.json").read_text())["config"]


def test_a_resumed_run_cannot_change_its_judge(pair_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    with stub_judge(lambda request: completion("Rating: [[5]]")) as (url, _):
        args = mtbench_args(pair_dirs, out, "--methods", "ar", "--limit", "1", "--judge-url", url)
        assert main([*args, "--judge-model", "judge-a"]) == 0
        capsys.readouterr()
        assert main([*args, "--judge-model", "judge-b", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "judge" in err


def test_bad_judge_input_exits_2_with_one_line(pair_dirs, tmp_path, capsys):
    target, draft = pair_dirs
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "w3"}]}) + "\n")
    url = "http://127.0.0.1:9/v1"
    cases = {
        "another dataset": (["--dataset", "humaneval", "--judge-url", url], "MT-Bench answers only"),
        "a prompts file with messages": (["--prompts", str(prompts), "--judge-url", url], "MT-Bench"),
        "not http": (["--dataset", "mtbench", "--judge-url", "ftp://127.0.0.1/v1"], "http(s) URL"),
        "no scheme": (["--dataset", "mtbench", "--judge-url", "127.0.0.1:8000/v1"], "http(s) URL"),
        "timeout 0": (["--dataset", "mtbench", "--judge-url", url, "--judge-timeout", "0"], "> 0"),
        "timeout < 0": (["--dataset", "mtbench", "--judge-url", url, "--judge-timeout", "-5"], "> 0"),
        "judge flags without a url": (["--dataset", "mtbench", "--judge-model", "m"], "needs --judge-url"),
    }
    for name, (extra, message) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        code = main(["bench", "--target", target, "--draft", draft, "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("mtad bench: error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert not out.exists(), name


def test_an_unreachable_judge_without_a_model_name_is_refused_before_models_load(pair_dirs, tmp_path, capsys):
    def fail(request):
        return 500, "application/json", b"{}"

    with stub_judge(fail) as (url, _):
        unlisted = url.replace("/v1", "/nothing-here")
        assert main(mtbench_args(pair_dirs, tmp_path / "o", "--judge-url", unlisted)) == 2
    err = capsys.readouterr().err
    assert "cannot list the models of the judge" in err and err.count("\n") == 1


def test_the_reported_command_reproduces_the_judge_settings(pair_dirs, tmp_path):
    from mtad.cli import build_parser
    from mtad.cli.bench import build_config, command_line

    judge = ["--judge-url", "https://judge.example/v1", "--judge-model", "m", "--judge-timeout", "30"]
    config = build_config(build_parser().parse_args(mtbench_args(pair_dirs, tmp_path / "o", *judge)))
    assert config.judge == JudgeSettings("https://judge.example/v1", "m", "OPENAI_API_KEY", 30.0)
    again = build_config(build_parser().parse_args(shlex.split(command_line(config, tmp_path / "o"))[1:]))
    assert again == config and again.config_hash() == config.config_hash()
