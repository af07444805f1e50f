"""Load and faults against `mtad serve`: normal traffic from concurrent clients mixed with
malformed bodies, oversized decoding settings and client disconnects; counts every outcome.

    python benchmarks/serve_faults.py                    # the default pair (first run converts it)
    python benchmarks/serve_faults.py --tiny --duration 5   # the tests' tiny random pair, seconds

It starts `mtad serve` as a subprocess on a free loopback port (nothing else is ever contacted),
runs `--clients` threads for `--duration` seconds (each request has a client-side deadline; a
request past it is a hang), samples the server's resident memory (Linux /proc) throughout, and
prints requests sent, succeeded, 4xx, 5xx and hangs per kind, the server's memory at the start,
peak and end, and whether one seeded request gave the same text before and after the load.
Exit code 1 when any 5xx, hang, wrong status or changed text was seen.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        server_args = _tiny_pair(Path(scratch)) if args.tiny else []
        with Server(server_args, args.request_timeout) as server:
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
        self._stop = threading.Event()

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"mtad serve exited: {self.process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("mtad serve did not answer /health within 600 s")
            try:
                if call(self.port, "GET", "/health", None, 5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.process.pid}/status")
        while not self._stop.is_set() and status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.rss_mb.append(int(line.split()[1]) / 1024)
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
    wrong: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.duration
    fault_list = faults(model)

    def record(kind: str, status: int | None, expected: tuple[int, ...], detail: bytes = b"") -> None:
        group = "hang" if status is None else f"{status // 100}xx"
        with lock:
            outcomes[(kind, group)] += 1
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
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)  # let cancelled jobs drain before the last probe
    after = call(port, "POST", "/v1/completions", json.dumps(probe).encode(), args.deadline)
    health = json.loads(call(port, "GET", "/health", None, 30)[1])
    metrics = call(port, "GET", "/metrics", None, 30)[1].decode()
    during = server.rss_mb[load_started:]
    quarters = [during[min(len(during) - 1, len(during) * q // 4)] for q in (1, 2, 3, 4)] if during else []
    report(args, server, outcomes, wrong, before, after, (rss_start, quarters), health, metrics)
    bad = sum(
        n
        for (kind, group), n in outcomes.items()
        if group in ("5xx", "hang") or kind.startswith("connection")
    )
    same = before[0] == after[0] == 200 and _text(before[1]) == _text(after[1])
    return 1 if bad or wrong or not same else 0


def _text(raw: bytes) -> str:
    return json.loads(raw)["choices"][0]["text"]


def report(args, server, outcomes, wrong, before, after, rss_start, health, metrics) -> None:
    print(f"mtad serve under load and faults: {args.clients} clients, {args.duration:g} s, "
          f"request timeout {args.request_timeout:g} s, pid {server.process.pid}")  # fmt: skip
    print(f"{'kind':28} {'sent':>6} {'2xx':>6} {'4xx':>6} {'5xx':>6} {'hang':>6}")
    kinds = sorted({kind for kind, _ in outcomes})
    totals = collections.Counter()
    for kind in kinds:
        row = {g: outcomes[(kind, g)] for g in ("2xx", "4xx", "5xx", "hang")}
        sent = sum(outcomes[(kind, g)] for g in ("2xx", "4xx", "5xx", "hang", "0xx"))
        totals.update(row | {"sent": sent})
        print(f"{kind:28} {sent:6} {row['2xx']:6} {row['4xx']:6} {row['5xx']:6} {row['hang']:6}")
    print(f"{'total':28} " + " ".join(f"{totals[g]:6}" for g in ("sent", "2xx", "4xx", "5xx", "hang")))
    rss, (rss_start, quarters) = server.rss_mb, rss_start
    if rss and quarters:
        shown = ", ".join(f"{mb:.0f}" for mb in quarters)
        print(
            f"server RSS: {rss_start:.0f} MB after warm-up (one request per method), {shown} MB at "
            f"1/4, 1/2, 3/4 and the end of the load; peak {max(rss):.0f} MB"
        )
    else:
        print("server RSS: n/a (no /proc on this system)")
    same = before[0] == after[0] == 200 and _text(before[1]) == _text(after[1])
    print(f"seeded probe before and after the load: {'same text' if same else 'DIFFERENT'}")
    print(f"health after: {health}")
    for line in metrics.splitlines():
        if line.startswith("mtad_requests_total"):
            print(line)
    for line in wrong:
        print(f"UNEXPECTED {line}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
