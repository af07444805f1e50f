"""`mtad.generate(prompts, batch_invariant=True)`: each prompt gets exactly its lone tokens."""

from __future__ import annotations

import pytest

import mtad
from conftest import tiny_llama
from mtad.errors import ConfigError

PROMPT = [0, 5, 7, 3]


@pytest.fixture(scope="module")
def quiet_target():
    model = tiny_llama(seed=0)
    model.generation_config.eos_token_id = []  # every run is exactly max_new_tokens long
    return model


@pytest.mark.parametrize(
    "options", [{"method": "sd", "gamma": "auto"}, {"method": "mtad", "gamma": 3}, {"method": "ar"}]
)
def test_eight_identical_seeded_prompts_equal_the_lone_one(quiet_target, draft, options):
    lone = mtad.generate(quiet_target, draft, PROMPT, max_new_tokens=16, seed=11, **options)
    rows = mtad.generate(
        quiet_target, draft, [PROMPT] * 8, max_new_tokens=16, seed=[11] * 8, batch_invariant=True, **options
    )
    assert [row.tokens for row in rows] == [lone.tokens] * 8


def test_a_prompt_ignores_different_neighbours(quiet_target, draft):
    prompts = [[0, 9, 2], PROMPT, [0, 3, 3, 4, 5, 6], [0, 12]]
    rows = mtad.generate(
        quiet_target, draft, prompts, max_new_tokens=12, seed=[1, 2, 3, 4], batch_invariant=True
    )
    for prompt, seed, row in zip(prompts, [1, 2, 3, 4], rows, strict=True):
        assert row.tokens == mtad.generate(quiet_target, draft, prompt, max_new_tokens=12, seed=seed).tokens


def test_batch_invariant_must_be_a_bool(target, draft):
    with pytest.raises(ConfigError, match="batch_invariant"):
        mtad.generate(target, draft, [PROMPT, PROMPT], max_new_tokens=2, batch_invariant="yes")
