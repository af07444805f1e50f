"""Requests/s and tokens/s of `mtad serve` under concurrent clients, beside one client alone.

    python benchmarks/serve_load.py                       # tiny random models, in-process server
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --model SmolLM2-135M-Instruct

Without --url it serves the tests' tiny random pair on a free loopback port, so the numbers
measure the server's overhead (HTTP, queueing, streaming) more than decoding. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one on the tiny pair")
    parser.add_argument("--model", default="tiny-pair", help="the model name the server serves")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--method", default="mtad")
    parser.add_argument("--stream", action="store_true", help="stream every response")
    args = parser.parse_args()
    if args.url:
        run(args, args.url)
        return
    with tiny_server() as server:
        run(args, server.url)


def tiny_server():
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    from conftest import tiny_llama, tiny_tokenizer
    from mtad.api import DEFAULT_SETTINGS
    from mtad.config import PAPER_WARP
    from mtad.models import LoadedModel
    from mtad.serve import BackgroundServer, ServeConfig, create_app

    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    target = LoadedModel(tiny_llama(seed=0), tokenizer, "target")
    draft = LoadedModel(tiny_llama(seed=1, layers=1), tokenizer, "draft")
    defaults = DEFAULT_SETTINGS | PAPER_WARP | {"max_new_tokens": 32}
    return BackgroundServer(create_app(target, draft, ServeConfig("tiny-pair", defaults, max_queue=256)))


def run(args: argparse.Namespace, url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    prompts = [" ".join(f"w{2 + (i * 5 + k) % 14}" for k in range(3 + i % 4)) for i in range(64)]

    def one(i: int) -> tuple[float, int, float]:
        start = time.perf_counter()
        settings = {
            "model": args.model,
            "prompt": prompts[i % len(prompts)],
            "max_tokens": args.max_tokens,
            "seed": i,
            "extra_body": {"mtad": {"method": args.method}},
        }
        if args.stream:
            last = list(client.completions.create(stream=True, **settings))[-1]
        else:
            last = client.completions.create(**settings)
        return time.perf_counter() - start, last.usage.completion_tokens, last.mtad["wall_time_s"]

    one(0)  # warm up
    total = args.clients * args.requests
    report("1 client, sequential", [one(i) for i in range(total)], total)
    with ThreadPoolExecutor(args.clients) as pool:
        start = time.perf_counter()
        results = list(pool.map(one, range(total)))
        wall = time.perf_counter() - start
    report(f"{args.clients} clients x {args.requests}", results, total, wall)


def report(
    label: str, results: list[tuple[float, int, float]], total: int, wall: float | None = None
) -> None:
    """Throughput, latency, and the share of the wall time the worker spent decoding."""
    latencies = sorted(seconds for seconds, _, _ in results)
    wall = wall if wall is not None else sum(latencies)
    tokens = sum(n for _, n, _ in results)
    decoding = sum(d for _, _, d in results)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(
        f"{label:<24} {total} requests in {wall:6.2f} s: {total / wall:7.1f} requests/s, "
        f"{tokens / wall:8.1f} tokens/s, latency p50 {statistics.median(latencies) * 1000:6.1f} ms, "
        f"p95 {p95 * 1000:6.1f} ms, worker decoding {100 * decoding / wall:3.0f}% of the time"
    )


if __name__ == "__main__":
    main()
