"""Tree-wise verification: buffers, tree attention on real architectures, MMTAD and SpecInfer rules."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import mtad
from conftest import assert_first_two_follow_p, tiny_gpt2, tiny_llama
from mtad.decoding.acceptance import mmtad_tree, reference_log_joints, specinfer_tree
from mtad.decoding.tree import paths_from_parents, tree_from_paths, tree_inputs
from mtad.runtime.cache import CachedModel

NO_EOS = {"eos_token_id": []}
PROMPT = [0, 5, 7, 3, 9]


def test_tree_buffers_from_hand_written_paths():
    #        root
    #       /    \
    #     a(0)   b(1)
    #    /   \      \
    #  c(0,0) d(0,1) e(1,0)
    #   |
    #  f(0,0,0)
    tree = tree_from_paths([(1, 0), (0,), (0, 0, 0), (1,), (0, 1), (0, 0)])  # any order in
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    assert tree.parents.tolist() == [-1, -1, 0, 0, 1, 2]
    assert tree.depths.tolist() == [1, 1, 2, 2, 2, 3]
    expected_mask = [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [0, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ]
    assert tree.ancestor_mask.int().tolist() == expected_mask
    assert tree.leaf_paths.tolist() == [[0, 3, -1], [1, 4, -1], [0, 2, 5]]


def test_tree_from_paths_rejects_orphans():
    with pytest.raises(ValueError, match="no parent path"):
        tree_from_paths([(0,), (1, 0)])


def test_paths_from_parents_rank_children_in_creation_order():
    assert paths_from_parents([-1, -1, 0, 0, 1, 2]) == [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def test_tree_inputs_positions_and_mask():
    tree = tree_from_paths([(0,), (1,), (0, 0)])
    positions, mask = tree_inputs(tree, context=5, pending=2, fed=0, new=3, dtype=torch.float32, device="cpu")
    assert positions.tolist() == [[3, 4, 5, 5, 6]]
    visible = (mask[0, 0] == 0).int().tolist()
    assert visible == [
        [1, 1, 1, 1, 0, 0, 0, 0],  # pending token at position 3: cached context + itself
        [1, 1, 1, 1, 1, 0, 0, 0],  # pending token at position 4
        [1, 1, 1, 1, 1, 1, 0, 0],  # node (0,): whole context + itself
        [1, 1, 1, 1, 1, 0, 1, 0],  # node (1,): not its sibling
        [1, 1, 1, 1, 1, 1, 0, 1],  # node (0, 0): its parent + itself
    ]


def tiny_qwen2(seed: int):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2, tiny_qwen2], ids=["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("pending", [0, 2])
def test_tree_logits_equal_causal_branch_logits(make_model, pending):
    """Every node's logits through tree attention on a prefilled cache equal a plain causal run
    over the prompt plus that node's root-to-node branch (fp32, 1e-5)."""
    model = make_model(seed=4)
    tree = tree_from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 1, 0)])
    tokens = torch.tensor([4, 4, 11, 6, 2, 13, 8, 15])  # siblings 0 and 1 share a token on purpose
    cached = CachedModel(model, 16)
    prompt = torch.tensor([PROMPT])
    cached.forward(prompt[:, : len(PROMPT) - pending])  # prefill all but the pending tokens
    positions, mask = tree_inputs(tree, len(PROMPT), pending, 0, tree.size, torch.float32, "cpu")
    feed = torch.cat([prompt[:, len(PROMPT) - pending :], tokens.unsqueeze(0)], dim=1)
    logits = cached.forward(feed, keep=tree.size, position_ids=positions, attention_mask=mask)[0]
    with torch.inference_mode():
        for node, path in enumerate(tree.paths):
            branch = [
                int(tokens[tree_from_paths(tree.paths).paths.index(path[:k])])
                for k in range(1, len(path) + 1)
            ]
            fresh = model(input_ids=torch.tensor([PROMPT + branch])).logits[0, -1]
            torch.testing.assert_close(logits[node], fresh, atol=1e-5, rtol=0)


