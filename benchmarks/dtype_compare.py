"""float32 against dtype "auto" on one machine, in one run: speed of each method, and whether the
outputs' quality changed (perplexity under the float32 target, paired by prompt).

    python benchmarks/dtype_compare.py                         # default pair, 20 MT-Bench questions
    python benchmarks/dtype_compare.py --prompts 8 --methods ar,sd --max-new-tokens 64

Both pairs stay loaded; every (prompt, dtype, method) runs once, interleaved per prompt in a
rotating order, with the same seed for both dtypes. Speed ratios are per prompt (auto over
float32, same method), then the median. Every output is scored by the float32 target, so the
perplexity difference is the outputs' difference, not the scorer's; its interval is a paired
bootstrap over prompts (`mtad.bench.metrics.paired_difference`). It prints what `auto` chose and
why, with the CPU model and its relevant flags.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

import mtad
from mtad.bench import metrics
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.models.scoring import target_logprobs
from mtad.runtime.precision import auto_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import load, machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target"), parser.add_argument("--draft")
    parser.add_argument("--methods", default="ar,sd,mtad")
    parser.add_argument("--prompts", type=int, default=20, help="MT-Bench questions (first N)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", default="4")
    args = parser.parse_args()
    choice = auto_dtype("cpu")
    pairs = {name: load(args, dtype) for name, dtype in (("float32", "float32"), ("auto", "auto"))}
    target32 = pairs["float32"][0]
    settings = mtad.config.PRESETS["paper"] | {
        "gamma": mtad.config.parse_gamma(args.gamma), "max_new_tokens": args.max_new_tokens, "seed": None,
    }  # fmt: skip
    records = load_dataset("mtbench", None, args.prompts)
    runs = [(dtype, method) for method in args.methods.split(",") for dtype in pairs]
    speed: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    ppl: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for i, record in enumerate(records):
        prompt = encode_record(record, target32.tokenizer)
        for dtype, method in runs[i % len(runs) :] + runs[: i % len(runs)]:
            target, draft = pairs[dtype]
            result = mtad.generate(target.model, draft.model, prompt, method=method, seed=i,
                                   tokenizer=target.tokenizer, **settings)  # fmt: skip
            speed[(dtype, method)][record.id] = result.stats.tokens_per_s or float("nan")
            logprobs = target_logprobs(target32.model, prompt, result.tokens)
            ppl[(dtype, method)][record.id] = metrics.perplexity(logprobs) if logprobs else float("nan")
        print(f"prompt {i + 1}/{len(records)} done", file=sys.stderr)
    print(machine_line(pairs["auto"][0].model))
    print(f"dtype auto chose {choice.name}: {choice.reason}")
    print(f"{len(records)} MT-Bench prompts, {args.max_new_tokens} new tokens, gamma {args.gamma}, beam 4, "
          "T 1, top-k 10, top-p 0.9; perplexity under the float32 target")  # fmt: skip
    print("| method | float32 tok/s | auto tok/s | auto / float32 (median per prompt) | "
          "perplexity float32 | perplexity auto | auto - float32 [95% CI] |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        fp32, auto = speed[("float32", method)], speed[("auto", method)]
        ratios = [auto[p] / fp32[p] for p in fp32 if fp32[p] > 0 and auto.get(p, 0) > 0]
        difference = metrics.paired_difference(ppl[("auto", method)], ppl[("float32", method)])
        interval = difference.interval if difference else None
        shown = f"{interval.estimate:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]" if interval else "n/a"
        cells = [
            f"{statistics.median(fp32.values()):.1f}",
            f"{statistics.median(auto.values()):.1f}",
            f"{statistics.median(ratios):.2f}x",
            f"{statistics.median(ppl[('float32', method)].values()):.3f}",
            f"{statistics.median(ppl[('auto', method)].values()):.3f}",
            shown,
        ]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
