"""Model-free drafts (`recycle`, `suffix`, and any `ModelFreeDraft`): the lossless methods keep the
exact target distribution with them, greedy decoding is unchanged, caches stay equal to a fresh
forward, a shared store carries candidates but never text, and their parts do what they say.

The statistical checks run `mtad.generate` on a tiny random model with an 8-token vocabulary and
the warp on, as tests/test_distribution.py does; the q they meet includes a one-hot q, a q whose
only token the target's warp removed (zero mass on every target sample), and a q that changes
from round to round (a shared table learning across runs).
"""

from __future__ import annotations

import pytest
import torch

import mtad
from conftest import assert_first_two_follow_p, tiny_llama, use_costs
from mtad.decoding.acceptance import ordered_candidates_tree
from mtad.decoding.adaptive import NodePolicy
from mtad.decoding.drafts import (
    Candidates,
    HybridDraft,
    ModelFreeDraft,
    RecycleDraft,
    SuffixDraft,
    TokenDrafter,
)
from mtad.decoding.drafts.proposers import beams, chain, cost_sized_tree
from mtad.decoding.drafts.recycle import RecycleTable
from mtad.decoding.drafts.suffix import SuffixIndex, SuffixStore, suffix_candidates
from mtad.decoding.pricing import Costs
from mtad.errors import ConfigError, MtadError
from test_distribution import PROMPT, VOCAB, WARP, chi_square_p_value, exact_first_two

NO_EOS = {"eos_token_id": []}
REPEATING = [2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 2, 3, 4]  # the suffix draft has something to continue


class ScriptedDraft(ModelFreeDraft):
    """q cycles through `rows` (dicts token -> probability), one per lookup: it changes between
    rounds and between the nodes of one round."""

    name = "scripted"

    def __init__(self, rows: list[dict[int, float]]) -> None:
        self.rows = rows

    def drafter(self, target):
        rows = self.rows

        class Scripted(TokenDrafter):
            def candidates(self, context):
                self.lookups += 1
                return Candidates.from_weights(rows[(self.lookups - 1) % len(rows)])

        return Scripted(target.vocab_size, target.device)


@pytest.fixture(scope="module")
def small():
    return tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0)


def _warp_removed_token(model) -> int:
    """A token the warped target gives no mass after PROMPT (top-k 6 of 8 removes two)."""
    return int(torch.nonzero(exact_first_two(model).sum(1) == 0)[0])


def _drafts(model) -> dict[str, object]:
    removed = _warp_removed_token(model)
    return {
        "recycle-shared": RecycleDraft(shared=True),  # learns across runs: q changes between rounds
        "suffix-store": SuffixDraft(store_tokens=64),
        "hybrid": HybridDraft([RecycleDraft(shared=True), SuffixDraft(store_tokens=64)]),
        "hybrid-model": HybridDraft([RecycleDraft(shared=True), tiny_llama(11, vocab=VOCAB, sharpness=3.0)]),
        "scripted": ScriptedDraft(
            [{removed: 1.0}, {3: 1.0}, {2: 0.5, 4: 0.25, removed: 0.25}, {5: 0.9, 6: 0.1}]
        ),
    }


@pytest.mark.parametrize("draft_name", ["recycle-shared", "suffix-store", "hybrid", "hybrid-model",
                                        "scripted"])  # fmt: skip
@pytest.mark.parametrize(("method", "extra"), [("sd", {"gamma": 2}), ("sd", {"gamma": "auto"}),
                                               ("specinfer", {"tree": (2, 2)}),
                                               ("specinfer", {"tree": "auto"})])  # fmt: skip
def test_first_two_tokens_follow_the_target_distribution(small, draft_name, method, extra, monkeypatch):
    # Tree "auto" and sd's chain under gamma "auto" are sized by measured forward costs: fixed,
    # cheap ones here, so the rounds draft whatever the machine's load (the distribution must hold
    # for any size; the check needs drafts).
    use_costs(monkeypatch, Costs({1: 1.0, 33: 1.5}, {1: 0.0}))
    draft = _drafts(small)[draft_name]
    counts, drafted, accepted = torch.zeros(VOCAB, VOCAB), 0, 0
    runs = 1500
    for seed in range(runs):
        result = mtad.generate(small, draft, PROMPT, method=method, max_new_tokens=3, seed=seed, **extra,
                               **WARP, **NO_EOS)  # fmt: skip
        counts[result.tokens[0], result.tokens[1]] += 1
        drafted += result.stats.drafted_tokens
        accepted += result.stats.accepted_tokens
    assert drafted > runs // 4 and 0 < accepted < drafted  # drafts were made, taken and refused
    assert chi_square_p_value(counts, exact_first_two(small)) > 1e-3


