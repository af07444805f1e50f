"""`mtad serve --draft recycle|suffix`: a model-free draft behind the OpenAI-compatible server, its
shared store stated in /health, and the same text as the engine alone for a greedy request."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

import mtad
from mtad.decoding.drafts import RecycleDraft, SuffixDraft
from mtad.serve import BackgroundServer, ServeConfig, create_app
from serve.conftest import DEFAULTS, MODEL, tiny_pair

PROMPT = "w5 w6 w7 w5 w6 w7 w5 w6"


@pytest.fixture(scope="module", params=["recycle", "suffix"])
def model_free_server(request):
    target, _ = tiny_pair()
    draft = RecycleDraft(shared=True, max_entries=50) if request.param == "recycle" else SuffixDraft(200)
    app = create_app(target, draft, ServeConfig(MODEL, DEFAULTS, max_batch_size=4))
    server = BackgroundServer(app).start()
    yield server, draft, target
    server.stop()


def test_greedy_requests_equal_the_engine_alone_and_health_states_the_store(model_free_server):
    server, draft, target = model_free_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    ids = target.tokenizer(PROMPT)["input_ids"]
    alone = mtad.generate(
        target.model, None, ids, method="greedy", max_new_tokens=16, tokenizer=target.tokenizer
    )
    for method in ("sd", "specinfer"):
        for _ in range(2):  # the second request drafts from what the first left in the store
            mine = {"mtad": {"method": method}}
            response = client.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, extra_body=mine
            )
            assert response.choices[0].text == alone.text
    health = json.load(urllib.request.urlopen(f"{server.url}/health"))
    described = health["draft"]
    assert described["kind"] == draft.name
    recycle = draft.name == "recycle"
    used, bound = ("entries", "max_entries") if recycle else ("store_tokens", "max_store_tokens")
    assert 0 < described[used] <= described[bound]
    assert described["approx_bytes"] <= described["max_bytes"]


def test_tree_auto_is_served_and_a_bad_tree_is_a_400(model_free_server):
    server, _, _ = model_free_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError, match="mtad.tree"):
        bad = {"mtad": {"method": "specinfer", "tree": "big"}}
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=bad)
    auto = {"mtad": {"method": "mmtad", "tree": "auto"}}
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=1, extra_body=auto)
    assert response.usage.completion_tokens >= 1
