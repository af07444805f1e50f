"""The method registry: one record per method; a method defined outside the package works in the
library, the CLI, the server and the bench (issue 10)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

import mtad
from mtad.bench.plan import Sweep
from mtad.cli import main
from mtad.errors import ConfigError
from test_engine import NO_EOS, PROMPTS

# `mtad.methods` is the function that lists the registry; the module behind it:
registry = importlib.import_module("mtad.decoding.methods")


@pytest.fixture
def my_sd():
    """`sd` re-registered as "my-sd" from outside the package; removed afterwards."""
    method = mtad.register_method(
        dataclasses.replace(mtad.methods()["sd"], name="my-sd", description="sd again")
    )
    yield method
    registry._REGISTRY.pop("my-sd", None)


def test_every_built_in_method_is_one_record():
    records = mtad.methods()
    assert tuple(records)[: len(mtad.METHODS)] == mtad.METHODS
    assert [m for m in mtad.METHODS if records[m].needs_draft] == ["sd", "mtad", "mmtad", "specinfer"]
    assert [m for m in mtad.METHODS if records[m].lossless] == ["ar", "greedy", "sd", "specinfer"]


def test_a_re_registered_sd_gives_the_same_tokens_as_sd(target, draft, my_sd):
    settings = {"gamma": 3, "max_new_tokens": 20, "seed": 4, **NO_EOS}
    mine = mtad.generate(target, draft, PROMPTS[0], method="my-sd", **settings)
    assert mine.tokens == mtad.generate(target, draft, PROMPTS[0], method="sd", **settings).tokens
    assert mine.stats.drafted_tokens > 0


def test_a_new_rule_over_an_existing_proposer(target, draft):
    """A method that accepts every draft token (not lossless: for a test only) is one record."""
    accept_all = registry.Method(
        "accept-all", "keep every draft token", "chain", lambda spec: registry.chain_sample,
        lambda spec: registry.chain_rule(mtad.decoding.acceptance.accept_all), lossless=False,
        settings=frozenset({"gamma"}),
    )  # fmt: skip
    mtad.register_method(accept_all)
    try:
        result = mtad.generate(
            target, draft, PROMPTS[0], method="accept-all", gamma=4, max_new_tokens=10, seed=0
        )
        assert result.stats.acceptance_rate == 1.0
    finally:
        registry._REGISTRY.pop("accept-all")


def test_the_cli_offers_a_registered_method(pair_dirs, capsys, my_sd):
    target, draft = pair_dirs
    argv = ["generate", "--target", target, "--draft", draft, "--method", "my-sd", "--gamma", "2"]
    assert main([*argv, "--max-new-tokens", "5", "--json", "--raw", "w3"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "my-sd"


def test_the_bench_runs_a_registered_method_and_sweeps_only_what_it_reads(pair_dirs, tmp_path, my_sd):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "w3 w5"}) + "\n")
    target, draft = pair_dirs
    out = tmp_path / "run"
    argv = ["bench", "--prompts", str(prompts), "--target", target, "--draft", draft, "--methods",
            "ar,my-sd", "--max-new-tokens", "6", "--gamma", "2", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["method"] for row in rows} == {"ar", "my-sd"} and all(r["status"] == "ok" for r in rows)
    sweep = Sweep.parse("gamma=1,2")
    assert sweep.affects("my-sd") and not sweep.affects("specinfer") and not sweep.affects("ar")


def test_the_server_serves_a_registered_method(my_sd):
    from mtad.serve import BackgroundServer, ServeConfig, create_app
    from serve.conftest import DEFAULTS, MODEL, tiny_pair
    from serve.test_errors import COMPLETIONS, VALID, request

    with BackgroundServer(create_app(*tiny_pair(), ServeConfig(MODEL, DEFAULTS))) as server:
        status, _, body = request(
            server.url, "POST", COMPLETIONS, VALID | {"mtad": {"method": "my-sd", "gamma": 2}}
        )
    assert status == 200 and body["mtad"]["method"] == "my-sd", body


def test_built_in_names_cannot_be_replaced_and_bad_records_are_refused():
    with pytest.raises(ConfigError, match="built-in"):
        mtad.register_method(mtad.methods()["sd"])
    with pytest.raises(ConfigError, match="unknown method shape"):
        dataclasses.replace(mtad.methods()["sd"], name="x", shape="spiral")
    with pytest.raises(ConfigError, match="non-empty word"):
        dataclasses.replace(mtad.methods()["sd"], name="a,b")


def test_plugins_come_from_the_entry_point_group(monkeypatch):
    plugin = dataclasses.replace(mtad.methods()["ar"], name="plugged-ar")

    class EntryPoint:
        def load(self):
            return lambda: [plugin]

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(
        registry.metadata, "entry_points", lambda group: [EntryPoint()] if group == "mtad.methods" else []
    )
    try:
        assert mtad.methods()["plugged-ar"] is plugin
    finally:
        registry._REGISTRY.pop("plugged-ar", None)


def test_readme_method_table_is_the_registry():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert importlib.import_module("mtad.decoding.methods").markdown_table() in readme


@pytest.fixture
def my_greedy():
    """`greedy` re-registered as "my-greedy": a target-only method that fixes the temperature."""
    method = mtad.register_method(dataclasses.replace(mtad.methods()["greedy"], name="my-greedy"))
    yield method
    registry._REGISTRY.pop("my-greedy", None)


def test_a_method_may_fix_sampling_settings_and_greedy_is_such_a_record(target, my_greedy):
    assert mtad.methods()["greedy"].fixed_sampling == (("temperature", 0.0),)
    settings = {"max_new_tokens": 12, "temperature": 1.5, "seed": 3, **NO_EOS}
    greedy = mtad.generate(target, None, PROMPTS[0], method="greedy", **settings)
    assert mtad.generate(target, None, PROMPTS[0], method="my-greedy", **settings).tokens == greedy.tokens
    ar_at_zero = mtad.generate(target, None, PROMPTS[0], method="ar", **(settings | {"temperature": 0}))
    assert greedy.tokens == ar_at_zero.tokens


def test_the_missing_draft_error_lists_the_registrys_target_only_methods(target, my_greedy):
    with pytest.raises(ConfigError, match="or use ar, greedy, mtjd, my-greedy"):
        mtad.generate(target, None, PROMPTS[0], method="sd", max_new_tokens=2)