def test_ordered_candidates_tree_is_lossless():
    """Children fixed in advance (most likely first under some other q), two levels: the first and
    second committed tokens follow p exactly (6 sigma per bin over 10k rounds)."""
    g = torch.Generator().manual_seed(3)
    v = 6
    p_root = torch.tensor([0.05, 0.35, 0.2, 0.2, 0.2, 0.0])
    p_child = torch.softmax(torch.randn(v, v, generator=g) * 2, -1)
    tokens, parents = [1, 5, 2, 3, 0, 1], [-1, -1, -1, 0, 0, 2]  # 5 has p = 0: never accepted
    p = torch.zeros(1 + len(tokens), v)
    p[0] = p_root
    for node, token in enumerate(tokens):
        p[1 + node] = p_child[token] if parents[node] == -1 else torch.full((v,), 1 / v)
    rounds = ((tokens, ordered_candidates_tree(p, torch.tensor(tokens), torch.tensor(parents), g))
              for _ in range(10_000))  # fmt: skip
    assert_first_two_follow_p(rounds, p_root, p_child, g)


def _greedy(model, prompt, n):
    return mtad.generate(model, None, prompt, method="greedy", max_new_tokens=n, **NO_EOS).tokens


TREES = [("sd", (4, 2, 2)), ("mtad", (4, 2, 2)), ("mmtad", (4, 2, 2)), ("specinfer", (4, 2, 2)),
         ("specinfer", "auto"), ("mmtad", "auto"), ("sd", "chain sized by gamma auto"),
         ("mtad", "beams sized by gamma auto")]  # fmt: skip


def _gamma_and_tree(tree) -> dict:
    return {"gamma": "auto"} if str(tree).endswith("sized by gamma auto") else {"gamma": 4, "tree": tree}


@pytest.fixture
def cheap_verification(monkeypatch):
    """Verifying extra tokens costs little: sized rounds draft whatever the machine's load."""
    use_costs(monkeypatch, Costs({1: 1.0, 33: 1.5}, {1: 0.0}))


@pytest.mark.parametrize("draft", ["recycle", "suffix", "recycle+suffix"])
@pytest.mark.parametrize(("method", "tree"), TREES)
def test_temperature_zero_equals_greedy(target, draft, method, tree, cheap_verification):
    result = mtad.generate(target, draft, REPEATING, method=method, temperature=0, max_new_tokens=40,
                           **_gamma_and_tree(tree), **NO_EOS)  # fmt: skip
    assert result.tokens == _greedy(target, REPEATING, 40)
    assert result.stats.accepted_tokens > 0


@pytest.mark.parametrize("draft", ["recycle", "suffix"])
@pytest.mark.parametrize(("method", "tree"), TREES)
def test_target_cache_equals_a_fresh_forward_after_every_round(
    target, draft, method, tree, cheap_verification
):
    from test_engine import _assert_cache_matches_fresh_forward

    generation = mtad.stream(target, draft, REPEATING, method=method, max_new_tokens=40, seed=3,
                             **_gamma_and_tree(tree), **NO_EOS)  # fmt: skip
    rejected = 0
    for block in generation:
        _assert_cache_matches_fresh_forward(generation.target, generation.sequence)
        rejected += len(block.tokens) == 1
    assert generation.result.stats.drafted_tokens > 0 and rejected > 0


@pytest.mark.parametrize("kind", ["recycle", "suffix"])
def test_a_shared_store_carries_candidates_not_text(target, kind):
    """Two requests through one shared store: each one's greedy output equals its solo run (the
    other's candidates reach it only as drafts the target verified), and the store was used."""
    first, second = REPEATING, [7, 8, 9, 7, 8, 9, 7]
    shared = RecycleDraft(shared=True) if kind == "recycle" else SuffixDraft(store_tokens=1000)
    for prompt in (first, second, first):
        with_store = mtad.generate(
            target, shared, prompt, method="sd", temperature=0, max_new_tokens=30, gamma=4, **NO_EOS
        )
        assert with_store.tokens == _greedy(target, prompt, 30)
    described = shared.describe()
    assert described.get("entries", described.get("store_tokens")) > 0


