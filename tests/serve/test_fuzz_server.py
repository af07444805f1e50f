"""Generated request bodies through the ASGI app: a 200, or a 4xx with one-line OpenAI-style JSON.

Never a 5xx, never an error event inside a stream. Bodies are plausible requests (most decode),
plausible ones with one field made hostile (junk from `fuzz`, unknown fields, a huge prompt), or
raw bytes: not JSON, not UTF-8, nested thousands deep.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from fuzz import FAST, PLAUSIBLE, SLOW, Deep, junk, one_line, settings_dicts
from mtad.serve import ServeConfig, create_app
from serve.conftest import DEFAULTS, MODEL, tiny_pair

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
OPTIONS = {k: v for k, v in PLAUSIBLE.items() if k not in ("temperature", "top_p", "seed", "max_new_tokens")}
words = st.lists(st.sampled_from([f"w{i}" for i in range(2, 16)]), min_size=1, max_size=5).map(" ".join)
FIELDS = {
    "max_tokens": st.integers(1, 4),
    "temperature": PLAUSIBLE["temperature"],
    "top_p": PLAUSIBLE["top_p"],
    "seed": PLAUSIBLE["seed"],
    "stop": st.one_of(words, st.lists(words, max_size=4)),
    "stream": st.booleans(),
    "user": words,
    "n": st.just(1),
    "mtad": settings_dicts(OPTIONS, {name: junk for name in OPTIONS} | {"speed": junk}),
}
HOSTILE = {name: junk for name in FIELDS} | {"prompt": junk, "messages": junk, "frobnicate": junk}
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": words}),
    min_size=1,
    max_size=3,
)


def _bodies(path: str) -> st.SearchStrategy:
    text = {"prompt": words} if path == COMPLETIONS else {"messages": messages}
    plausible = st.fixed_dictionaries({"model": st.just(MODEL), **text, "max_tokens": st.integers(1, 4)})
    return st.tuples(plausible, settings_dicts(FIELDS, HOSTILE)).map(lambda t: t[0] | t[1])


def encode(body: object) -> bytes:
    """JSON bytes, with NaN/Infinity literals as Python writes them; a `Deep` list is written
    directly (json.dumps would recurse thousands of frames deep)."""
    deep: list[Deep] = []

    def default(value: object) -> object:
        raise TypeError(type(value).__name__)

    def swap(value: object) -> object:
        if isinstance(value, Deep):
            deep.append(value)
            return f"@@deep{len(deep) - 1}@@"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(body), default=default)
    for i, value in enumerate(deep):
        text = text.replace(f'"@@deep{i}@@"', "[" * value.depth + "]" * value.depth)
    return text.encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b'{"model": "tiny-pair", "prompt": "\\ud800"}']),
)
cases = st.one_of(
    st.tuples(st.just(COMPLETIONS), _bodies(COMPLETIONS).map(encode)),
    st.tuples(st.just(CHAT), _bodies(CHAT).map(encode)),
    st.tuples(st.sampled_from([COMPLETIONS, CHAT]), raw_bodies),
)


@pytest.fixture(scope="module")
def client():
    target, draft = tiny_pair()
    with TestClient(create_app(target, draft, ServeConfig(MODEL, DEFAULTS))) as client:
        yield client


def check(client: TestClient, case: tuple[str, bytes]) -> None:
    path, raw = case
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    event(f"HTTP {response.status_code}")
    assert response.status_code in (200, 400, 413), response.text[:300]
    if response.status_code != 200:
        error = response.json()["error"]
        assert one_line(error["message"]) and len(error["message"]) < 400, error
        assert error["type"] == "invalid_request_error"
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        assert '"error"' not in response.text and response.text.rstrip().endswith("data: [DONE]")
    else:
        body = json.loads(raw)  # it was answered 200, so it is a JSON object
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULTS["max_new_tokens"]
        assert response.json()["usage"]["completion_tokens"] <= asked


@FAST
@given(case=cases)
def test_every_request_is_answered_200_or_a_one_line_4xx(client, case):
    check(client, case)


@pytest.mark.slow
@SLOW
@given(case=cases)
def test_every_request_is_answered_200_or_a_one_line_4xx_ten_thousand_cases(client, case):
    check(client, case)
