"""gamma "auto": each round drafts as many tokens as pays, and none when speculation cannot pay.

A round that drafts g tokens returns 1 + sum_{j<=g} P(L >= j) tokens on average (L: accepted
length) and costs one target forward over its new nodes plus the draft's steps. `GammaPolicy`
picks the g in 0..depth that maximises expected tokens per second:

    g* = argmax_g  (1 + sum_{j=1..g} a_j) / (T_target(1 + nodes(g)) + T_draft(g))

- Costs (`Costs`) are measured when a generation or a batch is built, once per model, batch
  size and process (`mtad.decoding.pricing`): target forwards of k new tokens after a prefix and
  draft steps of 1 and of `beam_width` tokens, warp included. The loop only reads them.
- a_j = P(L >= j) are estimated online from the rounds so far as a chain of conditional rates
  (see `GammaPolicy`), from counts decayed by `DECAY` each round. The decay also runs in rounds
  that draft nothing, so a policy that stopped drafting drifts back to its prior and probes
  again: acceptance changes with the text (code, lists, prose).
- g = 0 is a plain target step: with a weak draft on a CPU where verification is not free, the
  policy stops paying for speculation. A depth above 0 must beat it by `DRAFT_MARGIN` (the work
  a round does beside its forwards is not in the costs).

Losslessness is untouched: g depends only on rounds already committed, never on the tokens of
the round it sizes, so sd and specinfer still sample exactly the target distribution.
"""

from __future__ import annotations

from mtad.decoding.pricing import Costs
from mtad.decoding.speculation import SpeculationConfig

DECAY = 0.97  # per round: evidence from ~30 rounds back weighs a third of the latest
PRIOR_ROUNDS = 2.0
PRIOR_RATE = 0.5
#: A round drafts only when it is expected to beat a plain target step by this fraction: its costs
#: hold its forwards, not the work beside them (the draft's warp, the acceptance test over every
#: drafted position, rolling caches back). Once forwards are fast, rounds priced at break-even
#: lose to plain steps by about this much (`docs/results/native-kernels-2026-12/`).
DRAFT_MARGIN = 0.10


def round_cost(spec: SpeculationConfig, drafted: int, costs: Costs) -> float:
    """Seconds of one round of `spec`'s method drafting `drafted` tokens deep (0: a target step)."""
    if drafted == 0:
        return costs.target(1)
    shape = spec.shape  # its nodes and draft forwards (`mtad.decoding.shapes`)
    return costs.target(1 + shape.nodes(spec, drafted)) + shape.draft_seconds(spec, drafted, costs)


class GammaPolicy:
    """Chooses each round's draft depth from measured costs and decayed acceptance counts.

    Acceptance is modelled as a chain: c_j = P(position j accepted | positions < j accepted),
    so P(L >= j) = c_1 ... c_j. Each c_j is estimated from the rounds that reached position j
    (decayed), shrunk toward a prior worth `PRIOR_ROUNDS` rounds: `PRIOR_RATE` for c_1, and
    the estimate of c_{j-1} for deeper positions, so a draft that is right at position 1 is
    trusted at positions it has not been tried at yet, and one that is wrong is not.
    """

    def __init__(self, spec: SpeculationConfig, costs: Costs) -> None:
        self.spec = spec
        self.tried = [0.0] * spec.depth  # rounds that drafted position j + 1 with all before it accepted
        self.passed = [0.0] * spec.depth  # ... and accepted it
        self.use_costs(costs)

    def use_costs(self, costs: Costs) -> None:
        """Price rounds with `costs` from now on (a batch grew or shrank); acceptance is kept."""
        self.costs = costs
        self.cost = [round_cost(self.spec, g, costs) for g in range(self.spec.depth + 1)]

    def reach(self) -> list[float]:
        """Estimated P(L >= j) for j = 1..depth (non-increasing by construction)."""
        estimates, prior, reach = [], PRIOR_RATE, 1.0
        for tried, passed in zip(self.tried, self.passed, strict=True):
            rate = (passed + prior * PRIOR_ROUNDS) / (tried + PRIOR_ROUNDS)
            reach *= rate
            estimates.append(reach)
            prior = rate
        return estimates

    def choose(self, most: int) -> int:
        """The depth in 0..min(most, depth) with the most expected tokens per second (a depth
        above 0 only where it beats a plain step by `DRAFT_MARGIN`)."""
        best, best_rate, expected = 0, (1.0 + DRAFT_MARGIN) / self.cost[0], 1.0
        for g, reach in enumerate(self.reach()[: max(0, most)], start=1):
            expected += reach
            rate = expected / self.cost[g]
            if rate > best_rate:
                best, best_rate = g, rate
        return best

    def rates(self, most: int) -> list[tuple[float, float]]:
        """(expected tokens, seconds) of a round drafting g = 0..min(most, depth) deep."""
        expected, points = 1.0, [(1.0, self.cost[0])]
        for g, reach in enumerate(self.reach()[: max(0, most)], start=1):
            expected += reach
            points.append((expected, self.cost[g]))
        return points

    def observe(self, drafted: int, accepted: int) -> None:
        """Record a round (drafted 0 included: evidence decays toward the prior either way)."""
        for j in range(len(self.tried)):
            self.tried[j] *= DECAY
            self.passed[j] *= DECAY
            if j < drafted and j <= accepted:  # position j + 1 was drafted and reached
                self.tried[j] += 1
                self.passed[j] += j < accepted


