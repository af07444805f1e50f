"""Prometheus metrics of one server (its own registry, so several servers can share a process).

Exact aggregates come from the counters: acceptance rate = accepted / drafted tokens, block
efficiency = completion tokens / target calls, tokens/s = completion tokens / decode seconds.
The histograms show the per-request spread of the same three numbers, by method. With continuous
batching, `mtad_batch_size` counts rows per batch step and mtad_batch_tokens / mtad_batch_seconds
is the server's decoding throughput (all rows together).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from mtad.decoding.loop import GenerationResult

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Outcomes of a request, the `outcome` label of mtad_requests_total.
OUTCOMES = ("ok", "invalid", "unauthorized", "rejected", "timeout", "error", "cancelled")


class Metrics:
    def __init__(
        self, queue_depth: Callable[[], float], busy: Callable[[], float], rows: Callable[[], float]
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mtad_requests", "Requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.prompt_tokens = Counter("mtad_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter(
            "mtad_completion_tokens", "Generated tokens of finished requests", registry=r
        )
        self.drafted = Counter("mtad_drafted_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter("mtad_accepted_tokens", "Draft tokens accepted", registry=r)
        self.target_calls = Counter("mtad_target_calls", "Target forward passes", registry=r)
        self.decode_seconds = Counter("mtad_decode_seconds", "Wall time in the decode loop", registry=r)
        self.acceptance_rate = Histogram(
            "mtad_acceptance_rate",
            "Per-request acceptance rate (requests that drafted)",
            ["method"],
            buckets=[i / 10 for i in range(1, 11)],
            registry=r,
        )
        self.block_efficiency = Histogram(
            "mtad_block_efficiency",
            "Per-request new tokens per target call",
            ["method"],
            buckets=[1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8],
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "mtad_tokens_per_second",
            "Per-request decode speed",
            ["method"],
            buckets=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            registry=r,
        )
        Gauge("mtad_queue_depth", "Requests waiting for the worker", registry=r).set_function(queue_depth)
        Gauge("mtad_worker_busy", "1 while a generation runs", registry=r).set_function(busy)
        Gauge("mtad_batch_rows", "Requests decoding together now", registry=r).set_function(rows)
        self.batch_size = Histogram(
            "mtad_batch_size",
            "Rows per batch step (continuous batching)",
            buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
            registry=r,
        )
        self.batch_tokens = Counter("mtad_batch_tokens", "Tokens committed by batch steps", registry=r)
        self.batch_seconds = Counter("mtad_batch_seconds", "Wall time of batch steps", registry=r)

    def count(self, endpoint: str, outcome: str) -> None:
        self.requests.labels(endpoint=endpoint, outcome=outcome).inc()

    def observe(self, method: str, prompt_tokens: int, result: GenerationResult) -> None:
        stats = result.stats
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(stats.new_tokens)
        self.drafted.inc(stats.drafted_tokens)
        self.accepted.inc(stats.accepted_tokens)
        self.target_calls.inc(stats.target_calls)
        self.decode_seconds.inc(stats.wall_time_s)
        for histogram, value in (
            (self.acceptance_rate, stats.acceptance_rate),
            (self.block_efficiency, stats.block_efficiency),
            (self.tokens_per_s, stats.tokens_per_s),
        ):
            if value is not None:  # undefined for this request (nothing drafted, nothing generated)
                histogram.labels(method=method).observe(value)

    def batch_step(self, rows: int, tokens: int, seconds: float) -> None:
        """One step of the batch (called from the worker): batch throughput = tokens / seconds."""
        self.batch_size.observe(rows)
        self.batch_tokens.inc(tokens)
        self.batch_seconds.inc(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def sum_expositions(current: list[bytes], finished: list[bytes] = ()) -> bytes:
    """One exposition for several servers (replicas): every sample summed over the servers by name
    and labels. `current`: the live servers' expositions; `finished`: those of servers gone, whose
    counters and histograms still count (totals never fall) but whose gauges do not. `_created`
    timestamps are left out (a sum of them means nothing); `mtad_replicas` is the live count."""
    families: dict[str, tuple[str, str, dict[tuple, float]]] = {}  # name -> type, help, samples
    for text, live in [(t, True) for t in current] + [(t, False) for t in finished]:
        for family in text_string_to_metric_families(text.decode()):
            if family.type == "gauge" and not live or family.name.endswith("_created"):
                continue
            _, _, samples = families.setdefault(family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    families["mtad_replicas"] = ("gauge", "Replicas serving now", {("mtad_replicas", ()): len(current)})
    lines = []
    for name, (kind, documentation, samples) in families.items():
        shown = f"{name}_total" if kind == "counter" else name  # as prometheus_client writes it
        lines += [f"# HELP {shown} {documentation}", f"# TYPE {shown} {kind}"]
        for (sample, labels), value in samples.items():
            rendered = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
            lines.append(f"{sample}{{{rendered}}} {value!r}" if labels else f"{sample} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
