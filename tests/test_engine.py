"""The decode loop on tiny random models: greedy equality, caches, stop conditions, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

import mtad
from conftest import EOS, tiny_gpt2, tiny_llama
from mtad.decoding.sampling import warp

NO_EOS = {"eos_token_id": []}
PROMPTS = [[0, 5, 7, 3], [0, 2], [0, 9, 9, 9, 4, 11, 12, 6]]


class ScriptedDraft(LlamaForCausalLM):
    """A copy of the target that is wrong on purpose at chosen absolute positions.

    At temperature 0 its token equals the target's argmax except where the predicted position is
    in `wrong_at`, so a chain of draft tokens is accepted up to exactly the first scripted error:
    every accepted length 0..gamma is reached deterministically.
    """

    wrong_at: frozenset[int] = frozenset()

    def forward(self, input_ids=None, cache=None, **kwargs):
        start = cache.get_seq_length() if cache is not None else 0
        out = super().forward(input_ids=input_ids, cache=cache, **kwargs)
        logits = out.logits
        kept = logits.shape[1]
        for i in range(kept):
            predicted_position = start + input_ids.shape[1] - kept + i + 1
            if predicted_position in self.wrong_at:
                top = logits[:, i].argmax(-1)
                logits[torch.arange(logits.shape[0]), i, top] = logits[:, i].min(-1).values - 1
        return out


def scripted_draft(target: LlamaForCausalLM, wrong_at: set[int]) -> ScriptedDraft:
    draft = ScriptedDraft(target.config).eval()
    draft.load_state_dict(target.state_dict())
    draft.wrong_at = frozenset(wrong_at)
    return draft


def greedy_tokens(model, prompt, n) -> list[int]:
    return mtad.generate(model, None, prompt, method="greedy", max_new_tokens=n, **NO_EOS).tokens


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_greedy_equals_transformers_generate(make_model, prompt):
    model = make_model(seed=3)
    ours = greedy_tokens(model, prompt, 24)
    ids = torch.tensor([prompt])
    # An explicit mask: token 0 is also the pad id, and transformers would otherwise mask it as padding.
    theirs = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=24,
        eos_token_id=None,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    assert ours == theirs


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_sd_at_temperature_zero_equals_greedy(target, draft, prompt, gamma):
    expected = greedy_tokens(target, prompt, 30)
    result = mtad.generate(
        target, draft, prompt, method="sd", gamma=gamma, temperature=0, max_new_tokens=30, **NO_EOS
    )
    assert result.tokens == expected
    assert result.stats.drafted_tokens > 0  # guard: the test really drafted


@pytest.mark.parametrize("gamma", [3, 4])
def test_sd_greedy_with_scripted_errors_reaches_every_accepted_length(target, gamma):
    prompt = PROMPTS[0]
    expected = greedy_tokens(target, prompt, 40)
    # errors spaced so that rounds accept 0, 1, 2, ..., gamma tokens
    wrong_at = {len(prompt) + k for k in (0, 2, 5, 9, 14, 20, 27)}
    draft = scripted_draft(target, wrong_at)
    lengths_seen = set()
    generation = mtad.stream(
        target, draft, prompt, method="sd", gamma=gamma, temperature=0, max_new_tokens=40, **NO_EOS
    )
    for block in generation:
        lengths_seen.add(len(block.tokens) - 1)
    assert generation.result.tokens == expected
    assert set(range(gamma + 1)) <= lengths_seen | {gamma}  # the final block may be cut by the budget
    assert set(range(gamma)) <= lengths_seen


@pytest.mark.parametrize("method", ["mtad", "mtjd"])
def test_beam_methods_at_temperature_zero_equal_greedy(target, method):
    """T = 0 makes every beam the greedy path and p == q, so everything is accepted."""
    for prompt in PROMPTS:
        result = mtad.generate(
            target, target, prompt, method=method, temperature=0, max_new_tokens=25, **NO_EOS
        )
        assert result.tokens == greedy_tokens(target, prompt, 25)


@pytest.mark.parametrize("method", ["sd", "mtad"])
def test_draft_identical_to_target_accepts_everything(target, method):
    result = mtad.generate(
        target, target, PROMPTS[0], method=method, top_k=8, max_new_tokens=41, seed=5, **NO_EOS
    )
    # 8 rounds of 4 accepted + 1 bonus; the last round has a budget of 1 and drafts nothing
    assert result.stats.drafted_tokens == 32
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.block_efficiency == 41 / 9


def _assert_cache_matches_fresh_forward(cached, sequence) -> None:
    """Next-token logits through the incremental cache equal a fresh forward over the sequence."""
    assert sequence.shape[1] - 2 <= cached.length < sequence.shape[1]  # incremental, not re-encoded
    with torch.inference_mode():
        via_cache = cached.model(
            input_ids=sequence[:, cached.length :], cache=copy.deepcopy(cached.cache), use_cache=True
        ).logits[:, -1]
        fresh = cached.model(input_ids=sequence).logits[:, -1]
    torch.testing.assert_close(via_cache, fresh, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer", "mtjd"])
def test_caches_equal_fresh_forward_after_every_step(target, draft, method):
    """Chains are truncated, trees pruned to the accepted path (gather, compact), beams reordered."""
    generation = mtad.stream(
        target, draft, PROMPTS[2], method=method, gamma=4, max_new_tokens=40, seed=3, **NO_EOS
    )
    rejections = 0
    for block in generation:
        rejections += len(block.tokens) < (4 if method == "specinfer" else 5)  # tree (4, 2, 2) has depth 3
        _assert_cache_matches_fresh_forward(generation.target, generation.sequence)
        # A last round with a budget of one token drafts nothing, so the draft does not catch up.
        drafted_nothing = generation.sequence.shape[1] - len(PROMPTS[2]) == 40 and len(block.tokens) == 1
        if method != "mtjd" and not drafted_nothing:
            _assert_cache_matches_fresh_forward(generation.drafter, generation.sequence)
    if method != "mtjd":
        assert rejections > 0  # the steps really included rejections


@pytest.mark.parametrize("method", mtad.METHODS)
@pytest.mark.parametrize("budget", [0, 1, 2, 5, 9])
def test_exact_max_new_tokens(target, draft, method, budget):
    result = mtad.generate(target, draft, PROMPTS[0], method=method, max_new_tokens=budget, seed=1, **NO_EOS)
    assert len(result.tokens) == budget
    assert result.finish_reason == "length"


@pytest.mark.parametrize("method", ["sd", "mtad"])
def test_eos_inside_an_accepted_block_stops_exactly_there(target, method):
    """Declare a token that greedy produces mid-block to be EOS: output ends right after it."""
    expected = greedy_tokens(target, PROMPTS[0], 30)
    for position in (2, 6, 8):
        eos = expected[position]
        first = expected.index(eos)
        result = mtad.generate(
            target, target, PROMPTS[0], method=method, temperature=0, max_new_tokens=30, eos_token_id=eos
        )
        assert result.tokens == expected[: first + 1]
        assert result.finish_reason == "stop"


def test_default_eos_comes_from_the_model(target):
    result = mtad.generate(target, None, PROMPTS[0], method="ar", max_new_tokens=200, seed=0, top_k=3)
    assert EOS not in result.tokens[:-1]
    if EOS in result.tokens:
        assert result.finish_reason == "stop"


@pytest.mark.parametrize("method", mtad.METHODS)
def test_same_seed_same_output(target, draft, method):
    runs = [
        mtad.generate(target, draft, PROMPTS[1], method=method, max_new_tokens=30, seed=11, **NO_EOS)
        for _ in range(2)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].seed == 11


def test_unseeded_runs_report_their_seed_and_replay(target, draft):
    first = mtad.generate(target, draft, PROMPTS[1], method="mtad", max_new_tokens=20, **NO_EOS)
    replay = mtad.generate(
        target, draft, PROMPTS[1], method="mtad", max_new_tokens=20, seed=first.seed, **NO_EOS
    )
    assert first.tokens == replay.tokens


def test_stream_blocks_reassemble_to_the_result(target, draft, tokenizer):
    generation = mtad.stream(
        target, draft, PROMPTS[0], method="mtad", max_new_tokens=30, seed=2, tokenizer=tokenizer, **NO_EOS
    )
    blocks = list(generation)
    assert sum((b.tokens for b in blocks), []) == generation.result.tokens
    assert "".join(b.text for b in blocks) == generation.result.text
    assert generation.result.text == tokenizer.decode(generation.result.tokens, skip_special_tokens=True)


def test_stop_string_cuts_text_and_tokens(target, tokenizer):
    expected = greedy_tokens(target, PROMPTS[0], 30)
    stop_token = next(t for t in expected[5:] if t > EOS)  # a word, not a special token
    first = expected.index(stop_token)
    stop = tokenizer.decode([stop_token])
    generation = mtad.stream(
        target,
        target,
        PROMPTS[0],
        method="sd",
        temperature=0,
        max_new_tokens=30,
        stop=[stop],
        tokenizer=tokenizer,
        **NO_EOS,
    )
    streamed = "".join(block.text for block in generation)
    result = generation.result
    assert result.tokens == expected[: first + 1]
    assert result.finish_reason == "stop"
    assert stop not in result.text
    before = tokenizer.decode(expected[:first], skip_special_tokens=True)
    assert result.text == (before + " " if before else "")  # the text ends right before the stop string
    assert streamed == result.text


def test_statistics_are_consistent(target, draft):
    result = mtad.generate(
        target, draft, PROMPTS[0], method="sd", gamma=3, max_new_tokens=50, seed=4, **NO_EOS
    )
    stats = result.stats
    assert stats.new_tokens == 50
    assert stats.target_calls == stats.rounds
    assert stats.accepted_tokens + stats.rounds == stats.new_tokens
    assert stats.draft_calls == stats.drafted_tokens  # one draft forward per drafted token
    assert 0 < stats.acceptance_rate < 1
    assert sum(stats.accepted_per_position) == stats.accepted_tokens
    assert stats.acceptance_per_position[0] >= stats.acceptance_per_position[-1]
    assert stats.tokens_per_s > 0


def test_top_k_and_top_p_are_respected_under_speculation(target, draft):
    prompt = PROMPTS[0]
    allowed = warp(target(torch.tensor([prompt])).logits[:, -1], mtad.SamplingConfig(1.0, 3, 0.8))[0] > 0
    for seed in range(30):
        for method in ("sd", "mtad"):
            result = mtad.generate(
                target,
                draft,
                prompt,
                method=method,
                top_k=3,
                top_p=0.8,
                max_new_tokens=1,
                seed=seed,
                **NO_EOS,
            )
            assert allowed[result.tokens[0]]


def test_without_replacement_beam_sampling_runs(target, draft):
    result = mtad.generate(
        target,
        draft,
        PROMPTS[0],
        method="mtad",
        with_replacement=False,
        top_k=2,
        beam_width=4,
        max_new_tokens=20,
        seed=0,
        **NO_EOS,
    )
    assert len(result.tokens) == 20


def test_draft_with_padded_head_is_aligned(target, tokenizer):
    """A draft whose output head is wider (padding ids) works; its padding ids are never drafted."""
    padded = tiny_llama(seed=1, vocab=24)
    result = mtad.generate(
        target, padded, PROMPTS[0], method="sd", max_new_tokens=20, seed=0, tokenizer=tokenizer, **NO_EOS
    )
    assert max(result.tokens) < 16


def test_a_generation_decodes_once(target, draft):
    generation = mtad.stream(target, draft, PROMPTS[0], method="sd", max_new_tokens=3, seed=0, **NO_EOS)
    list(generation)
    with pytest.raises(RuntimeError, match="decodes once"):
        list(generation)
