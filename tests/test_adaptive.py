"""gamma "auto": each round's depth from measured costs and the acceptance seen so far (issue 11).

Costs are injected here (never measured: timings are not asserted in tests), so every choice the
policy makes is deterministic.
"""

from __future__ import annotations

import pytest
import torch

import mtad
from conftest import tiny_llama, use_costs
from mtad.cli import main
from mtad.config import AUTO_MAX_GAMMA, MTJD_AUTO_GAMMA
from mtad.decoding import adaptive, pricing
from mtad.decoding.adaptive import GammaPolicy, round_cost
from mtad.decoding.pricing import Costs
from mtad.decoding.speculation import SpeculationConfig
from mtad.errors import ConfigError
from test_distribution import PROMPT, RUNS, VOCAB, WARP, chi_square_p_value, exact_first_two
from test_engine import NO_EOS, PROMPTS, greedy_tokens

FLAT = Costs({1: 0.010, 33: 0.010}, {1: 0.001, 4: 0.001})  # verification free, draft 10x cheaper
STEEP = Costs({1: 0.010, 33: 0.042}, {1: 0.0025, 4: 0.0025})  # every verified token costs 10%


@pytest.fixture
def costs(monkeypatch):
    """Make the engine use given costs instead of measuring: `costs(FLAT)`."""

    def use(given: Costs) -> None:
        use_costs(monkeypatch, given)

    return use


def test_round_costs_follow_each_method_s_shape():
    costs = Costs({1: 10.0, 2: 11.0, 3: 12.0, 33: 42.0}, {1: 1.0, 4: 4.0})
    assert round_cost(SpeculationConfig("sd", "auto"), 0, costs) == 10.0
    assert round_cost(SpeculationConfig("sd", "auto"), 2, costs) == 12.0 + 2 * 1.0
    assert round_cost(SpeculationConfig("mtad", "auto", beam_width=4), 2, costs) == 12.0 + 1.0 + 4.0
    assert round_cost(SpeculationConfig("mmtad", "auto", beam_width=4), 2, costs) == costs.target(9) + 5.0
    assert (
        round_cost(SpeculationConfig("specinfer", tree=(4, 2, 2)), 2, costs) == costs.target(13) + 1.0 + 4.0
    )
    assert costs.target(33) == 42.0 and costs.target(18) == pytest.approx(27.0)  # linear between points


def test_a_draft_that_is_always_right_is_drafted_deep():
    policy = GammaPolicy(SpeculationConfig("sd", "auto"), FLAT)
    for _ in range(30):
        depth = policy.choose(most=100)
        policy.observe(depth, accepted=depth)
    assert policy.choose(most=100) == AUTO_MAX_GAMMA
    assert policy.choose(most=3) == 3  # never past the budget


def test_a_draft_that_is_always_wrong_is_not_drafted_and_is_probed_again_later():
    policy = GammaPolicy(SpeculationConfig("sd", "auto"), STEEP)
    chosen = []
    for _ in range(200):
        depth = policy.choose(most=100)
        chosen.append(depth)
        policy.observe(depth, accepted=0)
    assert chosen[0] >= 1  # the prior (P(L >= j) = 0.5^j) makes the first round draft
    assert chosen[-50:].count(0) >= 40  # then it stops paying for speculation ...
    assert 0 < sum(d > 0 for d in chosen[-150:]) <= 15  # ... but probes now and then


def test_a_beam_width_given_to_a_chain_method_is_not_priced():
    # sd ignores beam_width (the limits do not check it), so pricing must not measure a draft
    # forward that wide: a server request with beam_width 2**31 once allocated 256 GB there.
    assert (
        SpeculationConfig("sd", "auto", beam_width=2**31).shape.draft_width(
            SpeculationConfig("sd", "auto", beam_width=2**31)
        )
        == 1
    )
    mtad_spec = SpeculationConfig("mtad", "auto", beam_width=4)
    assert mtad_spec.shape.draft_width(mtad_spec) == 4


def test_estimates_are_non_increasing_in_depth():
    policy = GammaPolicy(SpeculationConfig("sd", "auto"), FLAT)
    policy.observe(4, accepted=4)
    policy.observe(2, accepted=0)
    reach = policy.reach()
    assert all(a >= b for a, b in zip(reach, reach[1:], strict=False))


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_auto_at_temperature_zero_equals_greedy(target, draft, costs, method):
    costs(FLAT)
    for prompt in PROMPTS:
        result = mtad.generate(target, draft, prompt, method=method, gamma="auto", temperature=0,
                               max_new_tokens=30, **NO_EOS)  # fmt: skip
        assert result.tokens == greedy_tokens(target, prompt, 30)
        assert result.stats.drafted_tokens > 0  # guard: it really drafted
        assert sum(result.stats.rounds_per_gamma) == result.stats.rounds


