"""A model that emits NaN for one request fails that request with a clear JSON error; the requests
decoding beside it in the same batch finish normally, and the server serves on."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from urllib.parse import urlsplit

import pytest

from mtad.serve import BackgroundServer, ServeConfig, create_app
from serve.conftest import DEFAULTS, MODEL, tiny_pair
from serve.test_errors import COMPLETIONS, request
from test_nonfinite_logits import rig

POISONED = {"model": MODEL, "prompt": "w5 w13", "max_tokens": 12, "seed": 1}  # w13 is POISON
CLEAN = {"model": MODEL, "prompt": "w5 w7", "max_tokens": 12, "seed": 2}


@pytest.fixture(scope="module")
def server():
    target, draft = tiny_pair(delay_s=0.01)  # every target call sleeps: requests overlap
    rig(target.model, math.nan)
    rig(draft.model, math.nan)
    with BackgroundServer(create_app(target, draft, ServeConfig(MODEL, DEFAULTS))) as server:
        yield server


def _assert_clear_failure(error: dict) -> None:
    assert error["code"] == "model_numerical_error" and error["type"] == "server_error"
    assert "NaN" in error["message"] and "\n" not in error["message"]
    assert "Traceback" not in error["message"] and "internal error" not in error["message"]


@pytest.mark.parametrize("method", ["ar", "sd", "mtad"])
def test_the_poisoned_request_gets_a_clear_error(server, method):
    status, _, body = request(server.url, "POST", COMPLETIONS, POISONED | {"mtad": {"method": method}})
    assert status == 500
    _assert_clear_failure(body["error"])
    status, _, body = request(server.url, "POST", COMPLETIONS, CLEAN | {"mtad": {"method": method}})
    assert status == 200 and body["usage"]["completion_tokens"] == 12


def test_a_stream_ends_with_the_error_event(server):
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", COMPLETIONS, body=json.dumps(POISONED | {"stream": True}))
    response = connection.getresponse()
    events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    connection.close()
    assert response.status == 200 and events[-1] == "[DONE]"
    _assert_clear_failure(json.loads(events[-2])["error"])


def test_the_other_rows_of_the_batch_are_unaffected(server):
    answers: dict[int, tuple[int, dict]] = {}

    def send(i: int, body: dict) -> None:
        status, _, reply = request(server.url, "POST", COMPLETIONS, body)
        answers[i] = (status, reply)

    clean = [threading.Thread(target=send, args=(i, CLEAN | {"seed": i})) for i in range(3)]
    for thread in clean:
        thread.start()
    deadline = time.monotonic() + 10
    while request(server.url, "GET", "/health")[2]["batch_rows"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert request(server.url, "GET", "/health")[2]["batch_rows"] == 3  # all three decoding together
    send(3, POISONED)  # joins their batch, fails at its first token
    assert all(thread.is_alive() for thread in clean)  # 12 tokens x 10 ms: still decoding
    for thread in clean:
        thread.join(30)
    assert answers[3][0] == 500
    _assert_clear_failure(answers[3][1]["error"])
    for i in range(3):
        status, reply = answers[i]
        assert status == 200 and reply["usage"]["completion_tokens"] == 12
        assert reply["choices"][0]["finish_reason"] == "length"
    assert request(server.url, "GET", "/health")[0] == 200
