"""Load and faults against `mtad serve`: normal traffic from concurrent clients mixed with
malformed bodies, oversized decoding settings and client disconnects; counts every outcome.

    python benchmarks/serve_faults.py                    # the default pair (first run converts it)
    python benchmarks/serve_faults.py --tiny --duration 5   # the tests' tiny random pair, seconds
    python benchmarks/serve_faults.py --soak-minutes 30 --serve-args "--dtype float32 --fast off" \
        --results runs/soak-float32                       # a soak: the memory curve over 30 minutes

It starts `mtad serve` as a subprocess on a free loopback port (nothing else is ever contacted),
runs `--clients` threads for `--duration` seconds (each request has a client-side deadline; a
request past it is a hang), samples the server's resident memory (Linux /proc) throughout, and
prints requests sent, succeeded, 4xx, 5xx and hangs per kind, the server's memory at the start,
peak and end, and whether one seeded request gave the same text before and after the load.
Exit code 1 when any 5xx, hang, wrong status or changed text was seen.

Soak mode (`--soak-minutes N`) runs the same client mix for N minutes and also samples the
server's RSS (VmRSS in /proc/<pid>/status) every `--sample-interval` seconds (30) from the start
of the load. The first `--warmup-minutes` (5) of load are warm-up (caches, allocator pools and
each method's working memory reach their size); the samples after it must stay within
`--rss-band` (10 %: max <= 1.10 x min). It writes into `--results`: rss.csv (the curve, with
the requests answered so far), rss.png (the plot), report.md (the curve as a table, the
verdict, every outcome by kind and by status) and summary.json; and exits 1 when the band is
exceeded, as it does on a 5xx or a hang.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ar", "sd", "mtad", "mmtad", "specinfer")
PROMPTS = (
    "Count to ten.",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is a prime number?",
    "Give me a word that rhymes with cat.",
    "Explain beam search in one sentence.",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="serve the tests' tiny random pair")
    parser.add_argument("--clients", type=int, default=6, help="concurrent client threads (6)")
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (180)")
    parser.add_argument("--max-tokens", type=int, default=24, help="max_tokens of normal requests (24)")
    parser.add_argument("--request-timeout", type=float, default=10, help="the server's time limit (10 s)")
    parser.add_argument("--deadline", type=float, default=120, help="client seconds before a hang (120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--serve-args", default="", help='more `mtad serve` flags, one string: "--dtype float32 --fast off"'
    )
    soak = parser.add_argument_group("soak")
    soak.add_argument(
        "--soak-minutes", type=float, default=None, help="a soak of N minutes (replaces --duration)"
    )
    soak.add_argument("--sample-interval", type=float, default=30, help="seconds between RSS samples (30)")
    soak.add_argument("--warmup-minutes", type=float, default=5, help="load minutes before the band (5)")
    soak.add_argument("--rss-band", type=float, default=0.10, help="allowed (max - min) / min after warm-up")
    soak.add_argument("--results", type=Path, default=None, help="report folder (runs/soak-<time>)")
    args = parser.parse_args()
    if args.soak_minutes is not None:
        if not args.soak_minutes > 0 or not args.sample_interval > 0 or args.warmup_minutes < 0:
            parser.error("--soak-minutes and --sample-interval must be > 0, --warmup-minutes >= 0")
        if args.warmup_minutes >= args.soak_minutes:
            parser.error("--warmup-minutes must be shorter than --soak-minutes")
        args.duration = args.soak_minutes * 60
        args.results = args.results or ROOT / "runs" / time.strftime("soak-%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as scratch:
        server_args = _tiny_pair(Path(scratch)) if args.tiny else []
        with Server([*server_args, *shlex.split(args.serve_args)], args.request_timeout) as server:
            return run(args, server)


# ---- the server under test ------------------------------------------------------------------------


class Server:
    """`mtad serve` in a subprocess on a free loopback port, its memory sampled every 0.1 s."""

    def __init__(self, extra_args: list[str], request_timeout_s: float) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.command = [sys.executable, "-m", "mtad", "serve", "--port", str(self.port), "--log-level",
                        "warning", "--request-timeout", str(request_timeout_s), *extra_args]  # fmt: skip
        self.rss_mb: list[float] = []
        self.ready_rss_mb = float("nan")  # once /health answers: the pair loaded, no request yet
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self.stderr_lines = 0
        self._stop = threading.Event()

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True)
        # Drained all along: a soak's warnings must not fill the pipe and block the server.
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                time.sleep(0.5)  # the drain's last lines
                raise SystemExit(f"mtad serve exited: {''.join(self.stderr_tail)[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("mtad serve did not answer /health within 600 s")
            try:
                if call(self.port, "GET", "/health", None, 5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        self.ready_rss_mb = self.rss_now()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.stderr_tail.append(line)
            self.stderr_lines += 1

    def rss_now(self) -> float:
        """The server's resident memory in MB now (VmRSS), NaN where /proc does not say."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _sample(self) -> None:
        while not self._stop.is_set() and self.process.poll() is None:
            rss = self.rss_now()
            if rss == rss:  # not NaN
                self.rss_mb.append(rss)
            time.sleep(0.1)


