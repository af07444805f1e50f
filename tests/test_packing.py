"""Prompts that join a batch together are prefilled in one packed forward
(`mtad.runtime.ragged.packing`): each prompt gets the logits, states and cache a forward of its own
gives, common prefixes are fed once."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import mtad
from conftest import tiny_llama
from mtad.runtime.ragged import RaggedCache, RowStore, packing
from test_feature_draft import feature_draft

# A shared prefix, a prompt that is a prefix of another, two identical prompts, one unrelated.
PROMPTS = [[0, 5, 7, 3, 2], [0, 5, 7, 9], [0, 5], [0, 5, 7, 3, 2], [4, 6, 8]]


def _inputs(prompt: list[int], keep: int = 1, **extra) -> dict:
    return {"input_ids": torch.tensor([prompt]), "logits_to_keep": keep, **extra}


def test_common_prefixes_are_fed_once_and_every_path_reads_its_own_prompt():
    layout = packing.pack([_inputs(p) for p in PROMPTS])
    assert layout.tokens == 5 + 1 + 0 + 0 + 3  # only what no earlier prompt began with
    for prompt, path in zip(PROMPTS, layout.paths, strict=True):
        assert layout.input_ids[0, path].tolist() == prompt
        assert layout.position_ids[0, path].tolist() == list(range(len(prompt)))
        # a token sees its own prompt's earlier tokens and nothing else
        for p, slot in enumerate(path.tolist()):
            assert layout.visible[slot].nonzero().squeeze(1).tolist() == sorted(path[: p + 1].tolist())


def test_tokens_with_different_per_token_inputs_are_not_shared():
    states = torch.zeros(1, 3, 2)
    other = states.clone()
    other[0, 1] = 1.0
    layout = packing.pack([_inputs([0, 5, 7], features=states), _inputs([0, 5, 7], features=other)])
    assert layout.tokens == 3 + 2  # same tokens, but the second one's states differ from position 1
    assert layout.extras["features"].shape == (1, 5, 2)


@pytest.mark.parametrize("keep", [1, 2, 0])
def test_a_packed_prefill_gives_each_prompt_its_solo_logits_and_cache(keep):
    model = tiny_llama(seed=3, layers=2).float()
    ragged = RaggedCache(model)
    stores = [RowStore(ragged) for _ in PROMPTS]
    requests = [
        (store, _inputs(p, keep, output_hidden_states=True)) for store, p in zip(stores, PROMPTS, strict=True)
    ]
    with torch.inference_mode():
        outputs = ragged.run(requests)
        for store, prompt, output in zip(stores, PROMPTS, outputs, strict=True):
            fresh = DynamicCache(config=model.config)
            alone = model(input_ids=torch.tensor([prompt]), cache=fresh, use_cache=True, logits_to_keep=keep,
                          output_hidden_states=True)  # fmt: skip
            torch.testing.assert_close(output.logits, alone.logits, atol=1e-5, rtol=0)
            for mine, theirs in zip(output.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
            assert store.length == len(prompt)
            for index, layer in enumerate(fresh.layers):
                keys, values = store.cached(index)
                torch.testing.assert_close(keys, layer.keys, atol=1e-5, rtol=0)
                torch.testing.assert_close(values, layer.values, atol=1e-5, rtol=0)


def test_rows_joining_together_prefill_in_one_forward_and_a_lone_row_alone(monkeypatch):
    model = tiny_llama(seed=3, layers=2)
    forwards = []
    original = model.forward
    monkeypatch.setattr(
        model, "forward", lambda **kw: (forwards.append(kw["input_ids"].shape), original(**kw))[1]
    )
    mtad.generate(model, None, PROMPTS, method="ar", max_new_tokens=1, seed=0, eos_token_id=[])
    assert forwards == [(1, 9)]  # five prompts, 17 tokens, fed as 9
    forwards.clear()
    mtad.generate(model, None, [PROMPTS[0]], method="ar", max_new_tokens=1, seed=0, eos_token_id=[])
    assert forwards == [(1, 5)]  # the plain call: no packing, no mask


def test_prompts_beyond_the_packing_budget_go_in_further_forwards(monkeypatch):
    monkeypatch.setattr(packing, "PACK_TOKENS", 8)
    assert packing.groups([5, 3, 4, 9, 2, 2]) == [[0, 1], [2], [3], [4, 5]]
    assert not packing.packable(_inputs(list(range(9))))  # longer than a packed forward: alone
    assert not packing.packable(_inputs([1, 2], position_ids=torch.tensor([[0, 1]])))
    assert packing.packable(_inputs([1, 2], position_ids=None))


def test_feature_draft_rows_prefill_packed_and_match_their_solo_runs():
    """The draft's first forward carries the target's states per token: packed with them."""
    target = tiny_llama(seed=0, layers=3)
    draft = feature_draft(target, token_ids=[1, *range(3, 16)])
    packed = []
    original = RaggedCache._prefill_packed

    def spy(self, requests):
        packed.append(type(self.model).__name__)
        return original(self, requests)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RaggedCache, "_prefill_packed", spy)
        settings = dict(method="sd", temperature=0.0, max_new_tokens=12, eos_token_id=[])
        results = mtad.generate(target, draft, PROMPTS, **settings)
    assert packed == ["LlamaForCausalLM", "FeatureDraft"]
    solo = [mtad.generate(target, draft, p, seed=i, **settings) for i, p in enumerate(PROMPTS)]
    assert [r.tokens for r in results] == [r.tokens for r in solo]
