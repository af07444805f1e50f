"""The OpenAI-compatible endpoints through the official client, against a live loopback server."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

import mtad
from serve.conftest import MODEL

PROMPT = "w5 w7 w3 w9"
MESSAGES = [{"role": "system", "content": "w2"}, {"role": "user", "content": "w5 w6 w8"}]


def test_completion_matches_the_engine_alone(client, alone):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, seed=7)
    expected = alone(PROMPT, max_new_tokens=12, seed=7)
    choice = response.choices[0]
    assert response.object == "text_completion" and response.model == MODEL
    assert choice.text == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == 4
    assert response.usage.completion_tokens == len(expected.tokens)
    assert response.usage.total_tokens == 4 + len(expected.tokens)


def test_chat_completion_applies_the_template(client, alone):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=3)
    expected = alone(MESSAGES, chat=True, max_new_tokens=10, seed=3)
    message = response.choices[0].message
    assert response.object == "chat.completion"
    assert message.role == "assistant" and message.content == expected.text
    assert response.usage.prompt_tokens == 7  # w3 w2 w3 w5 w6 w8 w4


def test_usage_and_decoding_statistics(client):
    response = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, seed=11, extra_body={"mtad": {"method": "sd", "gamma": 3}}
    )
    stats = response.mtad
    assert stats["method"] == "sd" and stats["gamma"] == 3 and stats["seed"] == 11
    assert stats["new_tokens"] == response.usage.completion_tokens
    assert 0 <= stats["acceptance_rate"] <= 1
    assert 1 <= stats["block_efficiency"] <= 4
    assert stats["target_calls"] >= 1 and stats["tokens_per_s"] > 0


@pytest.mark.parametrize("method", mtad.METHODS)
def test_stream_chunks_reassemble_the_whole_completion(client, method):
    settings = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 20,
        "seed": 5,
        "extra_body": {"mtad": {"method": method}},
    }
    whole = client.completions.create(**settings)
    chunks = list(client.completions.create(stream=True, **settings))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.usage == whole.usage
    assert last.mtad["new_tokens"] == whole.mtad["new_tokens"]
    # one chunk per committed block that adds text (EOS and special tokens add none), then the last
    assert all(c.choices[0].text for c in chunks[:-1])
    assert 1 <= len(chunks) - 1 <= whole.mtad["rounds"]


def test_chat_stream_reassembles_the_whole_reply(client):
    settings = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "seed": 9}
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(stream=True, **settings))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string_ends_the_text_before_it(client, alone):
    full = alone(PROMPT, max_new_tokens=20, seed=21, top_k=0).text
    stop = full.split()[3]
    expected = full[: full.find(stop)]
    for stream in (False, True):
        response = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=20, seed=21, stop=[stop], stream=stream
        )
        chunks = list(response) if stream else [response]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_is_capped_by_the_context_length(client):
    prompt = " ".join(["w5"] * 250)  # the tiny models' context is 256 tokens
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=100, seed=1)
    assert response.usage.prompt_tokens == 250
    assert response.usage.completion_tokens <= 6


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.models.retrieve("some/other-model")
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=2)
    health = json.load(urllib.request.urlopen(f"{server.url}/health"))
    assert health["status"] == "ok" and health["model"] == MODEL and health["queue_depth"] == 0
    assert isinstance(health["busy"], bool)  # the worker may still be closing the last generation
    assert health["fast_path"] is None  # models built in the test, not loaded: nothing was packed
    assert set(health["native_memory"]) == {
        "onednn_primitive_cache", "onednn_primitive_cache_source", "mmap_threshold", "mmap_threshold_source"
    }  # fmt: skip
    metrics = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    for name in (
        'mtad_requests_total{endpoint="/v1/completions",outcome="ok"}',
        "mtad_completion_tokens_total",
        'mtad_acceptance_rate_bucket{le="0.5",method="mtad"}',
        "mtad_block_efficiency_sum",
        "mtad_tokens_per_second_count",
        "mtad_queue_depth 0.0",
    ):
        assert name in metrics
    assert "other-model" not in metrics  # paths a client invents are not metric labels