def test_auto_with_a_perfect_draft_drafts_deep_and_accepts_all(target, costs):
    costs(FLAT)
    result = mtad.generate(target, target, PROMPTS[0], method="sd", gamma="auto", top_k=8, seed=1,
                           max_new_tokens=80, **NO_EOS)  # fmt: skip
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.rounds_per_gamma[AUTO_MAX_GAMMA] >= result.stats.rounds - 3


def test_sd_with_auto_still_samples_the_target_distribution(costs):
    """The first two tokens, when the second round's depth depends on the first's outcome
    (STEEP: draft 1; after a rejection, a plain target step). Chi-square at 1e-3, fixed seeds."""
    costs(STEEP)
    target = tiny_llama(seed=10, vocab=VOCAB, sharpness=3.0)
    draft = tiny_llama(seed=11, vocab=VOCAB, sharpness=3.0, layers=1)
    counts = torch.zeros(VOCAB, VOCAB)
    second_rounds = set()
    for seed in range(RUNS):
        result = mtad.generate(target, draft, PROMPT, method="sd", gamma="auto", max_new_tokens=3, seed=seed,
                               eos_token_id=[], **WARP)  # fmt: skip
        counts[result.tokens[0], result.tokens[1]] += 1
        second_rounds.add(tuple(result.stats.rounds_per_gamma))
    assert len(second_rounds) > 1  # the depth really varied with the outcome
    assert chi_square_p_value(counts, exact_first_two(target)) > 1e-3


def test_auto_is_the_paper_s_block_for_mtjd_and_ignored_by_target_only_methods(target):
    auto = mtad.generate(target, None, PROMPTS[0], method="mtjd", gamma="auto", max_new_tokens=20, seed=0)
    fixed = mtad.generate(
        target, None, PROMPTS[0], method="mtjd", gamma=MTJD_AUTO_GAMMA, max_new_tokens=20, seed=0
    )
    assert auto.tokens == fixed.tokens
    # Seeded and without EOS: an unseeded run may sample EOS early (a flaky 2 == 3 seen in CI).
    plain = mtad.generate(
        target, None, PROMPTS[0], method="ar", gamma="auto", max_new_tokens=3, seed=1, **NO_EOS
    )
    assert len(plain.tokens) == 3


@pytest.mark.parametrize("gamma", ["fast", 0, 2.5])
def test_bad_gamma_values_name_auto(target, gamma):
    with pytest.raises(ConfigError, match="an integer >= 1 or 'auto'"):
        mtad.generate(target, target, PROMPTS[0], method="sd", gamma=gamma)


def test_cli_takes_gamma_auto(pair_dirs, capsys, monkeypatch):
    monkeypatch.setattr(pricing, "REPEATS", 1)
    target, draft = pair_dirs
    argv = ["generate", "--target", target, "--draft", draft, "--method", "sd", "--gamma", "auto"]
    assert main([*argv, "--max-new-tokens", "6", "--json", "--raw", "w3"]) == 0
    assert '"rounds_per_gamma"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:-1], "fast", "w3"])
    assert exit_info.value.code == 2 and "invalid gamma 'fast'" in capsys.readouterr().err


def test_costs_are_measured_before_decoding_once_per_pair_and_batch_size(target, draft, monkeypatch):
    monkeypatch.setattr(pricing, "_CURVES", {})  # as in a fresh process
    spec, sampling = SpeculationConfig("sd", "auto"), mtad.SamplingConfig()
    pricing.price_rounds(target, draft, spec, sampling)
    first = pricing.costs(target, draft)
    with pytest.raises(RuntimeError, match="not priced"):
        pricing.costs(target, draft, rows=2)  # a batch of two rows: not yet measured
    pricing.price_rounds(target, draft, spec, sampling, rows=2)
    shared = pricing.costs(target, draft, rows=2)
    assert shared.target_s != first.target_s and pricing.costs(target, draft) == first  # 1 row kept
    assert set(first.target_s) == set(pricing.TARGET_POINTS) and set(first.draft_s) == {1, 2, 4}
    assert all(seconds > 0 for seconds in (*first.target_s.values(), *first.draft_s.values()))
    # A generation prices itself when built; its loop only reads (measuring there would fail).
    measured = []
    monkeypatch.setattr(pricing, "forward_seconds", lambda *args: measured.append(args) or {})
    generation = mtad.stream(target, draft, PROMPTS[0], method="sd", gamma="auto", max_new_tokens=8, **NO_EOS)
    for _ in generation:
        pass
    assert measured == [] and generation.result.stats.rounds_per_gamma


