"""Settings that size a round's tensors are bounded before any work; misuse gets one clear line.

Issue 15: a specinfer tree of (1000, 1000), 20,000 beams or gamma 2000 took the server's memory
or minutes per block. Each is now a `ConfigError` naming the setting and its limit, raised
before the first forward pass.
"""

from __future__ import annotations

import pytest
import torch

import mtad
from mtad.cli import main
from mtad.decoding.speculation import Limits, SpeculationConfig
from mtad.decoding.stopping import Stopper
from mtad.errors import ConfigError

PROMPT = [0, 5, 7]

OVER_THE_LIMITS = [
    ({"method": "specinfer", "tree": [1000, 1000]}, "tree", "max_tree_nodes"),
    ({"method": "specinfer", "tree": [1000] * 10_000}, "tree", "max_gamma"),
    ({"method": "specinfer", "tree": [2] * 9}, "tree", "max_tree_nodes"),  # 1022 nodes, depth 9
    ({"method": "mtad", "beam_width": 20_000}, "beam_width", "max_beam_width"),
    ({"method": "mtjd", "beam_width": 33}, "beam_width", "max_beam_width"),
    ({"method": "mmtad", "gamma": 16, "beam_width": 32}, "beam_width", "max_tree_nodes"),
    ({"method": "sd", "gamma": 2000}, "gamma", "max_gamma"),
    ({"method": "mtad", "gamma": 33}, "gamma", "max_gamma"),
]


@pytest.mark.parametrize(("settings", "setting", "limit"), OVER_THE_LIMITS)
def test_oversized_settings_are_refused_before_any_forward_pass(target, draft, settings, setting, limit):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in (target, draft)]
    try:
        with pytest.raises(ConfigError) as error:
            mtad.generate(target, draft, PROMPT, max_new_tokens=4, **settings)
    finally:
        for hook in hooks:
            hook.remove()
    assert error.value.setting == setting
    message = str(error.value)
    assert limit in message and "\n" not in message and len(message) < 200
    assert calls == []


def test_settings_within_the_limits_decode(target, draft):
    for settings in (
        {"method": "specinfer", "tree": [4, 2, 2]},
        {"method": "mmtad", "gamma": 8, "beam_width": 32},
    ):
        assert len(mtad.generate(target, draft, PROMPT, max_new_tokens=4, seed=0, **settings).tokens) == 4


def test_an_operator_can_raise_or_lower_the_limits(target, draft):
    big_tree = {"method": "specinfer", "tree": [20, 20], "max_new_tokens": 3, "seed": 0}
    with pytest.raises(ConfigError, match="max_tree_nodes"):
        mtad.generate(target, draft, PROMPT, **big_tree)
    assert (
        len(mtad.generate(target, draft, PROMPT, limits=Limits(max_tree_nodes=420), **big_tree).tokens) == 3
    )
    with pytest.raises(ConfigError, match="gamma 4 is over the limit of 2"):
        mtad.generate(target, draft, PROMPT, method="sd", gamma=4, limits=Limits(max_gamma=2))


def test_ignored_settings_are_not_limited(target, draft):
    """ar never drafts: a gamma it does not use is no reason to refuse it."""
    result = mtad.generate(target, draft, PROMPT, method="ar", gamma=5000, beam_width=5000, max_new_tokens=2,
                           seed=0, eos_token_id=[])  # fmt: skip
    assert len(result.tokens) == 2


def test_the_model_lowers_the_limits():
    """Rows of vocabulary-wide work fit 1 GiB; draft tokens per round fit the context window."""
    assert Limits().for_models(vocab_size=32, context_length=None) == Limits()
    big_vocab = Limits().for_models(vocab_size=256_000, context_length=4096)
    assert big_vocab.max_tree_nodes == 2**30 // (32 * 256_000) == 131 and big_vocab.max_beam_width == 32
    assert Limits().for_models(vocab_size=2**22, context_length=None).max_beam_width == 8
    assert Limits().for_models(vocab_size=32, context_length=10).max_gamma == 9


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_limits_themselves_are_checked(value):
    with pytest.raises(ConfigError, match="max_tree_nodes must be an integer >= 1"):
        Limits(max_tree_nodes=value)


def test_node_count_of_a_huge_tree_stops_early():
    spec = SpeculationConfig(method="specinfer", tree=(10**6,) * 1000)
    assert spec.verified_nodes(stop_above=256) == 10**6


@pytest.mark.parametrize("seed", [2**63, 18446744073709551616, -1])
def test_seeds_have_one_range(target, seed):
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        mtad.generate(target, None, PROMPT, method="ar", seed=seed)
    assert (
        mtad.generate(target, None, PROMPT, method="ar", seed=2**63 - 1, max_new_tokens=2).seed == 2**63 - 1
    )


