"""`mtad serve --ray`: the app as two Ray Serve replicas on a local Ray cluster, through the official
client: the same text as `mtad serve` for a seeded request, streaming, a 400 from the replica,
/metrics summed over replicas, and a replica killed under load replaced with no client hanging."""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtad.cli import main
from mtad.serve import ServeConfig
from mtad.serve.metrics import sum_expositions
from serve.conftest import DEFAULTS, MODEL, tiny_pair

DELAY_S = 0.005  # per target call: a 24-token request takes a few tenths of a second
PROMPT = "w5 w7 w3 w9"
MESSAGES = [{"role": "user", "content": "w5 w6 w8"}]


def dying_tiny_pair(marker: str):
    """The slow tiny pair; while `marker` exists, the first replica to run a target forward takes
    it and kills its own process (SIGKILL, as a lost node)."""
    target, draft = tiny_pair(DELAY_S)

    def maybe_die(*_):
        if os.path.exists(marker):
            try:
                os.rename(marker, f"{marker}.{os.getpid()}")
            except FileNotFoundError:
                return
            os.kill(os.getpid(), 9)

    target.model.register_forward_pre_hook(maybe_die)
    return target, draft


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def replicas(ray_cluster, tmp_path_factory):
    from ray import serve

    from mtad.serve.ray import application

    marker = str(tmp_path_factory.mktemp("replica") / "die")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = application(functools.partial(dying_tiny_pair, marker), ServeConfig(MODEL, DEFAULTS), replicas=2)
    serve.run(app, name="mtad-test", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    yield SimpleNamespace(url=url, client=client, marker=marker, serve=serve)
    serve.shutdown()


@pytest.fixture(scope="module")
def plain(start_server):
    server = start_server(delay_s=DELAY_S)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_a_seeded_request_gets_the_text_mtad_serve_gives(replicas, plain):
    for settings in ({"seed": 7}, {"seed": 8, "extra_body": {"mtad": {"method": "sd", "gamma": 3}}}):
        ours = replicas.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, **settings)
        theirs = plain.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, **settings)
        assert ours.choices[0].text == theirs.choices[0].text and ours.usage == theirs.usage
    ours = replicas.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=3)
    theirs = plain.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=3)
    assert ours.choices[0].message.content == theirs.choices[0].message.content


def test_streaming_through_the_router(replicas):
    settings = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "seed": 9}
    whole = replicas.client.chat.completions.create(**settings)
    chunks = list(replicas.client.chat.completions.create(stream=True, **settings))
    assert len(chunks) > 2 and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_bad_request_is_the_replicas_400(replicas):
    with pytest.raises(openai.BadRequestError) as caught:
        replicas.client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"mtad": {"gamma": 0}})
    assert caught.value.status_code == 400 and caught.value.body["param"] == "mtad.gamma"
    request = urllib.request.Request(f"{replicas.url}/v1/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=30)
    assert http.value.code == 400
    assert json.loads(http.value.read())["error"]["type"] == "invalid_request_error"
    with urllib.request.urlopen(f"{replicas.url}/health", timeout=30) as health:
        assert json.loads(health.read())["status"] == "ok"


def completions_ok(url: str) -> tuple[float, float]:
    """(ok /v1/completions requests, live replicas) as the router's /metrics sums them."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ok = sum(
        s.value
        for s in families["mtad_requests"].samples
        if s.name == "mtad_requests_total" and s.labels == {"endpoint": "/v1/completions", "outcome": "ok"}
    )
    return ok, families["mtad_replicas"].samples[0].value


def test_metrics_are_summed_over_the_replicas(replicas):
    time.sleep(3.5)  # every replica has sent what it counted, and the one answering has the sum
    before, live = completions_ok(replicas.url)
    assert live == 2
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: replicas.client.completions.create(model=MODEL, prompt=PROMPT), range(8)))
    time.sleep(3.5)
    after, _ = completions_ok(replicas.url)
    assert after - before == 8


def test_sum_of_expositions_counts_gone_servers_counters_but_not_their_gauges():
    live = b'# HELP x_total n\n# TYPE x_total counter\nx_total{a="1"} 2.0\n# TYPE g gauge\ng 3.0\n'
    gone = b'# TYPE x_total counter\nx_total{a="1"} 5.0\n# TYPE g gauge\ng 7.0\n'
    families = {f.name: f for f in text_string_to_metric_families(sum_expositions([live], [gone]).decode())}
    assert families["x"].samples[0].value == 7.0 and families["g"].samples[0].value == 3.0
    assert families["mtad_replicas"].samples[0].value == 1


def test_a_replica_killed_under_load_is_replaced_and_no_client_hangs(replicas):
    def request(seed: int) -> str:
        try:
            replicas.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=seed)
            return "ok"
        except openai.APIStatusError as error:
            return f"status {error.status_code}"
        except openai.APIConnectionError as error:  # a timeout would be a hang: it fails the test
            return "timeout" if isinstance(error, openai.APITimeoutError) else "connection"

    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(request, seed) for seed in range(8)]
        time.sleep(0.3)
        open(replicas.marker, "w").close()  # the next target forward on either replica kills it
        later = [pool.submit(request, seed) for seed in range(8, 32)]
        outcomes = [future.result(timeout=60) for future in first + later]
    assert "timeout" not in outcomes and outcomes.count("ok") >= len(outcomes) // 2, outcomes
    assert not os.path.exists(replicas.marker), "no replica died: the test proved nothing"
    deadline = time.monotonic() + 60
    while _running(replicas.serve) < 2:
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.5)
    assert all(request(seed) == "ok" for seed in range(4))


def _running(serve) -> int:
    deployment = serve.status().applications["mtad-test"].deployments["mtad"]
    return sum(n for state, n in deployment.replica_states.items() if str(state).endswith("RUNNING"))


def _one_line_exit_2(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_ray_input_to_mtad_serve_is_one_line_and_exit_2_before_any_model_loads(
    ray_cluster, pair_dirs, monkeypatch, capsys
):
    monkeypatch.setattr("mtad.cli.common.load_pair", lambda *_, **__: pytest.fail("a model was loaded"))
    pair = ["--target", pair_dirs[0], "--draft", pair_dirs[1]]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)
        _one_line_exit_2(["serve", *pair, "--ray"], capsys, "pip install 'mtad[ray]'")
    _one_line_exit_2(["serve", *pair, "--ray", "127.0.0.1:1"], capsys, "cannot reach")
    _one_line_exit_2(["serve", *pair, "--ray", "auto", "--ray-replicas", "3"], capsys, "room for 2 workers")
    _one_line_exit_2(["serve", *pair, "--ray-max-replicas", "3"], capsys, "needs --ray")
    scaling = ["--ray", "--ray-replicas", "2", "--ray-max-replicas", "1"]
    _one_line_exit_2(["serve", *pair, *scaling], capsys, ">= --ray-replicas")
    _one_line_exit_2(["serve", "--target", pair_dirs[0], "--ray"], capsys, "needs a draft")


def test_serve_run_builds_the_application_from_its_arguments(pair_dirs):
    from ray.serve import Application

    from mtad.serve.ray import build

    assert isinstance(build({"target": pair_dirs[0], "draft": pair_dirs[1], "replicas": "2"}), Application)
    with pytest.raises(ValueError, match="target="):
        build({"draft": pair_dirs[1]})
