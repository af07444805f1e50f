"""`mtad serve`: an OpenAI-compatible HTTP server on the model pair (see docs/serve.md)."""

from __future__ import annotations

import argparse
import functools
import os
import sys

from mtad.api import validate_settings
from mtad.cli.common import (
    add_decoding_arguments,
    add_pair_arguments,
    decoding_settings,
    limits,
    load_pair_from_args,
)
from mtad.cli.ray import add_ray_arguments, ray_workers
from mtad.decoding.methods import without_draft
from mtad.decoding.speculation import SpeculationConfig
from mtad.errors import ConfigError
from mtad.extras import require
from mtad.runtime.native_memory import bound_native_memory
from mtad.serve.config import ServeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "MTAD_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the pair over an OpenAI-compatible HTTP API",
        description="Serve /v1/completions and /v1/chat/completions; decoding flags are the defaults "
        "a request can override in its `mtad` field.",
    )
    add_pair_arguments(parser)
    add_decoding_arguments(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback)")
    group.add_argument("--port", type=_port, default=8000, help="port, 0-65535 (default 8000)")
    group.add_argument(
        "--served-model-name",
        default=None,
        help="the `model` clients send (default: SmolLM2-135M-Instruct for the built-in pair, "
        "else --target as given)",
    )
    group.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429 (default 64)")
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="requests decoded together, joining and leaving at block boundaries (default 8); 1 decodes "
        "one request at a time",
    )
    group.add_argument(
        "--batch-invariant",
        action="store_true",
        help="each request decodes as if alone: its tokens depend only on its prompt, settings and seed, "
        "never on what else is running (requests interleave but share no forward: throughput is that of "
        "one request at a time)",
    )
    group.add_argument(
        "--request-timeout", type=float, default=120.0, help="seconds of decoding per request (default 120)"
    )
    group.add_argument(
        "--max-request-bytes", type=int, default=ServeConfig.max_request_bytes,
        help=f"largest request body; more is a 413 (default {ServeConfig.max_request_bytes})",
    )  # fmt: skip
    group.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    auth = parser.add_argument_group("authentication")
    auth.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every request but /health (the openai client's "
        f"api_key); a 401 without it. Default: the {API_KEY_ENV} environment variable, which keeps the "
        "key out of the process list; unset: no authentication",
    )
    auth.add_argument(
        "--require-api-key-for-metrics",
        action="store_true",
        help="/metrics needs the API key too (default: open, for scrapers without credentials)",
    )
    add_ray_arguments(parser, "replica", "replicas").add_argument(
        "--ray-max-replicas", type=int, default=None, metavar="M",
        help="autoscale between --ray-replicas (default 1) and M replicas, aiming at --max-batch-size "
        "requests per replica",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("serve", "mtad serve")
    import uvicorn

    from mtad.serve import create_app

    config = ServeConfig(
        model_name=_model_name(args),
        defaults=_validated_defaults(args),
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        batch_invariant=args.batch_invariant,
        request_timeout_s=args.request_timeout,
        limits=limits(args),
        max_request_bytes=args.max_request_bytes,
        api_key=_api_key(args),
        metrics_need_key=args.require_api_key_for_metrics,
    )
    if args.ray_max_replicas is not None and args.ray is None:
        raise ConfigError("--ray-max-replicas needs --ray")
    workers = ray_workers(args, "replica", "replicas")  # None without --ray
    if workers is not None:
        return _run_on_ray(args, config, workers)
    bound_native_memory()  # before the first product: oneDNN reads its cache size then
    target, draft = load_pair_from_args(args, need_draft=True)
    _check_draft(args, draft is not None)
    if args.host not in LOOPBACK:
        print(f"mtad serve: {_exposure_warning(args.host, config.api_key is not None)}", file=sys.stderr)
    uvicorn.run(create_app(target, draft, config), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _check_draft(args: argparse.Namespace, have_draft: bool) -> None:
    if not have_draft and SpeculationConfig(args.method).needs_draft:
        raise ConfigError(
            f"--method {args.method} needs a draft model and none was given; pass --draft, or serve "
            f"--method {_one_of(without_draft())}"
        )


def _run_on_ray(args: argparse.Namespace, config: ServeConfig, workers) -> int:
    """The app as Ray Serve replicas (`mtad.serve.ray`), the cluster joined and checked first."""
    from mtad.cluster import Workers, check_room, connect

    if args.ray_max_replicas is not None and args.ray_max_replicas < (workers.count or 1):
        raise ConfigError(f"--ray-max-replicas must be >= --ray-replicas, got {args.ray_max_replicas}")
    _check_draft(args, args.draft is not None or args.target is None)  # the built-in pair has a draft
    autoscaled = args.ray_max_replicas is not None
    if autoscaled:  # room for the minimum is enough: a cluster autoscaler may add nodes for more
        workers = Workers(workers.count or 1, workers.cpus, workers.gpus)
    with connect(args.ray, log_to_driver=True) as ray:
        replicas = check_room(ray, workers)
        from mtad.serve.ray import application, serve_until_interrupted

        load = functools.partial(load_pair_from_args, args, need_draft=True)
        app = application(load, config, replicas, args.ray_max_replicas, workers.cpus, workers.gpus)
        scaling = f"{replicas} to {args.ray_max_replicas}" if autoscaled else f"{replicas}"
        print(f"mtad serve: {scaling} Ray Serve replicas ({workers.describe()}) at http://{args.host}:{args.port}",
              file=sys.stderr)  # fmt: skip
        if args.host not in LOOPBACK:
            print(f"mtad serve: {_exposure_warning(args.host, config.api_key is not None)}", file=sys.stderr)
        serve_until_interrupted(app, args.host, args.port)
    return 0


def _validated_defaults(args: argparse.Namespace) -> dict:
    """The decoding flags as request defaults, checked before minutes of model loading."""
    if args.max_queue < 1:
        raise ConfigError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if not args.request_timeout > 0:
        raise ConfigError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1 for a server, got {args.max_new_tokens}")
    if args.max_request_bytes < 1024:
        raise ConfigError(f"--max-request-bytes must be >= 1024, got {args.max_request_bytes}")
    settings = decoding_settings(args)
    limits(args).check(validate_settings(**settings)[0])
    return settings


def _api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else $MTAD_API_KEY, else None; a key a client could not send is a ConfigError."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is None:
        if args.require_api_key_for_metrics:
            raise ConfigError(f"--require-api-key-for-metrics needs --api-key (or {API_KEY_ENV})")
        return None
    from mtad.serve.auth import check_key

    return check_key(key, "--api-key" if args.api_key is not None else API_KEY_ENV)


def _exposure_warning(host: str, keyed: bool) -> str:
    if keyed:
        return (
            f"listening on {host}: reachable from other machines; requests need the API key, sent "
            "unencrypted over plain HTTP (put a TLS proxy in front)"
        )
    return (
        f"listening on {host}: reachable from other machines, with no authentication; pass --api-key "
        f"(or set {API_KEY_ENV}) to require a key"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}; allowed: an integer in 0..65535")
    return port


def _model_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return args.served_model_name
    if args.target is None:
        from mtad.models.default_pair import TARGET_NAME

        return TARGET_NAME
    return str(args.target)


def _one_of(names: list[str]) -> str:
    """ "a, b or c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
