"""What Ray itself costs `mtad bench --ray` on this machine: starting a local cluster, starting an
actor, handing a unit to it and its rows back, stopping the cluster.

    python benchmarks/ray_overhead.py --results runs/ray/results.jsonl

The unit handed over is a real one (a prompt's rows from --results, as an actor returns them);
the actor does nothing with it, so the round trip is Ray's scheduling and serialisation alone.
Loading the pair in each actor is not Ray's cost: `mtad bench --ray` writes it in machine.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict

import ray


@ray.remote(num_cpus=1)
class Echo:
    def run(self, unit):
        return unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a results.jsonl whose units to send")
    parser.add_argument("--round-trips", type=int, default=50)
    args = parser.parse_args()
    units = defaultdict(list)
    for line in open(args.results, encoding="utf-8"):
        row = json.loads(line)
        units[row["prompt_id"]].append(row)
    unit = next(iter(units.values()))
    size = len(json.dumps(unit))

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    actor = Echo.remote()
    ray.get(actor.run.remote([]))
    actor_s = time.perf_counter() - start
    trips = []
    for _ in range(args.round_trips):
        start = time.perf_counter()
        ray.get(actor.run.remote(unit))
        trips.append(time.perf_counter() - start)
    start = time.perf_counter()
    ray.shutdown()
    shutdown_s = time.perf_counter() - start
    print(f"local cluster start {init_s:.2f} s; first actor start and call {actor_s:.2f} s")
    print(
        f"one unit ({len(unit)} rows, {size / 1024:.1f} KiB as JSON) to an actor and back: median "
        f"{statistics.median(trips) * 1000:.1f} ms, max {max(trips) * 1000:.1f} ms over {len(trips)}"
    )
    print(f"cluster stop {shutdown_s:.2f} s")


if __name__ == "__main__":
    main()