def test_one_row_agrees_with_itself_exactly():
    policy = GammaPolicy(SpeculationConfig("sd", "auto"), STEEP)
    for accepted in [0, 3, 1, 0, 0, 2, 4, 0]:
        assert adaptive.joint_depth([(policy, 100)]) == policy.choose(100)
        assert adaptive.joint_depth([(policy, 1)]) == policy.choose(1)
        policy.observe(policy.choose(100), accepted)


def test_rows_of_a_batch_draft_one_depth_that_pays_for_the_batch():
    """Alone, a row whose draft is right drafts deep and one whose draft is wrong drafts nothing;
    together they pay for the widest round, so they agree on the depth that pays for both."""
    spec = SpeculationConfig("sd", "auto")
    right, wrong = GammaPolicy(spec, STEEP), GammaPolicy(spec, STEEP)
    for _ in range(40):
        right.observe(4, accepted=4)
        wrong.observe(1, accepted=0)
    assert right.choose(100) > 0 and wrong.choose(100) == 0

    def batch_rate(g: int) -> float:
        points = [policy.rates(100)[g] for policy in (right, wrong)]
        return sum(t for t, _ in points) / sum(s for _, s in points)

    agreed = adaptive.joint_depth([(right, 100), (wrong, 100)])
    assert batch_rate(agreed) == max(batch_rate(g) for g in range(len(right.rates(100))))
    assert adaptive.joint_depth([(right, 100), (right, 2)]) == right.choose(100)  # the short one drafts less
    assert adaptive.joint_depth([(wrong, 100), (wrong, 100)]) == 0


def test_gamma_auto_rows_of_a_batch_ask_for_their_depth_together(target, draft, costs):
    from mtad.decoding import batch as batching

    costs(STEEP)
    asked = []  # per round: (rows asking, rows decoding)
    original = batching.joint_depth

    def spy(choices, clock):
        asked.append((len(choices), len(generation.batch.live)))
        return original(choices, clock)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batching, "joint_depth", spy)
        generation = mtad.stream(target, draft, PROMPTS[:3], method="sd", gamma="auto", max_new_tokens=12,
                                 seed=0, **NO_EOS)  # fmt: skip
        results = [block for block in generation]
    assert results and asked[0] == (3, 3)
    assert all(rows == live for rows, live in asked)  # every round, every live row at once


def test_the_batch_s_clock_corrects_the_measured_costs_per_depth():
    clock = adaptive.RoundClock()
    assert clock.factor(1) == 1.0
    clock.observe(1, predicted=1.0, seconds=1.3)
    assert clock.factor(1) == pytest.approx(1.3)
    assert clock.factor(0) == 1.0  # not run yet: the optimistic guess, so it gets tried
    assert clock.factor(3) == pytest.approx(1.3)  # a deeper draft: as the nearest one run
    clock.observe(0, predicted=1.0, seconds=0.9)
    assert clock.factor(2) == pytest.approx(1.3)
    clock.observe(4, predicted=1.0, seconds=2.0)
    assert clock.factor(3) == pytest.approx(2.0) and clock.factor(2) == pytest.approx(1.3)
    clock.observe(1, predicted=2.0, seconds=2.0)  # decayed mean of the ratios
    assert clock.factor(1) == pytest.approx((adaptive.DECAY * 1.3 + 1.0) / (adaptive.DECAY + 1.0))

    # Two rows that the costs say should draft one token: rounds that draft take 1.3x what the
    # costs say, plain steps what they say, so the batch stops drafting.
    spec = SpeculationConfig("sd", "auto")
    rows = [GammaPolicy(spec, STEEP) for _ in range(2)]
    for policy in rows:
        for _ in range(40):
            policy.observe(1, accepted=1 if _ % 2 else 0)
    choices = [(policy, 100) for policy in rows]
    assert adaptive.joint_depth(choices) >= 1
    slow = adaptive.RoundClock()
    for g in range(1, 5):
        slow.observe(g, predicted=1.0, seconds=1.3)
    slow.observe(0, predicted=1.0, seconds=1.0)
    assert adaptive.joint_depth(choices, slow) == 0


def test_a_batch_times_the_rounds_its_rows_planned_together(target, draft, costs):
    costs(STEEP)
    generation = mtad.stream(target, draft, PROMPTS[:3], method="sd", gamma="auto", max_new_tokens=12,
                             seed=0, **NO_EOS)  # fmt: skip
    for _ in generation:
        pass
    clocks = generation.batch.clocks
    assert set(clocks) <= {1, 2} and clocks[2].seen  # three rows are priced as two
    assert all(weight > 0 for clock in clocks.values() for _, weight in clock.seen.values())
