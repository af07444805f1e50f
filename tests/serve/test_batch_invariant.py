"""`--batch-invariant`: concurrent seeded requests get exactly the tokens they get alone.

Every target call of the slow pair sleeps 10 ms, so the 8 requests below are in flight together
(the server's /health shows 8 rows); each must still equal the engine run alone on its pair.
"""

from __future__ import annotations

import threading

import pytest

from serve.test_errors import COMPLETIONS, request

N = 8


@pytest.fixture(scope="module")
def invariant(start_server):
    return start_server(delay_s=0.01, batch_invariant=True)


def _concurrently(url: str, bodies: list[dict]) -> tuple[list[dict], int]:
    """The replies to `bodies`, all sent at once; and the most rows /health saw decoding together."""
    replies: list = [None] * len(bodies)
    most = 0

    def send(i: int) -> None:
        status, _, body = request(url, "POST", COMPLETIONS, bodies[i])
        assert status == 200, body
        replies[i] = body

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most = max(most, request(url, "GET", "/health")[2]["batch_rows"])
    for thread in threads:
        thread.join()
    return replies, most


def _body(prompt: str, seed: int, **mtad) -> dict:
    return {"model": "tiny-pair", "prompt": prompt, "max_tokens": 16, "seed": seed, "mtad": mtad}


@pytest.mark.parametrize(
    "options",
    [{"method": "mtad", "gamma": 3}, {"method": "sd", "gamma": "auto"}, {"method": "ar"}],
    ids=["mtad-gamma3", "sd-auto", "ar"],
)
def test_eight_identical_seeded_requests_equal_the_lone_one(invariant, alone, options):
    replies, most = _concurrently(invariant.url, [_body("w5 w7 w3", 11, **options)] * N)
    assert most >= 2  # they did run together
    texts = {reply["choices"][0]["text"] for reply in replies}
    expected = alone("w5 w7 w3", max_new_tokens=16, seed=11, eos_token_id=[], **options)
    assert texts == {expected.text} and len(expected.tokens) == 16


def test_a_request_ignores_different_neighbours(invariant, alone):
    probe = _body("w9 w2", 5, method="mtad", gamma=2)
    neighbours = [_body(f"w{3 + i} w{4 + i} w5", 100 + i, method=m) for i, m in enumerate(["sd", "ar"] * 3)]
    replies, _ = _concurrently(invariant.url, [probe, *neighbours, probe])
    expected = alone("w9 w2", max_new_tokens=16, seed=5, eos_token_id=[], method="mtad", gamma=2).text
    assert replies[0]["choices"][0]["text"] == replies[-1]["choices"][0]["text"] == expected


def test_health_says_so(invariant, server):
    assert request(invariant.url, "GET", "/health")[2]["batch_invariant"] is True
    assert request(server.url, "GET", "/health")[2]["batch_invariant"] is False
