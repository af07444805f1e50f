"""`mtad serve --ray` with N replicas beside one `mtad serve`: requests/s, tokens/s, p50/p99 latency.

    python benchmarks/serve_ray.py                         # the default pair, 16 clients, 2 replicas
    python benchmarks/serve_ray.py --serve-args "--target T --draft D" --replicas 2 --clients 16

Each server is started as its own `mtad serve` process (the Ray one starts a local Ray cluster of
this machine and stops it when interrupted), waited for on /health, warmed up with one request,
then loaded by `--clients` concurrent clients sending `--requests` seeded completions each. The
plain server runs torch on all cores; each replica reserves `--cpus-per-replica` CPUs and runs as
many torch threads. Writes the numbers to --json when given. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-args", default="", help="flags for both servers, e.g. --target T --draft D")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="the model name served")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus-per-replica", type=int, default=1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--method", default="mtad")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    ray = ["--ray", "--ray-replicas", str(args.replicas)]
    ray += ["--ray-cpus-per-replica", str(args.cpus_per_replica)]
    numbers = {}
    for label, extra in (("mtad serve", []), (f"mtad serve --ray, {args.replicas} replicas", ray)):
        numbers[label] = measure(args, shlex.split(args.serve_args) + extra)
        print(f"{label:<34} " + ", ".join(f"{k} {v}" for k, v in numbers[label].items()), flush=True)
    if args.json:
        with open(args.json, "w") as sink:
            json.dump({"settings": vars(args), "results": numbers}, sink, indent=2)


def measure(args: argparse.Namespace, flags: list[str]) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "mtad", "serve", "--port", str(port), "--log-level", "warning", *flags]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, args.startup_timeout)
        startup = time.perf_counter() - started
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        one(args, client, 0)  # warm up
        total = args.clients * args.requests
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            results = list(pool.map(lambda i: one(args, client, i), range(total)))
            wall = time.perf_counter() - start
    finally:
        server.send_signal(signal.SIGTERM)  # the Ray server deletes its app and stops its cluster
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "startup_s": round(startup, 1),
        "requests": total,
        "wall_s": round(wall, 1),
        "requests_per_s": round(total / wall, 3),
        "tokens_per_s": round(sum(n for _, n in results) / wall, 1),
        "p50_s": round(statistics.median(latencies), 2),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


def one(args: argparse.Namespace, client: openai.OpenAI, i: int) -> tuple[float, int]:
    prompts = ["Explain beam search.", "Name three sorting algorithms.", "Write a haiku about rain.",
               "What is a KV cache?", "Give two uses of Ray.", "Summarise speculative decoding."]  # fmt: skip
    start = time.perf_counter()
    response = client.completions.create(
        model=args.model,
        prompt=prompts[i % len(prompts)],
        max_tokens=args.max_tokens,
        seed=i,
        extra_body={"mtad": {"method": args.method}},
    )
    return time.perf_counter() - start, response.usage.completion_tokens


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if json.loads(response.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError("the server did not become healthy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
