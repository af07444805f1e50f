"""`mtad serve` as users start it: a subprocess on saved tiny models, loopback by default."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from conftest import tiny_llama, tiny_tokenizer
from mtad.cli import main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            return json.load(urllib.request.urlopen(f"{url}/health", timeout=2))
        except OSError:
            time.sleep(0.2)
    raise AssertionError("mtad serve did not come up")


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("pair")
    for name, model in (("target", tiny_llama(seed=0)), ("draft", tiny_llama(seed=1, layers=1))):
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
    return str(root / "target"), str(root / "draft")


def test_mtad_serve_listens_on_loopback_and_answers(saved_pair):
    target, draft = saved_pair
    port = free_port()
    command = [sys.executable, "-c", "import sys; from mtad.cli import main; sys.exit(main())"]
    args = ["serve", "--target", target, "--draft", draft, "--port", str(port), "--max-new-tokens", "6"]
    process = subprocess.Popen(command + args + ["--fast", "on"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_for_health(url, process)
        assert health["model"] == target
        assert health["fast_path"]["weights"] == health["draft_fast_path"]["weights"] == "fp16"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        response = client.completions.create(model=target, prompt="w5 w7", seed=4)
        assert 1 <= response.usage.completion_tokens <= 6  # the server's default max_tokens
        assert response.mtad["method"] == "mtad"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert f"Uvicorn running on http://127.0.0.1:{port}" in stderr
    assert process.returncode == 0


def test_mtad_serve_refuses_bad_flags_before_loading(capsys):
    assert main(["serve", "--target", "/nonexistent", "--gamma", "0"]) == 2
    assert main(["serve", "--target", "/nonexistent", "--max-queue", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "gamma" in errors[0] and "--max-queue" in errors[1]
