"""Under load and faults: no mixing, a bounded queue, cancelled disconnects, a time limit."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest

import mtad
from serve.conftest import MODEL
from serve.test_errors import COMPLETIONS, request

CLIENTS, REQUESTS_EACH = 16, 4
METHODS = mtad.METHODS
DELAY_S = 0.02  # per target call on the slow pair


def job(i: int) -> dict:
    """The i-th request of the load test: its own prompt, seed, method and streaming mode."""
    words = " ".join(f"w{2 + (i * 7 + k) % 14}" for k in range(1 + i % 5))
    return {
        "prompt": words,
        "seed": 1000 + i,
        "method": METHODS[i % len(METHODS)],
        "max_tokens": 8 + i % 9,
        "stream": i % 2 == 1,
    }


def send(client: openai.OpenAI, spec: dict, **extra) -> tuple[str, str, int]:
    settings = {
        "model": MODEL,
        "prompt": spec["prompt"],
        "max_tokens": spec["max_tokens"],
        "seed": spec["seed"],
        "extra_body": {"mtad": {"method": spec["method"]}},
        **extra,
    }
    if spec["stream"]:
        chunks = list(client.completions.create(stream=True, **settings))
        text = "".join(c.choices[0].text for c in chunks)
        return text, chunks[-1].choices[0].finish_reason, chunks[-1].usage.completion_tokens
    response = client.completions.create(**settings)
    return response.choices[0].text, response.choices[0].finish_reason, response.usage.completion_tokens


def test_concurrent_clients_get_what_they_would_get_alone(server, alone):
    specs = [job(i) for i in range(CLIENTS * REQUESTS_EACH)]
    expected = [
        alone(s["prompt"], method=s["method"], seed=s["seed"], max_new_tokens=s["max_tokens"]) for s in specs
    ]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def one_client(c: int) -> list[tuple[str, str, int]]:
        return [send(client, specs[c * REQUESTS_EACH + r]) for r in range(REQUESTS_EACH)]

    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        got = [answer for answers in pool.map(one_client, range(CLIENTS)) for answer in answers]
    assert time.monotonic() - start < 60
    assert got == [(e.text, e.finish_reason, len(e.tokens)) for e in expected]


@pytest.fixture(scope="module")
def slow_server(start_server):
    """A pair that takes DELAY_S per target call, one request at a time, room for one waiting."""
    return start_server(delay_s=DELAY_S, max_queue=1, max_batch_size=1)


@pytest.fixture(scope="module")
def slow_batching_server(start_server):
    """The slow pair decoding up to two requests together, room for one waiting."""
    return start_server(delay_s=DELAY_S, max_queue=1, max_batch_size=2)


def health(url: str) -> dict:
    return json.load(urllib.request.urlopen(f"{url}/health", timeout=10))


def wait_until(condition, timeout_s: float) -> float:
    """Seconds until `condition()` held; fails after `timeout_s`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - start


def slow(tokens: int, stream: bool = False) -> dict:
    """A raw request body: `tokens` target calls (method ar, no EOS on the slow pair)."""
    return {
        "model": MODEL,
        "prompt": "w5 w6",
        "max_tokens": tokens,
        "seed": 3,
        "stream": stream,
        "mtad": {"method": "ar"},
    }


def slow_stream(client: openai.OpenAI, tokens: int) -> openai.Stream:
    return client.completions.create(
        model=MODEL,
        prompt="w5 w6",
        max_tokens=tokens,
        seed=3,
        stream=True,
        extra_body={"mtad": {"method": "ar"}},
    )


