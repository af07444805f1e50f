"""The bench runner's parts: plan, order, seeds, output directory, per-sample records, aggregation."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from mtad.api import DEFAULT_SETTINGS
from mtad.bench import metrics, report, summary
from mtad.bench.datasets import PromptRecord
from mtad.bench.energy import NullMeter
from mtad.bench.humaneval import CHAT_PROMPT_VERSION
from mtad.bench.machine import PeakMemory
from mtad.bench.plan import BenchConfig, Sweep, plan_variants, sample_seed, schedule
from mtad.bench.rundir import load_results, prepare_output_dir
from mtad.bench.runner import BenchContext, run_group
from mtad.bench.scoring import encode_record, prompt_is_chat, stop_strings, uses_chat
from mtad.errors import ConfigError
from mtad.models import LoadedModel
from mtad.models.scoring import target_logprobs

DECODING = {k: v for k, v in DEFAULT_SETTINGS.items() if k not in ("method", "seed")} | {
    "top_k": 10,
    "top_p": 0.9,
    "max_new_tokens": 8,
}


def make_config(**changes) -> BenchConfig:
    settings = {
        "dataset": "prompts",
        "data_path": "/p.jsonl",
        "methods": ("ar", "sd", "mtad"),
        "decoding": DECODING,
        "target": "t",
        "draft": "d",
    }
    return BenchConfig(**(settings | changes))


# ---- plan -------------------------------------------------------------------------------------


def test_sweep_parsing_and_which_methods_it_affects():
    assert Sweep.parse("gamma=2,4,6") == Sweep("gamma", (2, 4, 6))
    assert Sweep.parse("threshold=0.3,0.7").values == (0.3, 0.7)
    for bad in ("gamma", "alpha=1,2", "gamma=2", "gamma=2,2", "gamma=a,b"):
        with pytest.raises(ConfigError):
            Sweep.parse(bad)
    sweep = Sweep("threshold", (0.3, 0.7))
    assert sweep.affects("mtad") and not sweep.affects("sd") and not sweep.affects("ar")
    assert Sweep("gamma", (2, 4)).affects("sd") and not Sweep("gamma", (2, 4)).affects("greedy")
    references = Sweep.parse("reference=best, max,own")
    assert references.values == ("best", "max", "own")
    assert references.affects("mmtad") and not references.affects("mtad") and not references.affects("sd")


def test_reference_sweep_validates_each_value_before_models_load():
    with pytest.raises(ConfigError, match="reference must be best, max or own, got 'worst'"):
        plan_variants(make_config(methods=("ar", "mmtad"), sweep=Sweep("reference", ("best", "worst"))))
    labels = [
        v.label
        for v in plan_variants(make_config(methods=("ar", "mmtad"), sweep=Sweep.parse("reference=best,max")))
    ]
    assert labels == ["ar", "mmtad reference=best", "mmtad reference=max"]


def test_plan_variants_validates_every_setting_before_models_load():
    variants = plan_variants(make_config(sweep=Sweep("threshold", (0.3, 0.7))))
    assert [v.label for v in variants] == ["ar", "sd", "mtad threshold=0.3", "mtad threshold=0.7"]
    assert variants[3].params["threshold"] == 0.7 and variants[2].params["threshold"] == 0.3
    with pytest.raises(ConfigError, match="gamma"):
        plan_variants(make_config(sweep=Sweep("gamma", (0, 2))))
    with pytest.raises(ConfigError, match="unknown method"):
        make_config(methods=("ar", "turbo"))
    with pytest.raises(ConfigError, match="repeats"):
        make_config(methods=("ar", "ar"))


def test_schedule_interleaves_methods_per_prompt_and_rotates_their_order():
    records = [PromptRecord("a", "prompts", prompt="x"), PromptRecord("b", "prompts", prompt="y")]
    variants = plan_variants(make_config())
    order = [(g[0].id, repeat, v.label) for g, repeat, v in schedule(records, variants, repeats=2)]
    assert order[:6] == [
        ("a", 0, "ar"),
        ("a", 0, "sd"),
        ("a", 0, "mtad"),
        ("a", 1, "sd"),
        ("a", 1, "mtad"),
        ("a", 1, "ar"),
    ]
    assert len(order) == 12 and len(set(order)) == 12


def test_seeds_are_shared_per_prompt_and_repeat_and_stable():
    assert sample_seed(0, "a", 0) == sample_seed(0, "a", 0)
    assert (
        len({sample_seed(0, "a", 0), sample_seed(0, "a", 1), sample_seed(0, "b", 0), sample_seed(1, "a", 0)})
        == 4
    )


def test_config_hash_ignores_limit_only():
    assert make_config(limit=2).config_hash() == make_config(limit=5).config_hash()
    assert make_config().config_hash() != make_config(seed=1).config_hash()
    assert make_config().config_hash() != make_config(decoding=DECODING | {"gamma": 3}).config_hash()


# ---- output directory ---------------------------------------------------------------------------


def test_output_dir_accepts_its_own_config_refuses_another_and_overwrite_clears(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="no bench run to resume"):
        prepare_output_dir(out, make_config(), resume=True, overwrite=False)
    prepare_output_dir(out, make_config(), resume=False, overwrite=False)
    (out / "results.jsonl").write_text('{"prompt_id": "a", "variant": "ar", "repeat": 0}\n')
    prepare_output_dir(out, make_config(limit=9), resume=True, overwrite=False)  # same run, longer
    with pytest.raises(ConfigError, match=r"different configuration \(seed: 0 -> 1\)"):
        prepare_output_dir(out, make_config(seed=1), resume=False, overwrite=False)
    prepare_output_dir(out, make_config(seed=1), resume=False, overwrite=True)
    assert not (out / "results.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 1


def test_results_without_config_are_not_adopted(tmp_path):
    (tmp_path / "results.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="without config.json"):
        prepare_output_dir(tmp_path, make_config(), resume=False, overwrite=False)


def test_load_results_drops_a_half_written_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"prompt_id": "a", "variant": "ar", "repeat": 0}\n{"prompt_id": "b", "vari')
    assert [r["prompt_id"] for r in load_results(path)] == ["a"]
    assert path.read_text() == '{"prompt_id": "a", "variant": "ar", "repeat": 0}\n'
    assert load_results(tmp_path / "missing.jsonl") == []


# ---- one sample ---------------------------------------------------------------------------------


def test_prompt_formats(tokenizer):
    code = PromptRecord("HumanEval/0", "humaneval", prompt="w3 w4")
    sql = PromptRecord("spider/0", "spider", prompt="w3 w4")
    chat = PromptRecord("m", "mtbench", messages=({"role": "user", "content": "w5"},))
    assert uses_chat(code, "auto") and not uses_chat(code, "raw") and uses_chat(code, "chat")
    assert not uses_chat(sql, "auto") and uses_chat(chat, "raw")
    assert uses_chat(PromptRecord("p", "prompts", prompt="w3"), "auto")
    with pytest.raises(ConfigError):
        uses_chat(code, "fancy")
    # The tiny tokenizer has no chat template: everything is encoded raw.
    assert not prompt_is_chat(code, tokenizer, "auto") and not prompt_is_chat(code, tokenizer, "chat")
    assert encode_record(code, tokenizer) == [3, 4]
    assert encode_record(chat, tokenizer) == [5]


def test_humaneval_under_auto_is_chat_when_the_target_has_a_chat_template(tokenizer):
    templated = copy.deepcopy(tokenizer)
    # every message's words, then w2 as the assistant's turn marker
    templated.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w2{% endif %}"
    )
    code = PromptRecord("HumanEval/0", "humaneval", prompt="w3 w4")
    assert prompt_is_chat(code, templated, "auto") and not prompt_is_chat(code, templated, "raw")
    assert encode_record(code, templated, "raw") == [3, 4]
    chat_ids = encode_record(code, templated, "auto")
    # the instruction's words are unknown to the tiny vocabulary (id 0); the problem's are kept
    assert chat_ids[-1] == 2 and 3 in chat_ids and 4 in chat_ids and len(chat_ids) > 10
    assert stop_strings("humaneval", chat=True) == () and "\n```" in stop_strings("humaneval")


def test_humaneval_configs_hash_the_chat_prompt_and_old_auto_runs_resume_as_raw(tmp_path):
    auto = make_config(dataset="humaneval", data_path=None, dtype="float32")
    raw = make_config(dataset="humaneval", data_path=None, dtype="float32", prompt_format="raw")
    assert auto.identity()["humaneval_prompt"] == CHAT_PROMPT_VERSION
    assert "humaneval_prompt" not in raw.identity() and "humaneval_prompt" not in make_config().identity()
    # a HumanEval run stored before the chat prompt existed: `auto` then meant raw
    out = tmp_path / "old"
    out.mkdir()
    old = dict(raw.identity()) | {"prompt_format": "auto"}
    stored = {"hash": "0" * 16, "config": json.loads(json.dumps(old, default=list))}
    (out / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"humaneval_prompt.*--prompt-format raw resumes it"):
        prepare_output_dir(out, auto, resume=True, overwrite=False)
    prepare_output_dir(out, raw, resume=True, overwrite=False)  # the same run: continues
    # an old explicit `chat` run had no extraction: it matches neither
    old_chat = {"hash": "0" * 16, "config": stored["config"] | {"prompt_format": "chat"}}
    (out / "config.json").write_text(json.dumps(old_chat))
    for config in (
        raw,
        make_config(dataset="humaneval", data_path=None, dtype="float32", prompt_format="chat"),
    ):
        with pytest.raises(ConfigError, match="different configuration"):
            prepare_output_dir(out, config, resume=True, overwrite=False)


def test_target_logprobs_score_only_the_generated_tokens_at_temperature_1(target):
    prompt, generated = [0, 5, 7], [3, 9, 2]
    logprobs = target_logprobs(target, prompt, generated)
    with torch.no_grad():
        full = torch.log_softmax(target(torch.tensor([prompt + generated])).logits[0].float(), dim=-1)
    expected = [full[len(prompt) - 1 + i, token].item() for i, token in enumerate(generated)]
    assert logprobs == pytest.approx(expected, abs=1e-5)
    assert target_logprobs(target, prompt, []) == []


def make_context(target, draft, tokenizer, **changes) -> BenchContext:
    config = make_config(**changes)
    cpu = torch.device("cpu")
    return BenchContext(
        LoadedModel(target, tokenizer, "t"),
        LoadedModel(draft, tokenizer, "d"),
        config,
        NullMeter(),
        PeakMemory(cpu),
    )


def test_a_sample_records_metrics(target, draft, tokenizer):
    context = make_context(target, draft, tokenizer)
    variant = plan_variants(context.config)[1]  # sd
    record = PromptRecord("a", "prompts", prompt="w3 w5")
    [row] = run_group(context, [record], [[0, 3, 5]], variant, repeat=0)
    assert row["status"] == "ok" and row["method"] == "sd" and row["seed"] == sample_seed(0, "a", 0)
    assert 1 <= row["new_tokens"] <= 8 and len(row["logprobs"]) == row["new_tokens"]
    assert row["perplexity"] == pytest.approx(math.exp(-sum(row["logprobs"]) / row["new_tokens"]), rel=1e-4)
    assert sum(row["drafted_per_position"]) == row["drafted_tokens"] > 0
    assert row["joules"] is None and row["joules_per_token"] is None and row["peak_memory_mb"] > 0
    assert row["task"] is None
    json.dumps(row, allow_nan=False)  # strict JSON: undefined values are null


def test_a_failing_or_timed_out_sample_is_recorded_and_does_not_raise(target, draft, tokenizer):
    context = make_context(target, draft, tokenizer, sample_timeout_s=1e-9)
    variant = plan_variants(context.config)[0]
    record = PromptRecord("a", "prompts", prompt="w3")
    [row] = run_group(context, [record], [[0, 3]], variant, repeat=0)
    assert row["status"] == "failed" and "sample timeout" in row["reason"]
    context = make_context(target, draft, tokenizer)
    too_long = [3] * 300  # past the tiny model's 256 positions
    [row] = run_group(context, [record], [too_long], variant, repeat=0)
    assert row["status"] == "failed" and row["reason"].startswith("ContextLengthError")


# ---- aggregation -------------------------------------------------------------------------------


def row(prompt, variant, repeat, ms, *, drafted=(), accepted=(), correct=None, status="ok", new_tokens=10):
    return {
        "prompt_id": prompt,
        "variant": variant,
        "method": variant,
        "repeat": repeat,
        "params": {"method": variant, "gamma": 2},
        "status": status,
        "new_tokens": new_tokens,
        "target_calls": 5,
        "draft_calls": 2 * len(drafted),
        "drafted_tokens": sum(drafted),
        "accepted_tokens": sum(accepted),
        "drafted_per_position": list(drafted),
        "accepted_per_position": list(accepted),
        "tokens_per_s": 1000 / ms,
        "ms_per_token": ms,
        "wall_time_s": new_tokens * ms / 1000,
        "logprobs": [-1.0] * new_tokens,
        "joules": None,
        "peak_memory_mb": 100.0,
        "task": None if correct is None else {"metric": "pass@1", "correct": correct, "detail": ""},
    }


def test_summary_pairs_speedups_pools_counts_and_counts_failures_as_wrong():
    rows = [
        row("a", "ar", 0, 10.0, correct=False),
        row("b", "ar", 0, 20.0, correct=True),
        row("a", "sd", 0, 5.0, drafted=(5, 4), accepted=(4, 2), correct=True),
        row("b", "sd", 0, 40.0, drafted=(3, 3), accepted=(3, 0), correct=True),
        row("c", "sd", 0, 1.0, status="failed"),
    ]
    ar, sd = summary.summarize(rows, ["ar", "sd"])
    assert ar.speedup.median == 1.0 and math.isnan(ar.acceptance_rate)
    # Paired per prompt: a 10/5 = 2, b 20/40 = 0.5; the failed sample has no speed.
    assert (sd.speedup.median, sd.speedup.q1, sd.speedup.q3) == pytest.approx((1.25, 0.875, 1.625))
    assert sd.speedup.n == 2
    assert sd.acceptance_rate == pytest.approx(9 / 15)
    assert sd.acceptance_per_position == pytest.approx([7 / 8, 2 / 7])
    assert sd.block_efficiency == 2.0 and sd.draft_forwards_per_token == pytest.approx(8 / 20)
    assert sd.perplexity_token_weighted == pytest.approx(math.e)
    assert (sd.samples, sd.failed) == (2, 1)
    assert sd.task_score.estimate == pytest.approx(2 / 3)  # the failed sample counts as wrong
    assert ar.task_score.estimate == 0.5 and ar.task_metric == "pass@1"
    assert sd.joules_per_token is None
    without_baseline = summary.summarize([r for r in rows if r["variant"] == "sd"], ["ar", "sd"])
    assert len(without_baseline) == 1 and without_baseline[0].speedup is None
    assert "n/a (no ar in --methods)" in report.speed_table(without_baseline)


def test_summary_has_pass_at_k_and_paired_differences_vs_ar_and_sd():
    # 3 problems x 2 repeats; ar passes a once, sd passes a twice and b once, mtad passes b twice
    verdicts = {
        "ar": {"a": (True, False), "b": (False, False), "c": (False, False)},
        "sd": {"a": (True, True), "b": (True, False), "c": (False, False)},
        "mtad": {"a": (False, False), "b": (True, True), "c": (False, False)},
    }
    perplexities = {"ar": 2.0, "sd": 3.0, "mtad": 2.5}
    rows = []
    for variant, problems in verdicts.items():
        for prompt, results in problems.items():
            for repeat, correct in enumerate(results):
                rows.append(
                    row(prompt, variant, repeat, 10.0, correct=correct)
                    | {"perplexity": perplexities[variant]}
                )
    ar, sd, mtad = summary.summarize(rows, ["ar", "sd", "mtad"], seed=3)
    assert sd.task_score.estimate == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert set(sd.pass_at_k) == {2}  # k = n = 2; pass@1 is the task score
    assert sd.pass_at_k[2].estimate == pytest.approx(2 / 3) and ar.pass_at_k[2].estimate == pytest.approx(
        1 / 3
    )
    assert [p.baseline for p in ar.paired] == ["sd"] and [p.baseline for p in sd.paired] == ["ar"]
    vs_ar, vs_sd = mtad.paired
    # per problem mtad − ar: a 0 − 0.5, b 1 − 0, c 0; mtad − sd: a −1, b 0.5, c 0
    assert vs_ar.task.interval.estimate == pytest.approx(0.5 / 3) and vs_ar.task.problems == 3
    assert vs_sd.task.interval.estimate == pytest.approx(-0.5 / 3)
    assert vs_ar.perplexity.interval.estimate == pytest.approx(0.5)
    assert vs_sd.perplexity.interval == metrics.ConfidenceInterval(-0.5, -0.5, -0.5, 0.95)
    table = report.paired_table([ar, sd, mtad])
    assert "| mtad | sd | -0.167 [" in table and "| mtad | ar | +0.167 [" in table
    assert "pass@2 [95% CI]" in report.quality_table([ar, sd, mtad])
    csv_row = summary.summary_row(mtad)
    assert (
        csv_row["task_diff_vs_sd"] == pytest.approx(-0.5 / 3, abs=1e-6) and csv_row["pass_at_2"] == 0.333333
    )
    assert summary.summary_row(ar)["task_diff_vs_ar"] == ""  # no comparison with itself