def test_a_prompt_that_is_not_unicode_text_is_refused(target, tokenizer):
    with pytest.raises(ConfigError, match="not valid UTF-8") as error:
        mtad.generate(target, None, "w5 \ud800 w6", method="ar", tokenizer=tokenizer)
    assert error.value.setting == "prompt"


def test_undefined_statistics_are_none_not_zero(target):
    nothing = mtad.generate(target, None, PROMPT, method="ar", max_new_tokens=0).stats
    assert nothing.acceptance_rate is None and nothing.block_efficiency is None
    assert nothing.tokens_per_s is None and nothing.ms_per_token is None
    ar = mtad.generate(target, None, PROMPT, method="ar", max_new_tokens=3).stats
    assert ar.acceptance_rate is None and ar.block_efficiency == 1.0


class HalfCharacterTokenizer:
    """Decodes n tokens to n "x"s, plus the replacement character when n is odd: as if every
    other token began a two-token character (a byte-level BPE splitting a multi-byte letter)."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(tokens) + ("\ufffd" if len(tokens) % 2 else "")


@pytest.mark.parametrize("budget", [1, 5, 7])
def test_text_cut_by_the_budget_mid_character_ends_without_a_replacement_char(target, draft, budget):
    generation = mtad.stream(
        target, draft, PROMPT, method="sd", max_new_tokens=budget, eos_token_id=[], seed=0,
        tokenizer=HalfCharacterTokenizer(),
    )  # fmt: skip
    streamed = "".join(block.text for block in generation)
    result = generation.result
    assert result.finish_reason == "length" and len(result.tokens) == budget  # no token is lost
    assert result.text == streamed == "x" * budget


def test_the_stopper_holds_back_an_incomplete_character():
    stopper = Stopper(mtad.config.StopConfig(max_new_tokens=10), HalfCharacterTokenizer())
    assert stopper.visible_text([1, 2, 3], finished=False) == "xxx"
    assert stopper.visible_text([1, 2, 3], finished=True) == "xxx"
    assert stopper.visible_text([1, 2], finished=True) == "xx"


# ---- the command line: one line and exit 2, before any model is loaded -------------------------


def refused(capsys, argv: list[str]) -> str:
    """Run `mtad argv`, expect exit code 2, return stderr (argparse exits, our errors return)."""
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


NOWHERE = ["--target", "/nonexistent/target", "--draft", "/nonexistent/draft"]  # never loaded


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", *NOWHERE, "--port", "80000"], "invalid port '80000'"),
        (["serve", *NOWHERE, "--port", "-1"], "invalid port '-1'"),
        (["generate", *NOWHERE, "--seed", "18446744073709551616", "Hello"], "invalid seed"),
        (["generate", *NOWHERE, "Hello \udcff"], "prompt is not valid UTF-8"),
        (
            ["generate", *NOWHERE, "--method", "sd", "--gamma", "2000", "Hello"],
            "gamma 2000 is over the limit",
        ),
        (["generate", *NOWHERE, "--method", "specinfer", "--tree", "1000,1000", "Hi"], "max_tree_nodes"),
        (["serve", *NOWHERE, "--beam-width", "20000"], "beam_width 20000 is over the limit"),
        (["serve", *NOWHERE, "--max-tree-nodes", "0"], "max_tree_nodes must be an integer >= 1"),
        (
            ["demo", *NOWHERE, "--methods", "mtad", "--max-beam-width", "2"],
            "beam_width 4 is over the limit of 2",
        ),
    ],
)
def test_cli_misuse_is_one_line_and_exit_2_before_loading(capsys, argv, needle):
    err = refused(capsys, argv)
    assert needle in err
    assert err.strip().splitlines()[-1].startswith("mtad") or "usage:" in err


def test_generate_says_na_for_undefined_statistics(pair_dirs, capsys):
    target, draft = pair_dirs
    argv = ["generate", "--target", target, "--draft", draft, "--method", "sd", "--max-new-tokens", "0", "w3"]
    assert main(argv) == 0
    assert "acceptance n/a" in capsys.readouterr().err


def test_library_errors_stay_one_line_for_huge_values():
    with pytest.raises(ConfigError) as error:
        SpeculationConfig(method="specinfer", tree=tuple([0] * 100_000))
    assert len(str(error.value)) < 200


def test_limit_errors_come_before_the_prompt_is_even_read(target, draft):
    with pytest.raises(ConfigError, match="max_gamma"):
        mtad.stream(target, draft, torch.zeros(0, dtype=torch.long), method="sd", gamma=10_000)
