"""Feature drafts (EAGLE-style, `mtad.models.feature_draft`) through the one decode loop, on tiny models.

Every drafted method decodes with one; sd and specinfer stay lossless (chi-square, as in
test_distribution); at temperature 0 every method equals greedy; after every round the target's
kept hidden states and the draft's cache and output buffer equal a fresh computation over the
committed tokens; a draft made for another target is refused with one line.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mtad
from conftest import tiny_llama, tiny_tokenizer
from mtad.errors import DraftMismatchError
from mtad.models.feature_draft import FeatureDraft, build_feature_draft, is_feature_draft
from test_distribution import PROMPT, VOCAB, WARP, chi_square_p_value, exact_first_two

NO_EOS = {"eos_token_id": []}
DRAFTED = ["sd", "mtad", "mmtad", "specinfer"]
PROMPTS = [[0, 5, 7, 3], [0, 2], [0, 9, 9, 9, 4, 11, 12, 6]]


def feature_draft(target, token_ids=None, seed: int = 0, noise: float = 0.3, layers=None) -> FeatureDraft:
    """A feature draft for `target` with seeded noise on its weights (acceptance neither 0 nor 1)."""
    width = target.get_output_embeddings().weight.shape[0]
    draft = build_feature_draft(target, token_ids or list(range(width)), feature_layers=layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(
                noise * parameter.std().nan_to_num(0.1) * torch.randn(parameter.shape, generator=generator)
            )
    return draft.eval()


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, layers=3)


@pytest.fixture(scope="module")
def fdraft(target):
    return feature_draft(target, token_ids=[1, *range(3, 16)])  # a subset: ids 0 and 2 never drafted


def greedy(model, prompt, n):
    return mtad.generate(model, None, prompt, method="greedy", max_new_tokens=n, **NO_EOS).tokens


@pytest.mark.parametrize("method", DRAFTED)
def test_every_drafted_method_decodes_with_a_feature_draft(target, fdraft, method):
    result = mtad.generate(
        target, fdraft, PROMPTS[0], method=method, gamma=4, max_new_tokens=30, seed=1, **NO_EOS
    )
    stats = result.stats
    assert len(result.tokens) == 30
    assert stats.rounds_per_gamma[0] >= 1  # the first round is the target's prefill
    assert stats.drafted_tokens > 0 and 0 < stats.accepted_tokens < stats.drafted_tokens


@pytest.mark.parametrize("method", DRAFTED)
def test_feature_draft_at_temperature_zero_equals_greedy(target, fdraft, method):
    for prompt in PROMPTS:
        result = mtad.generate(
            target, fdraft, prompt, method=method, gamma=4, temperature=0, max_new_tokens=25, **NO_EOS
        )
        assert result.tokens == greedy(target, prompt, 25)


@pytest.mark.parametrize(("method", "settings"), [("sd", {"gamma": 3}), ("specinfer", {"tree": (2, 2)})])
def test_feature_draft_keeps_sd_and_specinfer_lossless(method, settings):
    """Round 1 is the target's prefill; round 2 drafts, so t2 comes from speculation (and t1, t2
    must still follow the target's joint distribution)."""
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0, layers=2)
    draft = feature_draft(target, token_ids=list(range(1, VOCAB)), seed=3, noise=0.5)
    counts = torch.zeros(VOCAB, VOCAB)
    accepted = drafted = 0
    for seed in range(2000):
        result = mtad.generate(
            target, draft, PROMPT, method=method, max_new_tokens=4, seed=seed, **NO_EOS, **WARP, **settings
        )
        counts[result.tokens[0], result.tokens[1]] += 1
        accepted += result.stats.accepted_tokens
        drafted += result.stats.drafted_tokens
    assert 0 < accepted < drafted
    assert chi_square_p_value(counts, exact_first_two(target)) > 1e-3


