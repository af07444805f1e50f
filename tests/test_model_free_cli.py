"""`--draft recycle|suffix` on the command line: no draft model is loaded, the run reports its
draft, and a store option that does not fit is a one-line error with exit code 2."""

from __future__ import annotations

import json

import pytest

from mtad.cli import main


@pytest.mark.parametrize(("kind", "store"), [("recycle", []), ("suffix", ["--suffix-store", "500"]),
                                             ("recycle", ["--recycle-store", "100"])])  # fmt: skip
def test_generate_with_a_model_free_draft(pair_dirs, capsys, kind, store):
    target, _ = pair_dirs
    args = [
        "generate",
        "--target",
        target,
        "--draft",
        kind,
        *store,
        "--method",
        "specinfer",
        "--tree",
        "auto",
    ]
    assert main([*args, "--max-new-tokens", "12", "--seed", "2", "--json", "--raw", "w3 w5 w3 w5 w3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["draft"] == kind and record["draft_kind"]["kind"] == kind
    assert record["draft_dtype"] is None and record["stats"]["draft_calls"] == 0
    assert record["settings"]["tree"] == "auto"
    assert sum(record["stats"]["accepted_lengths"]) == record["stats"]["rounds"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--draft", "suffix", "--recycle-store", "10"], "--recycle-store 10 is for --draft recycle, got"),
        (["--draft", "recycle", "--recycle-store", "0"], "recycle max_entries must be a positive integer"),
        (["--draft", "suffix", "--suffix-store", "-3"], "suffix store must be a positive integer, got -3"),
    ],
)  # fmt: skip
def test_bad_draft_options_exit_2_with_one_line(pair_dirs, capsys, extra, message):
    target, _ = pair_dirs
    assert main(["generate", "--target", target, "--method", "sd", *extra, "w3 w5"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_hybrid_of_a_kind_and_a_draft_model(pair_dirs, capsys):
    target, draft = pair_dirs
    common = ["generate", "--target", target, "--max-new-tokens", "12", "--json", "--raw"]
    args = [*common, "--draft", f"recycle+{draft}", "--method", "sd", "--temperature", "0"]
    assert main([*args, "w3 w5 w3 w5 w3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["draft"] == "recycle+model" and record["stats"]["draft_calls"] > 0
    assert main([*common, "--method", "greedy", "w3 w5 w3 w5 w3"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == record["tokens"]


def test_a_bench_refuses_a_shared_store(pair_dirs, capsys, tmp_path):
    target, _ = pair_dirs
    shared = ["--draft", "recycle", "--recycle-store", "10"]
    run = ["--methods", "sd", "--dataset", "mtbench", "--limit", "1", "--out", str(tmp_path / "run")]
    code = main(["bench", "--target", target, *shared, *run])
    assert code == 2
    assert "a bench keeps every sample independent" in capsys.readouterr().err