def _tiny_pair(directory: Path) -> list[str]:
    """Save the tests' tiny random pair (with a chat template) and return its serve flags."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}w3 {{ m['content'] }} {% endfor %}w4"
    for name, model in (("target", tiny_llama(seed=0)), ("draft", tiny_llama(seed=1, layers=1))):
        model.save_pretrained(directory / name)
        tokenizer.save_pretrained(directory / name)
    return ["--target", str(directory / "target"), "--draft", str(directory / "draft"),
            "--served-model-name", "tiny-pair"]  # fmt: skip


# ---- one request ------------------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: bytes | None, timeout_s: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def disconnect_mid_stream(port: int, body: dict, timeout_s: float) -> tuple[int, bytes]:
    """Open a stream, read its first bytes, and hang up: the server must cancel the job."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": True}).encode(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        first = response.read1(64) if response.status == 200 else response.read()
        return response.status, first
    finally:
        connection.close()


def model_name(port: int) -> str:
    return json.loads(call(port, "GET", "/v1/models", None, 30)[1])["data"][0]["id"]


def faults(model: str) -> list[tuple[str, str, bytes, int]]:
    """(kind, path, body, expected status): what the reliability pass threw at the server."""
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 3,
    }
    completion = {"model": model, "prompt": "Hello", "max_tokens": 3}

    def body(value: dict) -> bytes:
        return json.dumps(value).encode()

    chat_path, completion_path = "/v1/chat/completions", "/v1/completions"
    tree = {"method": "specinfer", "tree": [1000, 1000]}
    long_sd = {"max_tokens": 2001, "temperature": 0, "mtad": {"method": "sd", "gamma": 2000}}
    bad_text = [{"role": "user", "content": "a\ud800b"}]
    return [
        ("oversized tree", chat_path, body(chat | {"mtad": tree}), 400),
        ("oversized beams", chat_path, body(chat | {"mtad": {"method": "mtad", "beam_width": 20000}}), 400),
        ("oversized gamma", completion_path, body(completion | long_sd), 400),
        (
            "oversized mmtad",
            chat_path,
            body(chat | {"mtad": {"method": "mmtad", "gamma": 32, "beam_width": 32}}),
            400,
        ),
        ("nested json", completion_path, b"[" * 100_000 + b"]" * 100_000, 400),
        ("lone surrogate", completion_path, body(completion | {"prompt": "a\ud800b"}), 400),
        ("lone surrogate (chat)", chat_path, body(chat | {"messages": bad_text}), 400),
        ("not json", completion_path, b"{not json", 400),
        ("unknown method", completion_path, body(completion | {"mtad": {"method": "beam-me-up"}}), 400),
        ("both token limits", chat_path, body(chat | {"max_completion_tokens": 3}), 400),
        ("huge body", completion_path, body(completion | {"prompt": "x" * (5 * 2**20)}), 413),
        ("bad seed", completion_path, body(completion | {"seed": 2**64}), 400),
    ]