def fresh_draft_outputs(drafter, sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's outputs over every slot of `sequence` from scratch: target states from a fresh
    forward, then one draft forward without a cache. Returns (outputs, target states)."""
    target = drafter.target
    with torch.inference_mode():
        hidden = target.model(input_ids=sequence, output_hidden_states=True).hidden_states
        states = torch.cat([hidden[i] for i in target.feature_layers], dim=-1)  # [1, L, F]
        shifted = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)  # slot s reads s - 1
        model = drafter.model
        outputs = model(
            input_ids=sequence, features=model.fuse_features(shifted), cache=None, use_cache=False
        ).hidden_states[0]
    return outputs, states


@pytest.mark.parametrize("method", DRAFTED)
def test_feature_draft_state_equals_a_fresh_computation_after_every_round(target, fdraft, method):
    generation = mtad.stream(
        target, fdraft, PROMPTS[2], method=method, gamma=4, max_new_tokens=40, seed=3, **NO_EOS
    )
    rejections = 0
    for block in generation:
        rejections += len(block.tokens) < 4
        drafter, sequence = generation.drafter, generation.sequence
        outputs, states = fresh_draft_outputs(drafter, sequence)
        committed = generation.target.length
        assert committed == sequence.shape[1] - 1  # everything but the newest token
        torch.testing.assert_close(generation.target.features, states[:, :committed], atol=1e-4, rtol=0)
        kept = drafter.length
        assert kept == drafter.real and kept <= committed + 1  # only slots read with real states
        if kept == 0:  # the prefill round: the draft has read nothing yet
            continue
        torch.testing.assert_close(drafter.outputs, outputs[:, :kept], atol=1e-4, rtol=0)
        if kept < sequence.shape[1]:  # the cache continues exactly like a fresh pass
            with torch.inference_mode():
                slot = kept
                feature = drafter.model.fuse_features(states[:, slot - 1 : slot])
                via_cache = drafter.model(
                    input_ids=sequence[:, slot : slot + 1],
                    features=feature,
                    cache=copy.deepcopy(drafter.cache),
                ).hidden_states[0]
            torch.testing.assert_close(via_cache[:, 0], outputs[:, slot], atol=1e-4, rtol=0)
    assert rejections > 0


def test_feature_draft_saves_loads_and_refuses_another_target(tmp_path, target, fdraft):
    tokenizer = tiny_tokenizer()
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    target.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    fdraft.save_pretrained(draft_dir)
    tokenizer.save_pretrained(draft_dir)
    loaded_target, loaded_draft = mtad.load_pair(target_dir, draft_dir, dtype="float32")
    assert is_feature_draft(loaded_draft.model)
    assert sum(p.numel() for p in loaded_draft.model.parameters()) < sum(
        p.numel() for p in target.parameters()
    )
    mine = mtad.generate(
        loaded_target.model,
        loaded_draft.model,
        PROMPTS[0],
        method="sd",
        gamma=3,
        max_new_tokens=12,
        seed=4,
        **NO_EOS,
    )
    again = mtad.generate(
        target, fdraft, PROMPTS[0], method="sd", gamma=3, max_new_tokens=12, seed=4, **NO_EOS
    )
    assert mine.tokens == again.tokens
    # Every part loads in the asked dtype, also when the target's config names its own (real ones do).
    saved_dtype = copy.deepcopy(target)
    saved_dtype.config.dtype = "float32"
    feature_draft(saved_dtype).save_pretrained(tmp_path / "pinned")
    tokenizer.save_pretrained(tmp_path / "pinned")
    _, half = mtad.load_pair(target_dir, tmp_path / "pinned", dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    bf16_target = copy.deepcopy(target).to(torch.bfloat16)
    result = mtad.generate(bf16_target, half.model, PROMPTS[0], method="sd", max_new_tokens=6, seed=1)
    assert len(result.tokens) == 6
    from mtad.cli import main  # the CLI takes a feature draft directory like any other

    code = main(["generate", "--target", str(target_dir), "--draft", str(draft_dir), "--method", "mmtad",
                 "--gamma", "3", "--max-new-tokens", "10", "--seed", "1", "--raw", "w3 w5"])  # fmt: skip
    assert code == 0
    other = tiny_llama(seed=5, layers=2)
    with pytest.raises(DraftMismatchError, match="trained for another target"):
        mtad.generate(other, fdraft, PROMPTS[0], method="sd", max_new_tokens=4)
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    tokenizer.save_pretrained(other_dir)
    with pytest.raises(DraftMismatchError, match="trained for another target"):
        mtad.load_pair(other_dir, draft_dir)


def test_growing_a_draft_keeps_its_function_and_the_new_layer_trains(target, fdraft):
    from mtad.errors import ConfigError
    from mtad.models.feature_draft import grow_feature_draft

    grown = grow_feature_draft(fdraft, target, 2).eval()
    assert grown.config.num_hidden_layers == 2 and len(grown.decoder.layers) == 2
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    features = torch.randn(2, 7, fdraft.config.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = fdraft(input_ids=ids, features=features, use_cache=False).logits
        after = grown(input_ids=ids, features=features, use_cache=False).logits
    torch.testing.assert_close(after, before)
    new = grown.decoder.layers[1]
    assert not new.self_attn.o_proj.weight.any() and new.self_attn.q_proj.weight.any()
    grown.train()
    grown(input_ids=ids, features=features, use_cache=False).logits.logsumexp(-1).sum().backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0  # zero branch, live gradient
    for bad in (1, 4):  # the target has 3 layers; the draft already has 1
        with pytest.raises(ConfigError, match=f"--draft-layers must be in \\[2, 3\\].*got {bad}"):
            grow_feature_draft(fdraft, target, bad)
