"""`mtad generate` end to end on tiny models saved to disk, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mtad
from mtad.cli import main


@pytest.mark.parametrize("method", mtad.METHODS)
def test_generate_json_for_every_method(pair_dirs, capsys, method):
    target, draft = pair_dirs
    args = ["generate", "--target", target, "--draft", draft, "--method", method, "--max-new-tokens", "12"]
    assert main([*args, "--seed", "3", "--json", "--raw", "w3 w5 w7"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == method
    assert record["seed"] == 3
    assert 1 <= record["stats"]["new_tokens"] <= 12
    for key in ("acceptance_rate", "block_efficiency", "target_calls", "draft_calls", "tokens_per_s"):
        assert key in record["stats"]
    assert record["text"] == tokenizer_decode(target, record["tokens"])


def tokenizer_decode(path: str, tokens: list[int]) -> str:
    return mtad.load_model(path).tokenizer.decode(tokens, skip_special_tokens=True)


def test_generate_text_output_matches_json(pair_dirs, capsys):
    target, draft = pair_dirs
    base = [
        "generate",
        "--target",
        target,
        "--draft",
        draft,
        "--seed",
        "9",
        "--max-new-tokens",
        "10",
        "--raw",
    ]
    assert main([*base, "w4 w4"]) == 0
    text_out = capsys.readouterr()
    assert main([*base, "--json", "w4 w4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert text_out.out.rstrip("\n") == record["text"]
    assert "acceptance" in text_out.err


def test_console_script_runs(pair_dirs):
    target, draft = pair_dirs
    done = subprocess.run(
        [sys.executable, "-m", "mtad", "generate", "--target", target, "--draft", draft, "--method", "sd",
         "--max-new-tokens", "5", "--json", "--raw", "w2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stats"]["new_tokens"] <= 5


def test_demo_prints_side_by_side_table(pair_dirs, capsys):
    target, draft = pair_dirs
    code = main(["demo", "--target", target, "--draft", draft, "--prompts", "2", "--max-new-tokens", "8",
                 "--fast", "on"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for needle in ("tokens/s", "speed-up vs ar", "acceptance", "perplexity", "ar: sample output", "mtad"):
        assert needle in out
    assert "float32, fp16 weights" in out  # the title says how the target ran


def test_demo_without_draft_shows_target_only_methods_and_says_why(pair_dirs, capsys):
    target, _ = pair_dirs
    assert main(["demo", "--target", target, "--prompts", "1", "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert "no draft model" in captured.err and "sd, mtad cannot run" in captured.err
    for method in ("ar", "greedy", "mtjd"):
        assert f"{method}: sample output" in captured.out


def test_demo_refuses_explicit_drafted_methods_without_draft(pair_dirs, capsys):
    target, _ = pair_dirs
    assert main(["demo", "--target", target, "--prompts", "1", "--methods", "ar,sd"]) == 2
    assert "no draft model for sd" in capsys.readouterr().err
