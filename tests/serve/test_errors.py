"""Every malformed request gets its 4xx with an OpenAI-style body, and the server serves on."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from serve.conftest import MODEL

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
VALID = {"model": MODEL, "prompt": "w5 w7", "max_tokens": 4, "seed": 1}
CHAT_VALID = {"model": MODEL, "messages": [{"role": "user", "content": "w5"}], "max_tokens": 4}


def request(
    url: str, method: str, path: str, body: bytes | dict | None = None
) -> tuple[int, http.client.HTTPMessage, dict]:
    """(status, headers (case-insensitive), JSON body) of one raw HTTP request."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


# (path, body, status, param): each must fail with that status, naming that field.
MALFORMED = [
    (COMPLETIONS, b"{not json", 400, None),
    (COMPLETIONS, b"\xff\xfe", 400, None),
    (COMPLETIONS, b"[1, 2]", 400, None),
    (COMPLETIONS, {"model": MODEL}, 400, "prompt"),
    (COMPLETIONS, VALID | {"prompt": 5}, 400, "prompt"),
    (COMPLETIONS, VALID | {"prompt": ""}, 400, "prompt"),
    (COMPLETIONS, VALID | {"prompt": ["w5", "w6"]}, 400, "prompt"),
    (COMPLETIONS, VALID | {"max_tokens": "10"}, 400, "max_tokens"),
    (COMPLETIONS, VALID | {"max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, VALID | {"temperature": "hot"}, 400, "temperature"),
    (COMPLETIONS, VALID | {"temperature": -1}, 400, "temperature"),
    (COMPLETIONS, VALID | {"top_p": 0}, 400, "top_p"),
    (COMPLETIONS, VALID | {"seed": -1}, 400, "seed"),
    (COMPLETIONS, VALID | {"stream": "yes"}, 400, "stream"),
    (COMPLETIONS, VALID | {"stop": ["w3", ""]}, 400, "stop"),
    (COMPLETIONS, VALID | {"stop": ["w2", "w3", "w4", "w5", "w6"]}, 400, "stop"),
    (COMPLETIONS, VALID | {"model": "gpt-4"}, 400, "model"),
    (COMPLETIONS, VALID | {"n": 2}, 400, "n"),
    (COMPLETIONS, VALID | {"best_of": 3}, 400, "best_of"),
    (COMPLETIONS, VALID | {"logprobs": 5}, 400, "logprobs"),
    (COMPLETIONS, VALID | {"presence_penalty": 0.5}, 400, "presence_penalty"),
    (COMPLETIONS, VALID | {"echo": True}, 400, "echo"),
    (COMPLETIONS, VALID | {"frobnicate": 1}, 400, "frobnicate"),
    (COMPLETIONS, VALID | {"mtad": {"method": "beam-me-up"}}, 400, "mtad.method"),
    (COMPLETIONS, VALID | {"mtad": {"gamma": 0}}, 400, "mtad.gamma"),
    (COMPLETIONS, VALID | {"mtad": {"gamma": 2.5}}, 400, "mtad.gamma"),
    (COMPLETIONS, VALID | {"mtad": {"beam_width": -1}}, 400, "mtad.beam_width"),
    (COMPLETIONS, VALID | {"mtad": {"threshold": 1.5}}, 400, "mtad.threshold"),
    (COMPLETIONS, VALID | {"mtad": {"top_k": -3}}, 400, "mtad.top_k"),
    (COMPLETIONS, VALID | {"mtad": {"tree": [4, 0]}}, 400, "mtad.tree"),
    (COMPLETIONS, VALID | {"mtad": {"tree": "4,2"}}, 400, "mtad.tree"),
    (COMPLETIONS, VALID | {"mtad": {"reference": "nope"}}, 400, "mtad.reference"),
    (COMPLETIONS, VALID | {"mtad": {"speed": "max"}}, 400, "mtad.speed"),
    (COMPLETIONS, VALID | {"mtad": "fast"}, 400, "mtad"),
    (COMPLETIONS, VALID | {"prompt": " ".join(["w5"] * 300)}, 400, "prompt"),
    (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    (CHAT, {"model": MODEL}, 400, "messages"),
    (CHAT, CHAT_VALID | {"messages": "w5"}, 400, "messages"),
    (CHAT, CHAT_VALID | {"messages": [{"role": "tool", "content": "w5"}]}, 400, "messages[0].role"),
    (CHAT, CHAT_VALID | {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (CHAT, CHAT_VALID | {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    (CHAT, CHAT_VALID | {"tools": [{"type": "function"}]}, 400, "tools"),
    (CHAT, CHAT_VALID | {"max_completion_tokens": 3}, 400, "max_completion_tokens"),
    (CHAT, CHAT_VALID | {"model": ""}, 400, "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), MALFORMED)
def test_malformed_request_is_refused_and_the_server_serves_on(server, path, body, status, param):
    got, _, error_body = request(server.url, "POST", path, body)
    assert got == status
    error = error_body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"] and "\n" not in error["message"]
    ok, _, body = request(server.url, "POST", COMPLETIONS, VALID)
    assert ok == 200 and body["usage"]["prompt_tokens"] == 2


def test_neutral_values_and_ignorable_fields_are_accepted(server):
    neutral = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "presence_penalty": 0.0, "user": "u1"}
    status, _, body = request(server.url, "POST", COMPLETIONS, VALID | neutral)
    assert status == 200, body
    options = {"stream_options": {"include_usage": True}, "max_completion_tokens": 4, "max_tokens": None}
    status, _, body = request(server.url, "POST", CHAT, CHAT_VALID | options)
    assert status == 200, body


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/v1/nothing", 404), ("GET", COMPLETIONS, 405)]
)
def test_unknown_routes_answer_in_the_same_error_shape(server, method, path, status):
    got, _, body = request(server.url, method, path)
    assert got == status and body["error"]["message"]
