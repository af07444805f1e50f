"""OpenAI-compatible extensions at the top level of a request, through the official client:
`top_k` where vLLM and others take it (`extra_body={"top_k": ...}`), beside the `mtad` object."""

from __future__ import annotations

import openai
import pytest

from serve.conftest import MODEL

PROMPT = "w5 w7 w3 w9"
MESSAGES = [{"role": "user", "content": "w5 w6 w8"}]


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_level_top_k_is_honoured(client, alone, top_k):
    settings = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "seed": 4}
    top = client.completions.create(**settings, extra_body={"top_k": top_k})
    inside = client.completions.create(**settings, extra_body={"mtad": {"top_k": top_k}})
    expected = alone(PROMPT, max_new_tokens=12, seed=4, top_k=top_k)
    assert top.choices[0].text == inside.choices[0].text == expected.text
    assert top.mtad["top_k"] == top_k


def test_top_level_top_k_changes_the_output(client, alone):
    """The field is read, not dropped: top_k 1 is greedy, whatever the seed."""
    texts = {
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=12, seed=seed, extra_body={"top_k": 1}
        )
        .choices[0]
        .text
        for seed in range(4)
    }
    assert texts == {alone(PROMPT, max_new_tokens=12, temperature=0.0).text}


def test_top_level_top_k_in_a_chat(client, alone):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, seed=2, extra_body={"top_k": 2}
    )
    expected = alone(MESSAGES, chat=True, max_new_tokens=8, seed=2, top_k=2)
    assert response.choices[0].message.content == expected.text


def test_the_same_top_k_in_both_places_is_accepted(client):
    response = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"top_k": 5, "mtad": {"top_k": 5}}
    )
    assert response.mtad["top_k"] == 5


def _refused(client, extra_body: dict) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=extra_body)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert "\n" not in error["message"]
    return error


def test_conflicting_top_k_is_a_400_naming_both(client):
    error = _refused(client, {"top_k": 2, "mtad": {"top_k": 3}})
    assert error["param"] == "top_k"
    assert "top_k=2" in error["message"] and "mtad.top_k=3" in error["message"]


@pytest.mark.parametrize("value", [-1, 2.5, "ten", True])
def test_a_bad_top_level_top_k_is_a_400_naming_top_k(client, value):
    assert _refused(client, {"top_k": value})["param"] == "top_k"


@pytest.mark.parametrize(
    ("extra_body", "param"),
    [
        ({"frobnicate": 1}, "frobnicate"),
        ({"min_p": 0.1}, "min_p"),
        ({"repetition_penalty": 1.3}, "repetition_penalty"),
        ({"mtad": {"speed": "max"}}, "mtad.speed"),
        ({"mtad": {"top_k": 2, "top_k_extra": 1}}, "mtad.top_k_extra"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
    ],
)
def test_other_unsupported_fields_are_named_once(client, extra_body, param):
    error = _refused(client, extra_body)
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert f"'{param}'" in error["message"] or f"{param}=" in error["message"]
    assert f"{param}.{param}" not in error["message"]


def test_neutral_extension_values_are_accepted(client):
    response = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={"min_p": 0, "repetition_penalty": 1.0}
    )
    assert response.usage.completion_tokens <= 3