class NodePolicy:
    """Tree "auto": how many of a round's candidate nodes the target verifies.

    The proposer offers nodes best first, each with its draft path probability P_i (a parent
    ranks above its children, so every prefix is a tree). Verifying the first k is expected to
    return 1 + c (P_1 + ... + P_k) tokens for T_target(1 + k) seconds; the policy takes the k,
    0 included, with the most tokens per second. c calibrates draft confidence against what the
    target accepted: decayed accepted lengths over decayed predicted sums, shrunk toward 1
    (trusting the draft) by a prior worth `PRIOR_ROUNDS` rounds. As with gamma "auto", k depends
    only on rounds already committed, so lossless verification stays lossless.
    """

    def __init__(self, costs: Costs) -> None:
        self.predicted = self.accepted = 0.0
        self.last = 0.0  # the predicted sum of the round being verified
        self.use_costs(costs)

    def use_costs(self, costs: Costs) -> None:
        """Price rounds with `costs` from now on (a batch grew or shrank); calibration is kept."""
        self.costs = costs
        self.seconds: list[float] = []  # [k] = T_target(1 + k), filled as far as asked

    def _seconds(self, nodes: int) -> float:
        while len(self.seconds) <= nodes:  # `choose` runs for every node a tree grows: price once
            self.seconds.append(self.costs.target(1 + len(self.seconds)))
        return self.seconds[nodes]

    @property
    def calibration(self) -> float:
        return (self.accepted + PRIOR_ROUNDS) / (self.predicted + PRIOR_ROUNDS)

    def choose(self, path_probabilities: list[float]) -> int:
        c, total = self.calibration, 0.0
        best, best_rate, best_total = 0, (1.0 + DRAFT_MARGIN) / self._seconds(0), 0.0
        for k, probability in enumerate(path_probabilities, start=1):
            total += probability
            rate = (1.0 + c * total) / self._seconds(k)
            if rate > best_rate:
                best, best_rate, best_total = k, rate, total
        self.last = best_total
        return best

    def observe(self, accepted: int) -> None:
        self.predicted = DECAY * self.predicted + self.last
        self.accepted = DECAY * self.accepted + (accepted if self.last else 0.0)
        self.last = 0.0


def joint_depth(choices: list[tuple[GammaPolicy, int]], clock: RoundClock | None = None) -> int:
    """One depth for rows that share their forwards: each (policy, most) is a row of a batch.

    Rows of a batch wait for each other: a round lasts as long as its widest verification, and a
    draft forward runs if any row drafts. Rows choosing alone split (one drafts, its neighbour does
    not) and every row pays for the widest; so the batch drafts one depth for all, the g with the
    most expected tokens per second summed over its rows (a row whose budget is shorter drafts
    less). Costs are each row's share of a forward over the batch's rows (`mtad.decoding.pricing`),
    scaled by what the batch's rounds of that depth really took (`clock`). One row chooses exactly
    as alone (`GammaPolicy.choose`).
    """
    if len(choices) == 1:
        policy, most = choices[0]
        return policy.choose(most)
    curves = [policy.rates(most) for policy, most in choices]
    best, best_rate = 0, 0.0
    for g in range(max(len(curve) for curve in curves)):
        tokens = sum(curve[min(g, len(curve) - 1)][0] for curve in curves)
        seconds = predicted_seconds(choices, g) * (clock.factor(g) if clock else 1.0)
        rate = tokens / seconds
        if g == 0:
            best_rate = rate * (1.0 + DRAFT_MARGIN)
        elif rate > best_rate:
            best, best_rate = g, rate
    return best


def predicted_seconds(choices: list[tuple[GammaPolicy, int]], depth: int) -> float:
    """A batch round's seconds at `depth` by the measured costs: the rows' shares summed."""
    return sum(policy.cost[min(depth, most, policy.spec.depth)] for policy, most in choices)


class RoundClock:
    """What a batch's rounds of each depth really take, against what the measured costs predict.

    The costs are forwards timed before decoding. A batch's round also runs every row's warp,
    draws, acceptance and bookkeeping, one row after another, and its forwards carry masks: on
    the default pair with 8 rows a drafting round took longer than its forwards by more than a
    plain step did, and speculation that the costs priced as paying did not. So the batch keeps,
    per depth, a decayed mean of observed over predicted seconds (`observe`), and `joint_depth`
    scales its predictions by it. A drafting depth not yet run takes the factor of the nearest
    drafting depth run (each depth once would be a costly probe of every depth); a plain step
    not yet run, or the first drafting depth, takes the lowest factor seen (or 1): an optimistic
    guess, so it gets run and measured instead of being ruled out by a guess.
    """

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float]] = {}  # depth -> (decayed sum of ratios, weight)

    def factor(self, depth: int) -> float:
        if depth in self.seen:
            return self._mean(depth)
        drafting = [seen for seen in self.seen if seen > 0]
        if depth > 0 and drafting:  # a drafting round costs what the nearest drafting depth did
            return self._mean(min(drafting, key=lambda seen: (abs(seen - depth), seen)))
        return min([1.0] + [self._mean(seen) for seen in self.seen])

    def _mean(self, depth: int) -> float:
        total, weight = self.seen[depth]
        return total / weight

    def observe(self, depth: int, predicted: float, seconds: float) -> None:
        total, weight = self.seen.get(depth, (0.0, 0.0))
        self.seen[depth] = (DECAY * total + seconds / predicted, DECAY * weight + 1.0)
