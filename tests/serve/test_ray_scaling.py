"""Ray Serve keeps the deployment's replicas: with `--ray-max-replicas`, load past a replica's batch
adds replicas up to the maximum, never past it, and an idle deployment shrinks back to its
minimum; a replica whose /health reports a stopped worker is replaced. A module of its own: the
two-replica deployment of test_ray_serve holds both CPUs of the test cluster while it lives."""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from mtad.serve import ServeConfig
from serve.conftest import DEFAULTS, MODEL, tiny_pair
from serve.test_ray_serve import DELAY_S, PROMPT, free_port

QUICK = {
    "upscale_delay_s": 0.5,
    "downscale_delay_s": 3.0,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
}


def test_load_adds_replicas_up_to_the_maximum_and_idleness_removes_them(ray_cluster):
    from ray import serve

    from mtad.serve.ray import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(MODEL, DEFAULTS, max_queue=16, max_batch_size=1)  # aims at 1 request a replica
    app = application(functools.partial(tiny_pair, DELAY_S), config, 1, max_replicas=2, autoscaling=QUICK)
    serve.run(app, name="mtad-scale", route_prefix="/")
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60
    )
    try:
        assert _replicas(serve) == 1
        seen, stop = [], threading.Event()

        def load(seed: int) -> int:
            done = 0
            while not stop.is_set():
                client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=seed + 100 * done)
                done += 1
            return done

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(load, seed) for seed in range(6)]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and (not seen or seen[-1] < 2):
                seen.append(_replicas(serve))
                time.sleep(0.5)
            for _ in range(6):  # under the same load a little longer: never past the maximum
                seen.append(_replicas(serve))
                time.sleep(0.5)
            stop.set()
            answered = sum(future.result(timeout=120) for future in futures)
        assert 2 in seen and max(seen) == 2, seen
        assert answered > 0
        deadline = time.monotonic() + 90
        while _replicas(serve) > 1:
            assert time.monotonic() < deadline, "the idle deployment did not shrink to its minimum"
            time.sleep(0.5)
    finally:
        serve.shutdown()


def _replicas(serve) -> int:
    """Replicas running or starting (a replica being stopped no longer counts)."""
    deployment = serve.status().applications["mtad-scale"].deployments["mtad"]
    live = ("RUNNING", "STARTING", "PENDING_MIGRATION")
    return sum(n for state, n in deployment.replica_states.items() if str(state).split(".")[-1] in live)


def worker_stopping_pair(marker: str):
    """The slow tiny pair; while `marker` exists, the first target forward takes it and ends the
    replica's worker thread (SystemExit is no request's error: the worker does not catch it)."""
    target, draft = tiny_pair(DELAY_S)

    def maybe_stop(*_):
        try:
            os.rename(marker, f"{marker}.taken")
        except FileNotFoundError:
            return
        raise SystemExit("the worker stops")

    target.model.register_forward_pre_hook(maybe_stop)
    return target, draft


def test_a_replica_whose_worker_stopped_is_replaced(ray_cluster, tmp_path):
    from ray import serve

    from mtad.serve.ray import application

    marker = str(tmp_path / "stop")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(MODEL, DEFAULTS, request_timeout_s=5)
    serve.run(application(functools.partial(worker_stopping_pair, marker), config), name="mtad-scale")
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30
    )
    try:
        assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, seed=1).choices
        open(marker, "w").close()
        try:  # this request stops the worker: it fails or is cut off, and /health turns 503
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, seed=2)
        except openai.OpenAIError:
            pass
        assert os.path.exists(f"{marker}.taken"), "the worker did not stop: the test proved nothing"
        deadline = time.monotonic() + 90
        while True:  # the stopped replica answers nothing; its replacement answers
            try:
                client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, seed=3)
                break
            except openai.OpenAIError as error:
                assert time.monotonic() < deadline, f"the replica was not replaced: {error}"
                time.sleep(0.5)
    finally:
        serve.shutdown()