@pytest.mark.parametrize("gamma", [4, "auto"])  # auto: each row's chain sized by its own confidence
@pytest.mark.parametrize("with_model", [False, True])
def test_batched_rows_with_a_model_free_draft_equal_their_solo_runs(target, draft, with_model, gamma,
                                                                     cheap_verification):  # fmt: skip
    prompts = [REPEATING, [7, 8, 9, 7, 8, 9, 7], REPEATING[:5]]
    drafting = HybridDraft(["recycle", draft]) if with_model else "recycle"
    batch = mtad.generate(target, drafting, prompts, method="sd", temperature=0, max_new_tokens=24,
                          gamma=gamma, **NO_EOS)  # fmt: skip
    for prompt, result in zip(prompts, batch, strict=True):
        assert result.tokens == _greedy(target, prompt, 24)
        assert (result.stats.draft_calls > 0) == with_model
    assert sum(result.stats.accepted_tokens for result in batch) > 0  # the rows drafted and were right


@pytest.mark.parametrize(("method", "tree"), TREES)
def test_a_hybrid_with_a_draft_model_keeps_greedy_decoding(target, draft, method, tree, cheap_verification):
    hybrid = HybridDraft(["suffix", draft])
    result = mtad.generate(target, hybrid, REPEATING, method=method, temperature=0, max_new_tokens=40,
                           **_gamma_and_tree(tree), **NO_EOS)  # fmt: skip
    assert result.tokens == _greedy(target, REPEATING, 40)
    assert result.stats.draft_calls > 0 and result.stats.accepted_tokens > 0


def test_recycle_table_keeps_the_latest_rows_within_its_bound():
    table = RecycleTable(max_entries=3)
    p = torch.zeros(2, 8)
    p[0, [1, 2]] = torch.tensor([0.75, 0.25])
    p[1, 4] = 1.0
    table.update([(5, 6), (6, 7)], p)  # keys (5, 6), (6,), (6, 7), (7,): the oldest falls out
    assert len(table) == 3
    found = table.lookup((9, 6, 7))
    assert found.ids.tolist() == [4] and found.probs.tolist() == [1.0]
    found = table.lookup((0, 6))  # no (0, 6): falls back to (6,)
    assert found.ids.tolist() == [1, 2] and torch.allclose(found.probs, torch.tensor([0.75, 0.25]))
    assert table.lookup((5,)) is None


def test_suffix_index_counts_continuations_of_the_longest_match():
    index = SuffixIndex()
    index.add([1, 2, 3, 1, 2, 4, 1, 2, 3])
    assert index.matches([1, 2])[1] == {3: 2, 4: 1}
    q = suffix_candidates([index], [9, 1, 2])  # longest match (1, 2): 3 twice, 4 once; smoothed by (2,)
    weights = dict(zip(q.ids.tolist(), q.probs.tolist(), strict=True))
    assert weights[3] == pytest.approx(2 / 3) and weights[4] == pytest.approx(1 / 3)
    index.add([1, 2, 3, 1, 2, 4, 1, 2, 3], sign=-1)
    assert index.counts == {}


def test_suffix_store_drops_the_oldest_outputs_past_its_bound():
    store = SuffixStore(max_tokens=10)
    store.add([1, 2, 3, 4, 5, 6])
    store.add([7, 8, 9, 10, 11, 12])
    assert store.tokens == 6 and list(store.texts) == [(7, 8, 9, 10, 11, 12)]
    assert (1, 2) not in store.index.counts and (7, 8) in store.index.counts


def test_cost_sized_tree_verifies_what_the_costs_pay_for():
    """Free extra tokens: the whole budget; each extra token as dear as a round: nothing."""

    class Fixed(TokenDrafter):
        def candidates(self, context):
            return Candidates(torch.tensor([3, 4, 5]), torch.tensor([0.6, 0.3, 0.1]))

    sequence, g = torch.tensor([[1, 2]]), torch.Generator().manual_seed(0)
    sampling = mtad.SamplingConfig()
    free = NodePolicy(Costs({1: 1.0, 33: 1.0}, {1: 0.0}))
    tree = cost_sized_tree(Fixed(8, "cpu"), sequence, 3, sampling, g, budget=10, sizer=free.choose)
    assert tree.tree_nodes == 10 and tree.depth <= 3
    assert tree.tokens[:3].tolist() == [3, 4, 5]  # root's children, most likely first
    dear = NodePolicy(Costs({1: 1.0, 2: 2.0, 33: 33.0}, {1: 0.0}))
    assert cost_sized_tree(Fixed(8, "cpu"), sequence, 3, sampling, g, budget=10, sizer=dear.choose).depth == 0


