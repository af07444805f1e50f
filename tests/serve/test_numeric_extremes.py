"""The server decodes every finite setting validation allows, and refuses the rest with a 400."""

from __future__ import annotations

import pytest

from serve.test_errors import COMPLETIONS, VALID, request

DECODES = [
    {"temperature": 1e308},
    {"temperature": 1e-45},
    {"temperature": 5e-324},
    {"temperature": -0.0},
    {"temperature": 2**70},
    {"top_p": 5e-324},
    {"temperature": 1e308, "mtad": {"top_k": 3}},
    {"mtad": {"top_k": 2**70}},
    {"mtad": {"threshold": 5e-324}},
    {"mtad": {"method": "mmtad", "threshold": 5e-324, "gamma": 2, "beam_width": 2}},
    {"seed": 0},
    {"seed": 2**63 - 1},
]


@pytest.mark.parametrize("extra", DECODES)
def test_extreme_but_allowed_values_decode(server, extra):
    status, _, body = request(server.url, "POST", COMPLETIONS, VALID | extra)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] <= VALID["max_tokens"]


REFUSED = [
    ({"temperature": 10**400}, "temperature"),
    ({"temperature": -5e-324}, "temperature"),
    ({"top_p": -0.0}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"seed": 2**63}, "seed"),
    ({"mtad": {"threshold": 0.0}}, "mtad.threshold"),
    ({"mtad": {"threshold": 10**400}}, "mtad.threshold"),
    ({"mtad": {"gamma": 2**70}}, "mtad.gamma"),
    # greedy ignores the temperature, but a non-finite one is still refused (the reply echoes it)
    ({"temperature": float("inf"), "mtad": {"method": "greedy"}}, "temperature"),
    ({"temperature": float("nan"), "mtad": {"method": "greedy"}}, "temperature"),
    ({"top_p": float("inf")}, "top_p"),
    ({"mtad": {"threshold": float("nan")}}, "mtad.threshold"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED)
def test_values_past_the_limits_are_a_400_naming_the_field(server, extra, param):
    status, _, body = request(server.url, "POST", COMPLETIONS, VALID | extra)
    assert status == 400, body
    assert body["error"]["param"] == param and "\n" not in body["error"]["message"]
