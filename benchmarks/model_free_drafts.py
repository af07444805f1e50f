"""Drafts that run no model (`recycle`, `suffix`) beside the shipped model draft and plain `ar`.

    python benchmarks/model_free_drafts.py                                   # default pair, 10 + 10 prompts
    python benchmarks/model_free_drafts.py --mtbench 20 --humaneval 20 --threads 1 --json out.json
    python benchmarks/model_free_drafts.py --variants ar,sd:model,sd:suffix,mtad:recycle+suffix

Each variant is `method:draft[:tree]`: draft = model, recycle, suffix, or several joined by +
(recycle+suffix, recycle+model); tree = auto for the cost-sized tree. All run with gamma auto,
the paper's warp (T 1, top-k 10, top-p 0.9), EOS on and 128 new tokens at most. Prompts: the
last MT-Bench questions and the first HumanEval problems as chat requests (`--offset N` skips
the last N and the first N). Every variant runs once per prompt, in an order that rotates per
prompt, after a warm-up (gamma auto measures its costs there). Reported per task: the median
over prompts of each variant's tokens/s over `ar`'s on the same prompt, block efficiency (new
tokens per target forward), acceptance, verified tree nodes per round, the draft's own share of
the decode time, and the perplexity of the outputs under the target (the paper's quality
measure: MTAD aims below `ar`'s). The CPU model and flags are printed beside the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.metrics import perplexity
from mtad.bench.scoring import encode_record
from mtad.config import PAPER_WARP
from mtad.models.scoring import target_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line, use_pair_arguments  # noqa: E402

WARP = PAPER_WARP
DEFAULT_VARIANTS = (
    "ar,sd:model,mtad:model,sd:recycle,sd:suffix,specinfer:recycle:auto,specinfer:suffix:auto,"
    "mtad:recycle,mtad:suffix,mmtad:recycle:auto,mmtad:suffix:auto"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target"), parser.add_argument("--draft")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--mtbench", type=int, default=10, help="MT-Bench questions, from the last one back")
    parser.add_argument("--humaneval", type=int, default=10, help="HumanEval problems, from the first")
    parser.add_argument("--offset", type=int, default=0, help="skip the last N MT-Bench, first N HumanEval")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fast", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write every run's numbers here")
    args = parser.parse_args()
    use_pair_arguments(args)
    target, draft = mtad.load_pair(args.target, args.draft, fast=args.fast)
    questions = load_dataset("mtbench")
    end = len(questions) - args.offset
    tasks = [("mtbench", r) for r in questions[end - args.mtbench : end]]
    tasks += [("humaneval", r) for r in load_dataset("humaneval")[args.offset : args.offset + args.humaneval]]
    prompts = [(task, encode_record(record, target.tokenizer)) for task, record in tasks]
    variants = args.variants.split(",")
    for variant in variants:  # warm-up; gamma auto measures its costs here
        run(target, draft, variant, prompts[0][1][:48], 8, seed=0)
    runs = []
    for i, (task, prompt) in enumerate(prompts):
        for variant in variants[i % len(variants) :] + variants[: i % len(variants)]:
            stats, tokens = run(target, draft, variant, prompt, args.max_new_tokens, seed=i)
            ppl = perplexity(target_logprobs(target.model, prompt, tokens)) if tokens else math.nan
            runs.append({"prompt": i, "task": task, "variant": variant, "perplexity": ppl} | stats)
        print(f"prompt {i + 1}/{len(prompts)} done", file=sys.stderr, flush=True)
    print(machine_line(target.model))
    fast_path = target.fast_path.weights if target.fast_path else "dense"
    print(f"target {target.model.dtype} ({fast_path} weights); {args.max_new_tokens} new tokens at most, "
          f"paper warp, gamma auto, EOS on")  # fmt: skip
    for task in ("mtbench", "humaneval", "all"):
        print(f"\n{task}:\n" + table([r for r in runs if task in ("all", r["task"])], variants))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(target.model), "runs": runs}, indent=1))


def run(target, draft, variant: str, prompt: list[int], new_tokens: int, seed: int) -> tuple[dict, list[int]]:
    method, _, rest = variant.partition(":")
    kind, _, tree = rest.partition(":")
    kinds = kind.split("+")
    if "model" in kinds and len(kinds) > 1:  # a hybrid: model-free kinds and the draft model
        drafting = mtad.HybridDraft([k for k in kinds if k != "model"] + [draft.model])
    else:
        drafting = draft.model if kind == "model" else kind or None
    extra = {"tree": tree} if tree else {}
    result = mtad.generate(
        target.model, drafting, prompt, method=method, gamma="auto", max_new_tokens=new_tokens, seed=seed,
        tokenizer=target.tokenizer, **WARP, **extra,
    )  # fmt: skip
    return result.stats.as_dict(), result.tokens


def table(runs: list[dict], variants: list[str]) -> str:
    ar = {r["prompt"]: r["tokens_per_s"] for r in runs if r["variant"] == "ar"}
    lines = [
        "| variant | tokens/s (median) | x ar (median of per-prompt ratios) | block efficiency | acceptance "
        "| tree nodes / round | draft time share | perplexity (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant and r["tokens_per_s"]]
        if not mine:
            continue
        ratios = [r["tokens_per_s"] / ar[r["prompt"]] for r in mine if ar.get(r["prompt"])]
        new, calls = sum(r["new_tokens"] for r in mine), sum(r["target_calls"] for r in mine)
        drafted, accepted = sum(r["drafted_tokens"] for r in mine), sum(r["accepted_tokens"] for r in mine)
        rounds = sum(r["rounds"] for r in mine)
        share = sum(r["draft_seconds"] for r in mine) / sum(r["wall_time_s"] for r in mine)
        ppl = statistics.median(r["perplexity"] for r in mine if math.isfinite(r["perplexity"]))
        lines.append(
            f"| {variant} | {statistics.median(r['tokens_per_s'] for r in mine):.1f} | "
            f"{statistics.median(ratios):.2f} | {new / calls:.2f} | "
            f"{accepted / drafted if drafted else float('nan'):.2f} | "
            f"{sum(r['tree_nodes'] for r in mine) / rounds:.1f} | {share:.3f} | {ppl:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