def test_a_sized_chain_is_as_long_as_its_confidence_pays():
    """sd's model-free chain under gamma "auto": free extra tokens draw the whole depth; dear
    ones draw nothing; between, a confident draft draws longer chains than an unsure one."""

    class Fixed(TokenDrafter):
        def __init__(self, probs):
            super().__init__(8, "cpu")
            self.probs = torch.tensor(probs)

        def candidates(self, context):
            return Candidates(torch.arange(3, 3 + len(self.probs)), self.probs)

    sequence, sampling = torch.tensor([[1, 2]]), mtad.SamplingConfig()

    def length(probs, costs) -> int:
        policy = NodePolicy(costs)
        g = torch.Generator().manual_seed(0)
        return chain(Fixed(probs), sequence, 6, sampling, g, sizer=policy.choose).depth

    free, dear = Costs({1: 1.0, 33: 1.0}, {1: 0.0}), Costs({1: 1.0, 2: 2.0, 33: 33.0}, {1: 0.0})
    assert length([0.5, 0.5], free) == 6 and length([0.5, 0.5], dear) == 0
    between = Costs({1: 1.0, 2: 1.1, 3: 1.2, 4: 1.3, 5: 1.4, 6: 1.5, 7: 1.6, 33: 4.0}, {1: 0.0})
    assert length([0.98, 0.02], between) > length([0.6, 0.4], between) > 0
    assert getattr(chain, "sizes_itself", False)  # the loop gives it a sizer under gamma "auto"

    def beam_depth(probs, costs) -> int:  # mtad's beams, judged on the best beam
        policy = NodePolicy(costs)
        g = torch.Generator().manual_seed(0)
        return beams(Fixed(probs), sequence, 6, sampling, g, width=2, sizer=policy.choose).depth

    assert beam_depth([0.5, 0.5], free) == 6 and beam_depth([0.5, 0.5], dear) == 0
    assert beam_depth([0.98, 0.02], between) > beam_depth([0.6, 0.4], between) > 0


def test_bad_draft_settings_are_one_line_errors(target, draft):
    with pytest.raises(ConfigError, match="unknown draft kind 'ngram'; allowed: recycle, suffix"):
        mtad.generate(target, "ngram", [2, 3], method="sd")
    with pytest.raises(ConfigError, match="unknown draft kind 'recycle\\+recycle'"):
        mtad.generate(target, "recycle+recycle", [2, 3], method="sd")
    with pytest.raises(MtadError, match="suffix store must be a positive integer, got 0"):
        SuffixDraft(store_tokens=0)
    with pytest.raises(MtadError, match="recycle max_entries must be a positive integer, got 'x'"):
        RecycleDraft(shared=True, max_entries="x")
    with pytest.raises(ConfigError, match="tree 'auto' sizes the trees of a model-free draft"):
        mtad.generate(target, draft, [2, 3], method="specinfer", tree="auto")
    with pytest.raises(ConfigError, match="at most one draft model"):
        HybridDraft(["recycle", draft, draft])
    with pytest.raises(MtadError, match="output token ids|vocabular"):
        other = tiny_llama(seed=3, vocab=40)  # a draft made for another target
        mtad.generate(target, HybridDraft(["recycle", other]), [2, 3], method="sd")
    for method in ("specinfer", "mmtad"):
        with pytest.raises(
            ConfigError, match="tree 'auto' verifies up to 32 nodes a round, over the limit of 16"
        ):
            mtad.generate(
                target, "recycle", [2, 3], method=method, tree="auto", limits=mtad.Limits(max_tree_nodes=16)
            )
    with pytest.raises(ConfigError, match="tree must be .* or 'auto', got 'big'"):
        mtad.generate(target, "recycle", [2, 3], method="specinfer", tree="big")
