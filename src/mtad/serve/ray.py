"""`mtad serve --ray`: the same app (`mtad.serve.app`) as N Ray Serve replicas behind Serve's router.

    from mtad.serve.ray import application
    serve.run(application(load, config, replicas=2), name="mtad", route_prefix="/")

or, with Ray Serve's command line, `serve run mtad.serve.ray:build target=T draft=D replicas=2`.

Each replica loads the pair once (`load`, a picklable callable returning (target, draft)) and runs
the whole app, scheduler and continuous batching included, so request parsing, per-request seeds,
streaming and every 4xx come from the replica unchanged; Serve routes each request to one replica
(the less loaded of two) and restarts a replica that dies. A replica takes up to
`max_batch_size + max_queue` requests, so the app's own 429 still says it is full.

- Health: Serve calls each replica's `check_health`, which asks the app's own /health route; a
  stopped worker (503 there) makes Serve replace the replica.
- /metrics: every `PUSH_S` seconds each replica sends its metrics to one `MetricsHub` replica and
  fetches their sum (`mtad.serve.metrics.sum_expositions`), which its /metrics answers: a scrape
  through the router sees the whole deployment, up to 2 x `PUSH_S` old. Counters of replicas gone
  still count (totals never fall), their gauges do not.
- Autoscaling: with `max_replicas`, Serve keeps between `replicas` and `max_replicas` replicas,
  aiming at `max_batch_size` requests in flight per replica.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from ray import serve
from starlette.requests import Request

from mtad.api import DEFAULT_SETTINGS
from mtad.models import LoadedModel, load_pair
from mtad.runtime.native_memory import bound_native_memory
from mtad.serve.app import create_app
from mtad.serve.config import ServeConfig
from mtad.serve.metrics import sum_expositions

Loader = Callable[[], tuple[LoadedModel, LoadedModel | None]]
PUSH_S = 1.0
_GONE_AFTER_S = 3 * PUSH_S  # a replica silent this long is gone: its gauges stop counting


class MetricsHub:
    """Holds each replica's latest exposition; answers their sum."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[float, bytes]] = {}  # replica id -> (when, exposition)

    def push(self, replica: str, text: bytes) -> None:
        self.latest[replica] = (time.monotonic(), text)

    def exposition(self) -> bytes:
        now = time.monotonic()
        live = [text for when, text in self.latest.values() if now - when <= _GONE_AFTER_S]
        gone = [text for when, text in self.latest.values() if now - when > _GONE_AFTER_S]
        return sum_expositions(live, gone)


@serve.ingress()
class MtadReplica:
    """One replica: the pair, the app, and its link to the metrics hub."""

    def __init__(self, load: Loader, config: ServeConfig, hub) -> None:
        bound_native_memory()  # a replica is a long-running server too (see mtad.runtime.native_memory)
        target, draft = load()
        # names of their own: Serve's ASGI wrapper, a base class of this one, owns `app`
        self.mtad_app = create_app(target, draft, config)
        self.server = self.mtad_app.state.server
        self.hub = hub
        self.replica = serve.get_replica_context().replica_id.unique_id
        metrics = self.server.metrics
        self.own = metrics.exposition  # this replica's numbers
        self.summed = self.own()  # the deployment's, refreshed every PUSH_S
        metrics.exposition = lambda: self.summed  # what /metrics answers
        threading.Thread(target=self._refresh_forever, name="mtad-metrics", daemon=True).start()

    def __serve_build_asgi_app__(self):
        return self.mtad_app

    async def check_health(self) -> None:
        response = await self.server.health(Request({"type": "http", "method": "GET", "path": "/health"}))
        if response.status_code != 200:
            raise RuntimeError(f"/health answers {response.status_code}: {response.body.decode()}")

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(PUSH_S)
            try:
                self.hub.push.remote(self.replica, self.own()).result()
                self.summed = self.hub.exposition.remote().result()
            except Exception:  # noqa: BLE001 - the hub restarts; the next round gets through
                pass


def application(
    load: Loader,
    config: ServeConfig,
    replicas: int = 1,
    max_replicas: int | None = None,
    cpus: int = 1,
    gpus: float = 0.0,
    autoscaling: dict | None = None,
):
    """The Serve application: `replicas` replicas of `cpus` CPUs and `gpus` GPUs each (autoscaling
    up to `max_replicas` when given), and the metrics hub. `autoscaling`: fields of Ray Serve's
    `AutoscalingConfig` (delays, look-back period) over ours, with `max_replicas`."""
    scaling = (
        {"num_replicas": replicas}
        if max_replicas is None
        else {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": config.max_batch_size,
            }
            | (autoscaling or {})
        }
    )
    replica = serve.deployment(
        MtadReplica,
        name="mtad",
        ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
        max_ongoing_requests=config.max_batch_size + config.max_queue,
        health_check_period_s=2.0,
        health_check_timeout_s=10.0,
        **scaling,
    )
    hub = serve.deployment(MetricsHub, name="mtad-metrics", ray_actor_options={"num_cpus": 0})
    return replica.bind(load, config, hub.bind())


def build(args: dict[str, str]):
    """For Ray Serve's own CLI: `serve run mtad.serve.ray:build target=T draft=D replicas=2`
    (optional: max_replicas, model, method, max_new_tokens). The library's decoding defaults
    (`mtad.api.DEFAULT_SETTINGS`), not the command line's; `mtad serve --ray` takes every flag."""
    known = {"target", "draft", "replicas", "max_replicas", "model", "method", "max_new_tokens"}
    if set(args) - known or not args.get("target"):
        raise ValueError(f"build takes target=... and optionally {', '.join(sorted(known - {'target'}))}")
    defaults = DEFAULT_SETTINGS | {k: type(DEFAULT_SETTINGS[k])(args[k]) for k in ("method", "max_new_tokens")
                                   if k in args}  # fmt: skip
    config = ServeConfig(args.get("model", args["target"]), defaults)
    load = functools.partial(load_pair, args["target"], args.get("draft"))
    maximum = int(args["max_replicas"]) if "max_replicas" in args else None
    return application(load, config, int(args.get("replicas", 1)), maximum)


def serve_until_interrupted(app, host: str, port: int, name: str = "mtad") -> None:
    """Run `app` on Serve's HTTP proxy at host:port until Ctrl-C; then delete it."""
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name=name, route_prefix="/")
        while True:
            time.sleep(1.0)
    finally:
        serve.delete(name)
