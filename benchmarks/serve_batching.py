"""Continuous batching on the default pair: tokens/s and latency of `mtad serve`, batched vs one at a time.

    python benchmarks/serve_batching.py [--clients 8] [--max-tokens 64] [--methods ar,mtad] [--rounds 2]
        [--batch-invariant]

One process loads the pair once and serves it from two in-process servers on loopback, one with
`--max-batch-size 1` (one request at a time) and one with `--max-batch-size CLIENTS`; requests go
through the official `openai` client as chat completions of MT-Bench first turns, with the paper's
settings (temperature 1, top-k 10, top-p 0.9, gamma 4 or `--gamma auto`, 4 beams, threshold 0.5).
For each method and round, side by side: one client alone (sequential: the latency a lone user sees),
then CLIENTS concurrent clients on each server (the batching one first, next to the lone client's
run: a shared machine's speed drifts, and the p50 ratio compares those two). With
`--batch-invariant`, a third server with `--batch-invariant` and the same batch size takes the same
burst after the batching one: what reproducible seeds under load cost. Prints total tokens/s, p50
latency and the ratios (medians over rounds); writes them as JSON with `--out`.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import torch

from mtad.bench.datasets import load_dataset
from mtad.bench.machine import describe_machine
from mtad.config import PRESETS
from mtad.models import load_pair
from mtad.models.default_pair import default_draft_path, default_target_path
from mtad.serve import BackgroundServer, ServeConfig, create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--methods", default="ar,mtad")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gamma", default="4", help="4 (the paper's) or auto (the server's default)")
    parser.add_argument("--batch-invariant", action="store_true", help="also a --batch-invariant server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    target, draft = load_pair(str(default_target_path()), str(default_draft_path()), dtype=args.dtype)
    questions = [record.messages[0]["content"] for record in load_dataset("mtbench", None, args.clients * 2)]
    gamma = args.gamma if args.gamma == "auto" else int(args.gamma)
    defaults = PRESETS["paper"] | {"max_new_tokens": args.max_tokens, "gamma": gamma}
    kinds = {"batched": (args.clients, False), "one_at_a_time": (1, False)}  # in the order they run
    if args.batch_invariant:
        kinds = {"batched": kinds["batched"], "batch_invariant": (args.clients, True)} | kinds
    servers = {
        kind: BackgroundServer(
            create_app(
                target, draft, ServeConfig("pair", defaults, 256, max_batch_size=size, batch_invariant=same)
            )
        )
        for kind, (size, same) in kinds.items()
    }
    machine = describe_machine(torch.device("cpu"), target.model.dtype)
    print(f"machine: {machine['cpu']}, {machine['torch_threads']} torch threads | "
          f"flags {machine['cpu_flags']} | dtype {machine['dtype']}")  # fmt: skip
    table = {}
    for server in servers.values():
        server.start()
    try:
        for method in args.methods.split(","):
            runs = [one_round(servers, method, questions, args) for _ in range(args.rounds)]
            table[method] = ratios(runs, args.clients)
            print(json.dumps({method: table[method]}, indent=1))
    finally:
        for server in servers.values():
            server.stop()
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "settings": vars(args) | {"out": str(args.out)},
                                        "results": table}, indent=2) + "\n")  # fmt: skip


def one_round(servers: dict, method: str, questions: list[str], args: argparse.Namespace) -> dict:
    """One client alone, then CLIENTS concurrent clients on each server, back to back."""
    clients = {size: client_for(server) for size, server in servers.items()}

    def send(kind: str, i: int) -> tuple[float, int]:
        return one(clients[kind], method, questions, i, args.max_tokens)

    send("one_at_a_time", 0)  # warm up; on batching servers, a burst lets gamma auto price each batch size
    for kind in servers:
        if kind != "one_at_a_time":
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(send, [kind] * args.clients, range(args.clients)))
    alone = [send("one_at_a_time", i) for i in range(args.clients)]
    run = {"alone": summary(alone, sum(seconds for seconds, _ in alone))}
    for kind in servers:  # batched right after alone: the p50 ratio's two sides
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            results = list(pool.map(send, [kind] * (2 * args.clients), range(2 * args.clients)))
            run[kind] = summary(results, time.perf_counter() - start)
    return run


def client_for(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=900)


def one(
    client: openai.OpenAI, method: str, questions: list[str], i: int, max_tokens: int
) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.chat.completions.create(
        model="pair",
        messages=[{"role": "user", "content": questions[i % len(questions)]}],
        max_tokens=max_tokens,
        seed=i,
        extra_body={"mtad": {"method": method}},
    )
    return time.perf_counter() - start, response.usage.completion_tokens


def summary(results: list[tuple[float, int]], wall: float) -> dict:
    tokens = sum(n for _, n in results)
    return {"tokens_per_s": tokens / wall, "p50_latency_s": statistics.median(s for s, _ in results)}


def ratios(runs: list[dict], clients: int) -> dict:
    def median(key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs)

    batched, serial = "batched", "one_at_a_time"
    invariant = {}
    if "batch_invariant" in runs[0]:
        invariant = {
            f"{clients}_clients_batch_invariant_tokens_per_s": median("batch_invariant", "tokens_per_s"),
            "throughput_ratio_batch_invariant_vs_batched": statistics.median(
                run["batch_invariant"]["tokens_per_s"] / run[batched]["tokens_per_s"] for run in runs
            ),
            "throughput_ratio_batch_invariant_vs_one_at_a_time": statistics.median(
                run["batch_invariant"]["tokens_per_s"] / run[serial]["tokens_per_s"] for run in runs
            ),
        }
    return {
        "alone_p50_s": median("alone", "p50_latency_s"),
        f"{clients}_clients_one_at_a_time_tokens_per_s": median(serial, "tokens_per_s"),
        f"{clients}_clients_batched_tokens_per_s": median(batched, "tokens_per_s"),
        "throughput_ratio_batched_vs_one_at_a_time": statistics.median(
            run[batched]["tokens_per_s"] / run[serial]["tokens_per_s"] for run in runs
        ),
        f"{clients}_clients_batched_p50_s": median(batched, "p50_latency_s"),
        "p50_ratio_batched_vs_alone": statistics.median(
            run[batched]["p50_latency_s"] / run["alone"]["p50_latency_s"] for run in runs
        ),
        **invariant,
        "rounds": len(runs),
    }


if __name__ == "__main__":
    main()
