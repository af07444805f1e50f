"""`mtad.generate` under generated settings and prompts: it decodes, or raises `MtadError` in one line.

Anything else (IndexError, TypeError, OverflowError, RecursionError, NaN in a draw) is a bug at the
library's edge. The tiny pair's context is 24 tokens, so `max_new_tokens` past it is refused quickly
and every accepted case decodes in milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import mtad
from conftest import VOCAB, tiny_llama, tiny_tokenizer
from fuzz import FAST, SLOW, decoding_settings, junk, one_line
from mtad.errors import MtadError

CONTEXT = 24


def _short_context(model):
    model.config.max_position_embeddings = CONTEXT
    return model


TARGET = _short_context(tiny_llama(seed=0))
DRAFT = _short_context(tiny_llama(seed=1, layers=1))
TOKENIZER = tiny_tokenizer()

token_ids = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6)
plausible_prompts = st.one_of(
    token_ids,
    token_ids,
    st.lists(token_ids, min_size=1, max_size=3),  # a batch of prompts
    st.sampled_from(["w5 w7", "w3", "w2 w2 w2 w9"]),
    token_ids.map(torch.tensor),
)
hostile_prompts = st.one_of(
    st.lists(st.sampled_from([VOCAB, -1, 2**70, 2.5, True, "w5"]), min_size=1, max_size=3), junk
)
EXTRAS = {
    "tokenizer": st.sampled_from([TOKENIZER, None]),
    "eos_token_id": st.one_of(st.integers(0, VOCAB - 1), st.lists(st.integers(0, VOCAB + 2), max_size=3)),
    "stop": st.one_of(st.sampled_from(["w5", "w7 w9"]), st.lists(st.sampled_from(["w5", ""]), max_size=3)),
    "batch_invariant": st.booleans(),
}
# The tokenizer is an object, not a setting: it is never junk.
HOSTILE_EXTRAS = {"eos_token_id": junk, "stop": junk, "batch_invariant": junk, "frobnicate": junk}
calm_extras = st.fixed_dictionaries({}, optional=EXTRAS)
hostile_extras = st.tuples(calm_extras, st.fixed_dictionaries({}, optional=HOSTILE_EXTRAS)).map(
    lambda t: t[0] | t[1]
)
cases = st.one_of(
    st.tuples(plausible_prompts, decoding_settings, calm_extras),
    st.tuples(st.one_of(plausible_prompts, hostile_prompts), decoding_settings, hostile_extras),
)


def check(case) -> None:
    prompt, settings, extra = case
    settings = {"max_new_tokens": 4} | settings
    try:
        result = mtad.generate(TARGET, DRAFT, prompt, **settings, **extra)
    except MtadError as error:
        event(f"refused: {getattr(error, 'setting', None)}")
        assert one_line(str(error)), repr(str(error))
        return
    event("decoded")
    for one in result if isinstance(result, list) else [result]:
        assert len(one.tokens) <= settings["max_new_tokens"]
        assert all(0 <= token < VOCAB for token in one.tokens)
        assert one.finish_reason in ("length", "stop")


@FAST
@given(cases)
def test_generate_decodes_or_raises_one_line(case):
    check(case)


@pytest.mark.slow
@SLOW
@given(cases)
def test_generate_decodes_or_raises_one_line_ten_thousand_cases(case):
    check(case)


# Cases the fuzzing found, kept as plain tests.


def test_beams_that_grow_in_a_batch_decode():
    """mtjd without replacement and more beams than tokens: step 0 draws at most the vocabulary's
    tokens, later steps `beam_width` pairs, so the beams grow; a batch row's cache once could not."""
    settings = {
        "method": "mtjd",
        "beam_width": 32,
        "with_replacement": False,
        "top_k": 0,
        "max_new_tokens": 4,
    }
    results = mtad.generate(TARGET, DRAFT, [[0, 5], [0, 7, 9]], seed=1, eos_token_id=[], **settings)
    assert [len(result.tokens) for result in results] == [4, 4]
