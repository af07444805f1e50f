"""Hostile values for property-based tests of the three edges (library, CLI, server).

Each decoding setting draws either from its own plausible range (so many cases really decode) or
from `junk`: floats at the extremes (subnormals, 1e308, -0.0, NaN, inf), huge ints, empty and
huge strings, lone surrogates, deep nesting. The property at every edge is the same: a value
decodes or gets the one-line error; never a traceback or a 5xx.

`FAST` runs in the default suite (a few hundred cases, a few seconds per edge); `SLOW` is the
slow group's 10,000 cases per edge. Both are derandomised with no example database, so a failure
reproduces on every machine and nothing is written to the work tree.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import mtad

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
FAST = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=_QUIET
)
SLOW = settings(
    max_examples=10_000, deadline=None, derandomize=True, database=None, suppress_health_check=_QUIET
)

FLOAT_EXTREMES = [
    0.0, -0.0, 5e-324, -5e-324, 1e-45, 1.1e-38, 1e-300, 1e-30, 1e308, -1e308,
    1.7976931348623157e308, math.inf, -math.inf, math.nan, 1.0, 0.5, 1 - 2**-53, 1 + 2**-52,
]  # fmt: skip
INT_EXTREMES = [0, 1, -1, 2, 33, 257, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 2**1000, -(2**1000), 10**400]

floats = st.one_of(
    st.sampled_from(FLOAT_EXTREMES), st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
)
ints = st.one_of(st.sampled_from(INT_EXTREMES), st.integers(), st.integers(-3, 40))
# Any code point, lone surrogates included (st.characters leaves them out unless told).
characters = st.characters(codec=None, exclude_categories=())
texts = st.one_of(
    st.text(characters, max_size=12),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "w5 w7", "auto", "best", "mtad"]),
)
huge_texts = st.integers(1, 60_000).map(lambda n: "w5 " * n)


class Deep(list):
    """A list nested `depth` deep, shown in one line (printing it whole would blow the stack)."""

    def __init__(self, depth: int) -> None:
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        super().__init__([value])
        self.depth = depth

    def _repr_pretty_(self, printer, cycle) -> None:  # for hypothesis's report; repr() is list's own
        printer.text(f"Deep({self.depth})")


deep = st.integers(1, 3000).map(Deep)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
junk = st.one_of(scalars, nested, deep, huge_texts)


def mixed(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly plausible values (they exercise the decode), the rest junk (they exercise the refusal)."""
    return st.one_of(plausible, plausible, plausible, junk)


# Every decoding setting of `mtad.generate`, each from its own plausible range (extremes included).
PLAUSIBLE = {
    "method": st.sampled_from(mtad.METHODS),
    "gamma": st.one_of(st.integers(1, 6), st.just("auto"), st.just(32)),
    "beam_width": st.one_of(st.integers(1, 4), st.just(32)),
    "threshold": st.one_of(st.floats(0, 1, exclude_min=True), st.sampled_from(FLOAT_EXTREMES)),
    "with_replacement": st.booleans(),
    "tree": st.lists(st.integers(1, 3), min_size=1, max_size=3).flatmap(
        lambda t: st.sampled_from([t, tuple(t)])
    ),
    "reference": st.sampled_from(["best", "max", "own"]),
    "temperature": st.one_of(st.floats(0, 3), st.sampled_from(FLOAT_EXTREMES), st.just(2**70)),
    "top_k": st.one_of(st.integers(0, 20), st.sampled_from([2**70, 2**63])),
    "top_p": st.one_of(st.floats(0, 1, exclude_min=True), st.sampled_from(FLOAT_EXTREMES)),
    "max_new_tokens": st.integers(0, 6),
    "seed": st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([0, 2**63 - 1])),
}
SETTINGS = {name: mixed(values) for name, values in PLAUSIBLE.items()}


def settings_dicts(plausible: dict, hostile: dict) -> st.SearchStrategy:
    """Dicts of settings: plausible ones (most decode), plausible ones with one hostile value, or
    any mix (the refusals). Keys are optional: a missing setting takes its default."""
    calm = st.fixed_dictionaries({}, optional=plausible)
    one_bad = st.tuples(calm, st.sampled_from(sorted(hostile)), junk).map(lambda t: t[0] | {t[1]: t[2]})
    return st.one_of(calm, calm, calm, one_bad, st.fixed_dictionaries({}, optional=hostile))


decoding_settings = settings_dicts(PLAUSIBLE, SETTINGS)


def one_line(message: str) -> bool:
    """A short, single-line error, as every edge promises."""
    return bool(message) and "\n" not in message and "Traceback" not in message
