"""`--api-key`: every request but /health needs `Authorization: Bearer <key>`, or gets a 401 in
the OpenAI error shape; /metrics is open unless the operator asks otherwise."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import openai
import pytest

from mtad.cli import main
from mtad.errors import ConfigError
from mtad.serve import ServeConfig, create_app
from serve.conftest import DEFAULTS, MODEL, tiny_pair

KEY = "sk-test-0123456789"


def get(url: str, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """(status, headers, body text) of one plain HTTP request."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def keyed(start_server):
    return start_server(api_key=KEY)


@pytest.fixture(scope="module")
def keyed_metrics(start_server):
    return start_server(api_key=KEY, metrics_need_key=True)


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_the_right_key_is_served(keyed):
    client = _client(keyed, KEY)
    response = client.completions.create(model=MODEL, prompt="w5 w7", max_tokens=4, seed=1)
    assert response.usage.completion_tokens >= 1
    chunks = list(client.completions.create(model=MODEL, prompt="w5", max_tokens=3, stream=True))
    assert chunks[-1].usage is not None
    assert [model.id for model in client.models.list()] == [MODEL]


@pytest.mark.parametrize("key", ["wrong", KEY + "x", KEY[:-1], KEY.upper()])
def test_a_wrong_key_is_a_401_in_the_openai_shape(keyed, key):
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(keyed, key).completions.create(model=MODEL, prompt="w5", max_tokens=2)
    assert caught.value.status_code == 401
    error = caught.value.body
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert KEY not in json.dumps(error) and key not in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {KEY}"},
        {"X-Api-Key": KEY},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]
)
def test_no_key_is_a_401_before_the_body_is_read(keyed, headers, method, path):
    body = (
        json.dumps({"model": MODEL, "prompt": "w5", "max_tokens": 2}).encode() if method == "POST" else None
    )
    status, response_headers, text = get(keyed.url, path, headers, method, body)
    assert status == 401 and response_headers["WWW-Authenticate"] == "Bearer"
    error = json.loads(text)["error"]
    assert error["code"] == "invalid_api_key" and "\n" not in error["message"]


def test_unknown_routes_need_the_key_too(keyed):
    assert get(keyed.url, "/v1/secret")[0] == 401
    assert get(keyed.url, "/v1/secret", {"Authorization": f"Bearer {KEY}"})[0] == 404


def test_health_stays_open_and_metrics_are_open_by_default(keyed):
    assert get(keyed.url, "/health")[0] == 200
    status, _, text = get(keyed.url, "/metrics")
    assert status == 200 and 'outcome="unauthorized"' in text  # the refusals above were counted


def test_metrics_can_require_the_key(keyed_metrics):
    assert get(keyed_metrics.url, "/metrics")[0] == 401
    assert get(keyed_metrics.url, "/metrics", {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert get(keyed_metrics.url, "/health")[0] == 200


def test_without_a_key_nothing_is_required(server):
    assert get(server.url, "/v1/models")[0] == 200


@pytest.mark.parametrize("key", ["", "has space", "caf\u00e9", "tab\tkey"])
def test_a_key_no_client_could_send_is_refused_at_start(key):
    target, draft = tiny_pair()
    with pytest.raises(ConfigError, match="api_key"):
        create_app(target, draft, ServeConfig(MODEL, DEFAULTS, api_key=key))


def test_the_key_stays_out_of_the_config_repr():
    assert KEY not in repr(ServeConfig(MODEL, DEFAULTS, api_key=KEY))


# The CLI: flags, the environment variable and the warning for non-loopback hosts (uvicorn and
# the model loading replaced, so nothing listens and nothing loads twice).


@pytest.fixture
def serve_cli(monkeypatch, pair_dirs, capsys):
    started: dict = {}
    pair = tiny_pair()
    monkeypatch.setattr("mtad.cli.serve.load_pair_from_args", lambda args, need_draft=True: pair)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.delenv("MTAD_API_KEY", raising=False)
    target, draft = pair_dirs

    def run(*flags: str) -> tuple[int, dict, str]:
        code = main(["serve", "--target", target, "--draft", draft, *flags])
        return code, started, capsys.readouterr().err

    return run


def _config(app) -> ServeConfig:
    return app.state.server.config


def test_the_cli_takes_the_key_from_the_flag_or_the_environment(serve_cli, monkeypatch):
    code, started, _ = serve_cli("--api-key", KEY)
    assert code == 0 and _config(started["app"]).api_key == KEY
    monkeypatch.setenv("MTAD_API_KEY", "from-env")
    code, started, _ = serve_cli("--require-api-key-for-metrics")
    assert code == 0 and _config(started["app"]).api_key == "from-env"
    assert _config(started["app"]).metrics_need_key


def test_the_warning_for_other_hosts_names_the_flag(serve_cli):
    _, _, err = serve_cli("--host", "0.0.0.0")
    assert "no authentication" in err and "--api-key" in err and "MTAD_API_KEY" in err
    _, _, err = serve_cli("--host", "0.0.0.0", "--api-key", KEY)
    assert "need the API key" in err and KEY not in err


@pytest.mark.parametrize(
    "flags", [("--api-key", ""), ("--api-key", "two words"), ("--require-api-key-for-metrics",)]
)
def test_the_cli_refuses_a_bad_key_setup_in_one_line(serve_cli, flags):
    code, started, err = serve_cli(*flags)
    assert code == 2 and not started and err.count("\n") == 1 and "Traceback" not in err