# ---- the load -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, server: Server) -> int:
    port, model = server.port, model_name(server.port)
    probe = {"model": model, "prompt": "Count to five.", "max_tokens": args.max_tokens, "seed": 7,
             "mtad": {"method": "sd"}}  # fmt: skip
    before = call(port, "POST", "/v1/completions", json.dumps(probe).encode(), args.deadline)
    for method in METHODS:  # warm-up: each method's first request sizes its working memory
        warm = probe | {"mtad": {"method": method}, "max_tokens": args.max_tokens}
        call(port, "POST", "/v1/completions", json.dumps(warm).encode(), args.deadline)
    rss_start = server.rss_mb[-1] if server.rss_mb else float("nan")
    load_started = len(server.rss_mb)
    outcomes: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()  # by HTTP status ("hang", 0: no answer)
    wrong: list[str] = []
    lock = threading.Lock()
    load_start = time.monotonic()
    stop_at = load_start + args.duration
    fault_list = faults(model)
    curve: list[tuple[float, float, int]] = []  # soak: (seconds into the load, RSS MB, requests answered)
    sampler_stop = threading.Event()

    def take_sample() -> None:
        with lock:
            answered = statuses.total() - statuses["hang"]
        curve.append((time.monotonic() - load_start, server.rss_now(), answered))

    def sample_curve() -> None:  # at 0, 1, 2, ... intervals into the load, until the clients are done
        while not sampler_stop.is_set():
            take_sample()
            sampler_stop.wait(args.sample_interval)

    def record(kind: str, status: int | None, expected: tuple[int, ...], detail: bytes = b"") -> None:
        group = "hang" if status is None else f"{status // 100}xx"
        with lock:
            outcomes[(kind, group)] += 1
            statuses["hang" if status is None else status] += 1
            if status not in expected and len(wrong) < 20:
                wrong.append(f"{kind}: got {status}, expected {expected}: {detail[:200]!r}")

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        while time.monotonic() < stop_at:
            roll = rng.random()
            try:
                if roll < 0.55:
                    method, streamed = rng.choice(METHODS), rng.random() < 0.5
                    body = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                            "max_tokens": args.max_tokens, "seed": rng.randrange(2**31), "stream": streamed,
                            "mtad": {"method": method}}  # fmt: skip
                    status, data = call(
                        port, "POST", "/v1/chat/completions", json.dumps(body).encode(), args.deadline
                    )
                    record(f"normal {method}{' stream' if streamed else ''}", status, (200, 429, 504), data)
                elif roll < 0.65:
                    body = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                            "max_tokens": 200, "mtad": {"method": rng.choice(METHODS)}}  # fmt: skip
                    status, data = disconnect_mid_stream(port, body, args.deadline)
                    record("disconnect", status, (200, 429), data)
                else:
                    kind, path, payload, expected = rng.choice(fault_list)
                    status, data = call(port, "POST", path, payload, args.deadline)
                    record(kind, status, (expected,), data)
            except TimeoutError:
                record("timed-out request", None, ())
            except (ConnectionError, http.client.HTTPException) as error:
                record(f"connection error {type(error).__name__}", 0, ())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    sampler = threading.Thread(target=sample_curve, daemon=True)
    if args.soak_minutes is not None:
        sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if args.soak_minutes is not None:
        sampler_stop.set()
        sampler.join()
        take_sample()  # the end of the load
    time.sleep(1.0)  # let cancelled jobs drain before the last probe
    after = call(port, "POST", "/v1/completions", json.dumps(probe).encode(), args.deadline)
    health = json.loads(call(port, "GET", "/health", None, 30)[1])
    metrics = call(port, "GET", "/metrics", None, 30)[1].decode()
    during = server.rss_mb[load_started:]
    quarters = [during[min(len(during) - 1, len(during) * q // 4)] for q in (1, 2, 3, 4)] if during else []
    lines = report(args, server, outcomes, wrong, before, after, (rss_start, quarters), health, metrics)
    print("\n".join(lines))
    bad = sum(
        n
        for (kind, group), n in outcomes.items()
        if group in ("5xx", "hang") or kind.startswith("connection")
    )
    same = before[0] == after[0] == 200 and _text(before[1]) == _text(after[1])
    flat = True
    if args.soak_minutes is not None:
        band = rss_band(curve, args.warmup_minutes * 60, args.rss_band)
        flat = bool(band["within"])
        write_soak_report(args, server, curve, band, statuses, rss_start, lines, same)
    return 1 if bad or wrong or not same or not flat else 0


# ---- the soak ------------------------------------------------------------------------------------


def rss_band(curve: list[tuple[float, float, int]], warmup_s: float, band: float) -> dict:
    """The RSS samples after `warmup_s` seconds of load against the band: min, max, their spread
    ((max - min) / min), whether it is within `band`, and the least-squares slope in MB per minute
    (a leak shows as a steady slope even while the spread is still small)."""
    after = [(t, mb) for t, mb, _ in curve if t >= warmup_s and mb == mb]
    summary: dict = {"warmup_s": warmup_s, "band": band, "samples_after_warmup": len(after)}
    if not after:
        return summary | {"within": False, "reason": "no RSS sample after the warm-up"}
    values = [mb for _, mb in after]
    low, high = min(values), max(values)
    slope = None
    if len(after) >= 2 and after[-1][0] > after[0][0]:
        mean_t, mean_mb = sum(t for t, _ in after) / len(after), sum(values) / len(values)
        covariance = sum((t - mean_t) * (mb - mean_mb) for t, mb in after)
        slope = covariance / sum((t - mean_t) ** 2 for t, _ in after) * 60
    spread = (high - low) / low
    return summary | {
        "first_mb": values[0],
        "min_mb": low,
        "max_mb": high,
        "end_mb": values[-1],
        "spread": spread,
        "within": spread <= band,
        "slope_mb_per_min": slope,
    }


def write_soak_report(args, server, curve, band, statuses, rss_probed, lines, same) -> None:
    """rss.csv, rss.png, report.md and summary.json in `args.results`."""
    out: Path = args.results
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rss.csv").open("w") as f:
        f.write("seconds,rss_mb,requests_finished\n")
        f.writelines(f"{t:.1f},{mb:.1f},{n}\n" for t, mb, n in curve)
    server_errors = {
        str(code): n
        for code, n in sorted(statuses.items(), key=lambda item: str(item[0]))
        if str(code)[0] == "5"
    }
    hangs, no_answer = statuses["hang"], statuses[0]
    command = " ".join(shlex.quote(part) for part in server.command)
    summary = {
        "soak_minutes": args.soak_minutes,
        "sample_interval_s": args.sample_interval,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "request_timeout_s": args.request_timeout,
        "deadline_s": args.deadline,
        "server_command": command,
        "rss_ready_mb": server.ready_rss_mb,
        "rss_after_probes_mb": rss_probed,
        "rss_load_start_mb": curve[0][1],
        "rss_end_mb": curve[-1][1],
        "rss_peak_mb": max(server.rss_mb, default=float("nan")),
        "rss_after_warmup": band,
        "requests": statuses.total(),
        "statuses": {str(code): n for code, n in sorted(statuses.items(), key=lambda item: str(item[0]))},
        "server_errors_5xx": sum(server_errors.values()),
        "hangs": hangs,
        "no_answer": no_answer,
        "probe_same_text": same,
        "server_stderr_lines": server.stderr_lines,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(curve, band, out / "rss.png")
    verdict = "within" if band["within"] else "NOT within"
    md = [
        f"# Soak: {args.soak_minutes:g} minutes of mixed load on `mtad serve`",
        "",
        f"Server: `{command}` (port chosen at random; the pair loaded before the load).",
        f"Load: {args.clients} clients, the serve_faults.py mix (55 % chat requests over "
        f"{', '.join(METHODS)}, half streamed, max_tokens {args.max_tokens}; 10 % disconnects "
        f"mid-stream; 35 % malformed or oversized requests); server time limit "
        f"{args.request_timeout:g} s; a client waiting {args.deadline:g} s for a byte is a hang.",
        f"RSS (VmRSS of the server process) sampled every {args.sample_interval:g} s from the start "
        f"of the load; warm-up = the first {args.warmup_minutes:g} minutes of load.",
        "",
        "| | RSS MB |",
        "| --- | --- |",
        f"| pair loaded, before any request | {server.ready_rss_mb:.0f} |",
        f"| after one request per method | {rss_probed:.0f} |",
        f"| start of the load | {curve[0][1]:.0f} |",
    ]
    if "min_mb" in band:
        md += [
            f"| after warm-up: first sample | {band['first_mb']:.0f} |",
            f"| after warm-up: min - max | {band['min_mb']:.0f} - {band['max_mb']:.0f} |",
            f"| end of the load | {band['end_mb']:.0f} |",
        ]
    md += [f"| peak (0.1 s samples, whole run) | {summary['rss_peak_mb']:.0f} |", ""]
    if "min_mb" in band:
        slope = band["slope_mb_per_min"]
        md.append(
            f"After warm-up ({band['samples_after_warmup']} samples): spread (max - min) / min = "
            f"{band['spread']:.1%}, {verdict} the {args.rss_band:.0%} band; least-squares slope "
            + (f"{slope:+.2f} MB/min." if slope is not None else "n/a.")
        )
    else:
        md.append(f"After warm-up: {band['reason']}.")
    md += [
        f"5xx: {summary['server_errors_5xx']} {server_errors or ''}; hangs: {hangs}; no answer "
        f"(connection errors): {no_answer}; requests: {summary['requests']} "
        f"(by status: {summary['statuses']}).",
        f"Seeded probe before and after the load: {'same text' if same else 'DIFFERENT'}.",
        "",
        "![RSS over the soak](rss.png)",
        "",
        "## The curve",
        "",
        "| minute | RSS MB | requests finished |",
        "| --- | --- | --- |",
        *(f"| {t / 60:.1f} | {mb:.0f} | {n} |" for t, mb, n in curve),
        "",
        "## The script's printout",
        "",
        "```",
        *lines,
        "```",
    ]
    if server.stderr_tail:
        md += [
            "",
            f"## The server's stderr (last {len(server.stderr_tail)} of {server.stderr_lines} lines)",
            "",
        ]
        md += ["```", *(line.rstrip("\n") for line in server.stderr_tail), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print(f"soak: RSS after warm-up {verdict} {args.rss_band:.0%}; report in {out}")


def _plot(curve: list[tuple[float, float, int]], band: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [t / 60 for t, _, _ in curve]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    top.plot(minutes, [mb for _, mb, _ in curve], marker="o", markersize=3)
    top.axvspan(0, band["warmup_s"] / 60, color="0.9", label="warm-up")
    if "min_mb" in band:
        top.axhline(band["min_mb"], color="0.5", linestyle=":", linewidth=1)
        top.axhline(band["min_mb"] * (1 + band["band"]), color="tab:red", linestyle="--", linewidth=1,
                    label=f"min after warm-up + {band['band']:.0%}")  # fmt: skip
    top.set_ylabel("server RSS (MB)")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    pairs = zip(curve, curve[1:], strict=False)
    rates = [(n1 - n0) / max(t1 - t0, 1e-9) * 60 for (t0, _, n0), (t1, _, n1) in pairs]
    bottom.step(minutes[1:], rates, where="pre")
    bottom.set_ylabel("requests / min")
    bottom.set_xlabel("minutes of load")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _text(raw: bytes) -> str:
    return json.loads(raw)["choices"][0]["text"]


def report(args, server, outcomes, wrong, before, after, rss_start, health, metrics) -> list[str]:
    """The run's outcome as lines of text (printed; a soak's report.md quotes them)."""
    lines: list[str] = []
    say = lines.append
    say(f"mtad serve under load and faults: {args.clients} clients, {args.duration:g} s, "
          f"request timeout {args.request_timeout:g} s, pid {server.process.pid}")  # fmt: skip
    say(f"{'kind':28} {'sent':>6} {'2xx':>6} {'4xx':>6} {'5xx':>6} {'hang':>6}")
    kinds = sorted({kind for kind, _ in outcomes})
    totals = collections.Counter()
    for kind in kinds:
        row = {g: outcomes[(kind, g)] for g in ("2xx", "4xx", "5xx", "hang")}
        sent = sum(outcomes[(kind, g)] for g in ("2xx", "4xx", "5xx", "hang", "0xx"))
        totals.update(row | {"sent": sent})
        say(f"{kind:28} {sent:6} {row['2xx']:6} {row['4xx']:6} {row['5xx']:6} {row['hang']:6}")
    say(f"{'total':28} " + " ".join(f"{totals[g]:6}" for g in ("sent", "2xx", "4xx", "5xx", "hang")))
    rss, (rss_start, quarters) = server.rss_mb, rss_start
    if rss and quarters:
        shown = ", ".join(f"{mb:.0f}" for mb in quarters)
        say(
            f"server RSS: {rss_start:.0f} MB after one request per method, {shown} MB at "
            f"1/4, 1/2, 3/4 and the end of the load; peak {max(rss):.0f} MB"
        )
    else:
        say("server RSS: n/a (no /proc on this system)")
    same = before[0] == after[0] == 200 and _text(before[1]) == _text(after[1])
    say(f"seeded probe before and after the load: {'same text' if same else 'DIFFERENT'}")
    say(f"health after: {health}")
    for line in metrics.splitlines():
        if line.startswith("mtad_requests_total"):
            say(line)
    for line in wrong:
        say(f"UNEXPECTED {line}")
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
