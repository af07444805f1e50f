"""End-to-end tokens/s with the fast path off and on, beside transformers' own `generate`.

    python benchmarks/fast_path_speed.py                          # default pair, 6 prompts, 64 tokens
    python benchmarks/fast_path_speed.py --prompts 8 --max-new-tokens 128 --methods ar,sd,mtad

Loads of the default pair (or --target/--draft), `--loads`: `off` (dense, dtype auto), `auto` (the
fast path, `mtad.runtime.fast`: mtad's native kernels where they build) and `fbgemm` (the fast path
with the native kernels disabled: fbgemm's fp16 kernel, unfused). On the same held-out prompts
(MT-Bench questions from the end of the set, which the shipped draft never trained or was tuned
on; chat template), every variant runs
once per prompt in a rotating order: transformers' `generate` (sampling with the paper's warp:
T 1, top-k 10, top-p 0.9; EOS off in both so lengths match) on each load, then mtad's methods with
gamma auto. Prints median tokens/s per variant and the ratios the fast path is judged by, with
the CPU model and flags. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.config import PAPER_WARP
from mtad.runtime import native

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line, use_pair_arguments  # noqa: E402

WARP = PAPER_WARP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target"), parser.add_argument("--draft")
    parser.add_argument("--methods", default="ar,sd,mtad")
    parser.add_argument("--prompts", type=int, default=6, help="MT-Bench questions, from the last one back")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--loads", default="off,auto", help="comma list of off, fbgemm, fp16, auto ('off' first)"
    )
    args = parser.parse_args()
    use_pair_arguments(args)
    loads = args.loads.split(",")
    if loads[0] != "off" or "auto" not in loads or not set(loads) <= {"off", "fbgemm", "fp16", "auto"}:
        parser.error(
            f"--loads must start with off, hold auto and only off, fbgemm, fp16, auto; got {args.loads!r}"
        )
    pairs = {fast: load_pair(args, fast) for fast in loads}
    tokenizer = pairs["off"][0].tokenizer
    records = load_dataset("mtbench")[-args.prompts :]
    prompts = [encode_record(record, tokenizer) for record in records]
    variants = [(fast, "transformers") for fast in pairs] + [
        (fast, method) for fast in pairs for method in args.methods.split(",")
    ]
    for fast, (target, _) in pairs.items():
        print(f"{fast}: {target.fast_path.weights} weights, {target.model.dtype}; {target.fast_path.reason}")
    for fast, what in variants:  # warm-up: first calls allocate; gamma auto measures its costs here
        run(pairs[fast], what, prompts[0], 8, seed=0)
    rates: dict[tuple[str, str], list[float]] = {variant: [] for variant in variants}
    for i, prompt in enumerate(prompts):
        for fast, what in variants[i % len(variants) :] + variants[: i % len(variants)]:
            rates[(fast, what)].append(run(pairs[fast], what, prompt, args.max_new_tokens, seed=i))
    print(machine_line(pairs["auto"][0].model))
    print(f"{len(prompts)} held-out MT-Bench prompts, {args.max_new_tokens} new tokens, T 1, top-k 10, "
          "top-p 0.9, gamma auto; median tokens/s over prompts")  # fmt: skip
    base = statistics.median(rates[("off", "ar")])
    print("| fast | method | tokens/s | x ar (off) | x ar (same load) |")
    print("|---|---|---|---|---|")
    for fast, what in variants:
        median = statistics.median(rates[(fast, what)])
        same = statistics.median(rates[(fast, "ar")]) if (fast, "ar") in rates else base
        print(f"| {fast} | {what} | {median:.1f} | {median / base:.2f} | {median / same:.2f} |")


def load_pair(args, load: str):
    if load == "fbgemm":
        with native.disabled():
            return mtad.load_pair(args.target, args.draft, fast="on")
    if load == "fp16":
        with native.fp16_only():
            return mtad.load_pair(args.target, args.draft, fast="on")
    return mtad.load_pair(args.target, args.draft, fast=load)


def run(pair, what: str, prompt: list[int], new_tokens: int, seed: int) -> float:
    """Tokens/s of one generation (wall time around decoding only)."""
    target, draft = pair
    if what == "transformers":
        ids = torch.tensor([prompt])
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = target.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=0, **WARP,
            )  # fmt: skip
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)
    result = mtad.generate(
        target.model, draft.model if draft else None, prompt, method=what, gamma="auto",
        max_new_tokens=new_tokens, seed=seed, eos_token_id=[], **WARP,
    )  # fmt: skip
    return result.stats.tokens_per_s


if __name__ == "__main__":
    main()
