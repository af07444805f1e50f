"""What gamma "auto" pays for a round: forward costs, measured when a generation or a batch is
built, never inside the decode loop, and read by the loop as it sizes each round.

A curve per model and batch size holds the median seconds of a forward of k new tokens a row
(after a `PREFIX_TOKENS` prefix, interleaved `REPEATS`, through `sampling.distributions` so the
warp is included), divided by the rows that share it. `price` measures a curve's points in one
interleaved pass, so they share the machine's state: the target at `TARGET_POINTS` new tokens
(and a wider round's width, added later), the draft at `DRAFT_POINTS` and its beam width; for one
row and each power of two up to a batch's size: ~1-2 s on the default pair on a CPU, once per
process. `costs` reads them: a batch prices its rounds at its live rows rounded down to a power of
two, each priced when the batch reached it. Between measured points the cost is linear, beyond
the last one it follows the last slope.

A curve is keyed by the model's shape (architecture, dtype, device and weight format,
`mtad.runtime.fast`), not its weights: forward time does not depend on the weights, and two loads
of one pair in a process must choose the same depths, so a seed replays exactly within a process.
A point, once measured, never changes, so a later, wider method adds points past the grid without
moving the ones an earlier method reads.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from mtad.config import SamplingConfig
from mtad.decoding.sampling import distributions
from mtad.decoding.speculation import SpeculationConfig
from mtad.models import context_length, output_width
from mtad.runtime.cache import CachedModel
from mtad.runtime.fast import weights_format
from mtad.runtime.precision import synchronise

PREFIX_TOKENS = 128  # context in front of the timed forwards: a typical chat prompt's order
REPEATS = 3
#: New tokens a target forward is timed at (every method's; a wider round adds its own width).
TARGET_POINTS = (1, 2, 3, 5, 9, 17, 33)
#: Tokens a draft forward is timed at (the default beam width's; a wider one adds its own).
DRAFT_POINTS = (1, 2, 4)


@dataclass(frozen=True)
class Costs:
    """Seconds of one forward, by the number of new tokens it feeds (measured points; linear in
    between and beyond)."""

    target_s: dict[int, float]
    draft_s: dict[int, float]

    def target(self, tokens: int) -> float:
        return _interpolate(self.target_s, tokens)

    def draft(self, tokens: int) -> float:
        return _interpolate(self.draft_s, tokens)


def _interpolate(points: dict[int, float], x: int) -> float:
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    for low, high in zip(xs, xs[1:], strict=False):
        if x <= high:
            return points[low] + (points[high] - points[low]) * (x - low) / (high - low)
    low, high = xs[-2], xs[-1]  # extrapolate with the last slope
    return points[high] + (points[high] - points[low]) * (x - high) / (high - low)


#: Seconds by new tokens, by (model shape, vocabulary it is fed, rows sharing a forward).
_CURVES: dict[tuple, dict[int, float]] = {}


def price(
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    sampling: SamplingConfig,
    widest: int,
    draft_width: int = 1,
    rows: int = 1,
) -> None:
    """Measure what `costs` will read and this process has not measured yet: target forwards at
    `TARGET_POINTS` and `widest` new tokens, draft forwards at `DRAFT_POINTS` and `draft_width`
    tokens (none for a model-free draft, `draft` None: it runs no forward, and the lookups it
    makes instead are timed in `Stats.draft_seconds`), for one row and each power of two up to
    `rows`. The warp is the first caller's: its cost is small beside the forwards."""
    vocab = output_width(target)  # a subset draft maps target ids to its own
    for shared in _powers_of_two(rows):
        _measure(target, vocab, {*TARGET_POINTS, widest}, sampling, shared)
        if draft is not None:
            _measure(draft, vocab, {*DRAFT_POINTS, draft_width}, sampling, shared)


def price_rounds(
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    spec: SpeculationConfig,
    sampling: SamplingConfig,
    rows: int = 1,
) -> None:
    """`price` what `spec`'s rounds can ask for, when gamma or tree "auto" sizes them by cost
    (nothing otherwise): up to its widest verification and its draft's width."""
    if spec.adaptive or spec.sized_by_cost:
        widest = max(spec.shape.nodes(spec, g) for g in range(spec.depth + 1)) + 1
        price(target, draft, sampling, widest, spec.shape.draft_width(spec), rows)


def costs(target: PreTrainedModel, draft: PreTrainedModel | None, rows: int = 1) -> Costs:
    """The measured costs of one row's share of forwards over `rows` rows (a power of two that
    `price` has measured); a model-free draft's steps cost 0."""
    vocab = output_width(target)
    target_s = _CURVES.get(_key(target, vocab, rows))
    draft_s = {1: 0.0} if draft is None else _CURVES.get(_key(draft, vocab, rows))
    if target_s is None or draft_s is None:
        raise RuntimeError(f"forward costs for {rows} row(s) were not priced before decoding")
    return Costs(dict(target_s), dict(draft_s))


def _powers_of_two(rows: int) -> list[int]:
    return [1 << i for i in range(max(1, rows).bit_length())]


def _measure(
    model: PreTrainedModel, vocab: int, sizes: set[int], sampling: SamplingConfig, rows: int
) -> None:
    key = _key(model, vocab, rows)
    curve = _CURVES.get(key, {})
    missing = sorted(sizes - curve.keys())
    if missing:  # stored once measured: a pass that fails leaves no half curve for `costs` to read
        _CURVES[key] = curve | forward_seconds(model, vocab, missing, sampling, rows)


def _key(model: PreTrainedModel, vocab: int, rows: int) -> tuple:
    return _shape(model), vocab, rows


#: A model's config as JSON, by model (writing it deep-copies the config, a cost every row that
#: joins a batch would pay otherwise). Configs are not edited after loading.
_CONFIG_JSON: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shape(model: PreTrainedModel) -> tuple:
    weight = model.get_input_embeddings().weight
    if model not in _CONFIG_JSON:
        _CONFIG_JSON[model] = model.config.to_json_string(use_diff=False)
    return (_CONFIG_JSON[model], str(weight.dtype), str(weight.device), weights_format(model))


def forward_seconds(
    model: PreTrainedModel,
    vocab: int,
    sizes: list[int],
    sampling: SamplingConfig,
    rows: int = 1,
    prefix_tokens: int | None = None,
    repeats: int | None = None,
) -> dict[int, float]:
    """Median seconds of a forward of k new tokens a row after a prefix (`PREFIX_TOKENS`), per k
    (interleaved `REPEATS`), divided by `rows`: one row's share of a forward over `rows` rows.
    `benchmarks/forward_costs.py` prints these beside the machine's roofline."""
    prefix_tokens = PREFIX_TOKENS if prefix_tokens is None else prefix_tokens
    room = context_length(model) or prefix_tokens * 4
    # Rows share the prefix budget: the measurement stalls a running batch, so its prefill stays
    # ~prefix_tokens tokens in all (a shorter context only shaves the attention's part).
    prefix_len = max(1, min(prefix_tokens // rows, room - max(sizes) - 1))
    cached = CachedModel(model, vocab)
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (rows, prefix_len), generator=generator)
    cached.forward(prefix)
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range((REPEATS if repeats is None else repeats) + 1):  # the first pass warms up, dropped
        for k in sizes:
            block = torch.randint(0, vocab, (rows, k), generator=generator)
            synchronise(cached.device)
            start = time.perf_counter()
            distributions(cached, block, sampling, keep=k)
            synchronise(cached.device)
            times[k].append(time.perf_counter() - start)
            cached.truncate(prefix_len)
    return {k: statistics.median(seconds[1:]) / rows for k, seconds in times.items()}