def test_full_queue_is_a_429_and_nothing_accepted_is_dropped(slow_server):
    client = openai.OpenAI(base_url=f"{slow_server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    chunks = iter(slow_stream(client, 60))
    next(chunks)  # the first block arrived: the worker is decoding this request now
    queued: list[int] = []
    waiter = threading.Thread(
        target=lambda: queued.append(request(slow_server.url, "POST", COMPLETIONS, slow(5))[0])
    )
    waiter.start()
    wait_until(lambda: health(slow_server.url)["queue_depth"] == 1, timeout_s=10)

    status, headers, body = request(slow_server.url, "POST", COMPLETIONS, slow(5))
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"

    assert list(chunks)[-1].usage.completion_tokens == 60
    waiter.join(30)
    assert queued == [200]


def _open_then_drop(url: str, body: dict, wait_for_data: bool) -> None:
    """Send a request on a raw socket, wait for the first event (or a moment), then hang up."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + payload)
        if wait_for_data:
            received = b""
            while b"data:" not in received:
                received += sock.recv(4096)
        else:
            wait_until(lambda: health(url)["busy"], timeout_s=10)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_the_generation_and_frees_the_worker(slow_server, stream):
    # 500 target calls alone would keep the worker busy for 10 s.
    _open_then_drop(slow_server.url, slow(500, stream=stream), wait_for_data=stream)
    freed_after = wait_until(lambda: not health(slow_server.url)["busy"], timeout_s=5)
    assert freed_after < 2
    status, _, body = request(slow_server.url, "POST", COMPLETIONS, slow(3))
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    metrics = urllib.request.urlopen(f"{slow_server.url}/metrics").read().decode()
    assert 'mtad_requests_total{endpoint="/v1/completions",outcome="cancelled"}' in metrics


def test_time_limit_stops_a_long_generation(start_server):
    server = start_server(delay_s=DELAY_S, request_timeout_s=0.3)
    start = time.monotonic()
    status, _, body = request(server.url, "POST", COMPLETIONS, slow(500))
    assert status == 504 and body["error"]["code"] == "time_limit_exceeded"
    assert time.monotonic() - start < 3
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.APIError, match="time limit"):
        list(slow_stream(client, 500))
    status, _, body = request(server.url, "POST", COMPLETIONS, slow(3))
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_concurrent_greedy_clients_in_a_batch_get_their_solo_tokens(start_server, alone):
    """Continuous batching at temperature 0 (float32): every request equals its solo greedy run,
    and /metrics saw steps with several rows."""
    server = start_server(max_batch_size=4)
    specs = [job(i) | {"max_tokens": 12 + i % 5} for i in range(12)]
    expected = [
        alone(s["prompt"], method=s["method"], seed=s["seed"], max_new_tokens=s["max_tokens"], temperature=0)
        for s in specs
    ]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def one(spec: dict) -> tuple[str, str, int]:
        return send(client, spec, temperature=0)

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(one, specs))
    assert got == [(e.text, e.finish_reason, len(e.tokens)) for e in expected]
    metrics = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    steps = {
        line.split('le="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("mtad_batch_size_bucket")
    }
    assert steps["+Inf"] > steps["1.0"] > 0  # some steps ran one row, some ran more
    assert (
        float(next(v.split()[-1] for v in metrics.splitlines() if v.startswith("mtad_batch_tokens_total")))
        > 0
    )


def test_a_full_batch_queues_then_429s_and_a_disconnect_frees_its_row(slow_batching_server):
    url = slow_batching_server.url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    first, second = iter(slow_stream(client, 60)), iter(slow_stream(client, 60))
    next(first), next(second)  # both decode now, together
    wait_until(lambda: health(url)["batch_rows"] == 2, timeout_s=10)
    queued: list[int] = []
    waiter = threading.Thread(target=lambda: queued.append(request(url, "POST", COMPLETIONS, slow(5))[0]))
    waiter.start()
    wait_until(lambda: health(url)["queue_depth"] == 1, timeout_s=10)
    status, headers, body = request(url, "POST", COMPLETIONS, slow(5))
    assert status == 429 and body["error"]["code"] == "queue_full"
    second.close()  # the client goes away: its row leaves, the waiting request joins
    waiter.join(30)
    assert queued == [200]
    assert list(first)[-1].usage.completion_tokens == 60
    wait_until(lambda: not health(url)["busy"], timeout_s=10)
    assert health(url)["batch_rows"] == 0