def test_draft_tree_expansion_on_cached_nodes_matches_causal():
    """A later draft step feeds only new nodes; earlier nodes are in the cache and must be masked
    except for ancestors (the draft's beams decode in one forward per step)."""
    model = tiny_llama(seed=6)
    cached = CachedModel(model, 16)
    cached.forward(torch.tensor([PROMPT]))
    tree = tree_from_paths([(0,), (1,), (0, 0), (1, 0), (1, 1)])
    tokens = [3, 9, 12, 5, 5]
    pos, mask = tree_inputs(tree, len(PROMPT), 0, 0, 2, torch.float32, "cpu")
    cached.forward(torch.tensor([tokens[:2]]), keep=2, position_ids=pos, attention_mask=mask)
    pos, mask = tree_inputs(tree, len(PROMPT), 0, 2, 3, torch.float32, "cpu")
    logits = cached.forward(torch.tensor([tokens[2:]]), keep=3, position_ids=pos, attention_mask=mask)[0]
    with torch.inference_mode():
        for row, branch in enumerate([[3, 12], [9, 5], [9, 5]]):
            fresh = model(input_ids=torch.tensor([PROMPT + branch])).logits[0, -1]
            torch.testing.assert_close(logits[row], fresh, atol=1e-5, rtol=0)


# --- Acceptance rules on hand-built trees -------------------------------------------------------

V = 8


def _one_hot_rows(spec: dict[int, dict[int, float]], nodes: int) -> torch.Tensor:
    """[1 + nodes, V] rows; row r = {token: prob}; missing rows put all mass on token V-1."""
    rows = torch.zeros(1 + nodes, V)
    for r in range(1 + nodes):
        for token, prob in spec.get(r, {V - 1: 1.0}).items():
            rows[r, token] = prob
    return rows


def test_mmtad_tree_accepts_the_deepest_passing_node_with_ties_by_target_joint():
    # nodes: 0:(0,)=t1  1:(1,)=t2  2:(0,0)=t3  3:(1,0)=t3  4:(1,0,0)=t4
    parents = torch.tensor([-1, -1, 0, 1, 3])
    depths = torch.tensor([1, 1, 2, 2, 3])
    tokens = torch.tensor([1, 2, 3, 3, 4])
    p = _one_hot_rows(
        {
            0: {1: 0.5, 2: 0.4, 7: 0.1},
            1: {3: 0.9, 7: 0.1},
            2: {3: 0.2, 7: 0.8},
            4: {4: 0.01, 6: 0.99},
            3: {6: 1.0},
            5: {6: 1.0},
        },
        5,
    )
    reference = torch.log(torch.tensor([0.5, 0.5, 0.2, 0.2, 0.2], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    # target joints: n0 .5, n1 .4, n2 .45, n3 .08, n4 .0008; ratios: 1, .8, 2.25, .4, .004
    verdict = mmtad_tree(p, tokens, parents, depths, reference, g, threshold=0.5)
    assert verdict.path() == [0, 2]  # depth 2: only n2 passes
    assert int(verdict.next_token[0]) == 6  # p after node 2 is one-hot on 6
    verdict = mmtad_tree(p, tokens, parents, depths, reference, g, threshold=0.3)
    assert verdict.path() == [0, 2]  # n2 and n3 pass at depth 2: n2 has the higher target joint
    verdict = mmtad_tree(p, tokens, parents, depths, reference, g, threshold=0.001)
    assert verdict.path() == [1, 3, 4]  # the deepest passing node wins even with a small joint
    verdict = mmtad_tree(p, tokens, parents, depths, reference + 10, g, threshold=0.5)
    assert verdict.path() == []  # nothing passes: one token from p at the root
    assert int(verdict.next_token[0]) in (1, 2, 7)


def test_reference_rules():
    log_joint = torch.log(torch.tensor([0.6, 0.4, 0.3, 0.2, 0.35], dtype=torch.float64))
    depths = torch.tensor([1, 1, 2, 2, 2])
    parents = torch.tensor([-1, -1, 0, 1, 1])
    best = reference_log_joints(log_joint, depths, parents, best_leaf=4, rule="best")
    assert torch.allclose(best.exp(), torch.tensor([0.4, 0.4, 0.35, 0.35, 0.35], dtype=torch.float64))
    most = reference_log_joints(log_joint, depths, parents, best_leaf=4, rule="max")
    assert torch.allclose(most.exp(), torch.tensor([0.6, 0.6, 0.35, 0.35, 0.35], dtype=torch.float64))
    own = reference_log_joints(log_joint, depths, parents, best_leaf=4, rule="own")
    assert torch.equal(own, log_joint)


def test_specinfer_hand_built_tree_deterministic_path():
    """p puts no mass on the first child and full mass on the second: child 1 is rejected
    (probability 1), child 2 accepted (p/q >= 1), then its only child is accepted, then a bonus."""
    parents = torch.tensor([-1, -1, 1])
    tokens = torch.tensor([3, 4, 5])
    p = _one_hot_rows({0: {4: 1.0}, 2: {5: 1.0}, 3: {6: 1.0}}, 3)
    q = _one_hot_rows({0: {3: 0.5, 4: 0.5}, 2: {5: 1.0}}, 3)
    for seed in range(20):
        verdict = specinfer_tree(p, q, tokens, parents, torch.Generator().manual_seed(seed))
        assert verdict.path() == [1, 2]
        assert int(verdict.next_token[0]) == 6


@pytest.mark.parametrize("with_replacement", [True, False])
def test_specinfer_is_lossless_over_a_two_level_tree(with_replacement):
    """First and second committed tokens follow p exactly (6-sigma per bin over 10k trees).

    When a round commits one token only (every child rejected), the second token would come from
    the next round; we draw it from the exact p(. | first), as a correct next round does."""
    g = torch.Generator().manual_seed(1)
    p_root = torch.tensor([0.05, 0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.0])
    q_root = torch.tensor([0.3, 0.1, 0.25, 0.05, 0.1, 0.1, 0.0, 0.1])
    p_child = torch.softmax(torch.randn(V, V, generator=g) * 2, -1)  # p(. | first token)
    q_child = torch.softmax(torch.randn(V, V, generator=g) * 2, -1)

    def rounds():
        for _ in range(10_000):
            first = torch.multinomial(q_root, 3, replacement=with_replacement, generator=g)
            parents, tokens = [-1, -1, -1], first.tolist()
            for k in range(3):
                child = torch.multinomial(
                    q_child[tokens[k]], 2, replacement=with_replacement, generator=g
                ).tolist()
                parents += [k, k]
                tokens += child
            nodes = len(tokens)
            p = torch.zeros(1 + nodes, V)
            q = torch.zeros(1 + nodes, V)
            p[0], q[0] = p_root, q_root
            for k in range(3):
                p[1 + k], q[1 + k] = p_child[tokens[k]], q_child[tokens[k]]
            for k in range(3, nodes):
                p[1 + k] = torch.full((V,), 1 / V)
            nodes_tensor = torch.tensor(tokens), torch.tensor(parents)
            yield tokens, specinfer_tree(p, q, *nodes_tensor, g, with_replacement)

    assert_first_two_follow_p(rounds(), p_root, p_child, g)


# --- End to end through mtad.generate ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mmtad_with_one_beam_equals_mtad(target, draft, seed):
    settings = {"beam_width": 1, "max_new_tokens": 40, "seed": seed, "top_k": 8, **NO_EOS}
    tree = mtad.generate(target, draft, PROMPT, method="mmtad", **settings)
    chain = mtad.generate(target, draft, PROMPT, method="mtad", **settings)
    assert tree.tokens == chain.tokens
    assert tree.stats.accepted_tokens == chain.stats.accepted_tokens


@pytest.mark.parametrize("method", ["mmtad", "specinfer"])
def test_tree_methods_with_draft_equal_to_target_accept_everything(target, method):
    result = mtad.generate(
        target, target, PROMPT, method=method, max_new_tokens=33, seed=2, top_k=6, **NO_EOS
    )
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.mean_tree_size > 3


@pytest.mark.parametrize("reference", ["best", "max", "own"])
def test_mmtad_reference_rules_run(target, draft, reference):
    result = mtad.generate(
        target, draft, PROMPT, method="mmtad", reference=reference, max_new_tokens=30, seed=0, **NO_EOS
    )
    assert len(result.tokens) == 30
    assert 0 <= result.stats.acceptance_rate <= 1


@pytest.mark.parametrize("tree", [(1,), (2, 2), (4, 2, 2), (3, 1, 1, 1)])
def test_specinfer_at_temperature_zero_equals_greedy(target, draft, tree):
    expected = mtad.generate(target, None, PROMPT, method="greedy", max_new_tokens=30, **NO_EOS).tokens
    result = mtad.generate(
        target, draft, PROMPT, method="specinfer", tree=tree, temperature=0, max_new_tokens=30, **NO_EOS
    )
    assert result.tokens == expected
    assert result.stats.tree_nodes > 0


def test_bad_tree_settings(target, draft):
    with pytest.raises(mtad.ConfigError, match="tree must be"):
        mtad.generate(target, draft, PROMPT, method="specinfer", tree=(4, 0))
    with pytest.raises(mtad.ConfigError, match="reference must be best, max or own, got 'worst'"):
        mtad.generate(target, draft, PROMPT, method="mmtad", reference="worst")
