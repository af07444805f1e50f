"""Held-out expected acceptance per draft position for several drafts, on the same answers.

    python benchmarks/draft_heldout.py --data-dir runs/distill-data-v2 --instruction-set 2 \
        --drafts src/mtad/data/draft,runs/fd-v1 --depths 4

Reads the held-out split of a `mtad distill` data directory (the target's own answers to requests
on unseen subjects) and, for each draft, prints Σ min(p, q) under the paper's warp (T 1, top-k 10,
top-p 0.9) at draft positions 1..depths, teacher-forced on the answer text, with KL and greedy
agreement at position 1. A feature draft is unrolled on its own outputs (`mtad.distill.features`);
a token draft reads no states, so its value is the same at every position. The target runs in
float32, like the trainer's teacher. The CPU model and flags are printed beside the table.

`--mtbench N` scores a second answer set the same way: the target's own sampled answers (paper
warp, seed 0, `--max-new-tokens`) to the first N MT-Bench questions, the prompts the issue's
speed targets use, without decoding noise (what `mtad bench` realizes is a sample of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mtad.bench.datasets import load_mtbench
from mtad.distill.data import DataSettings, generate_samples, load_split
from mtad.distill.kinds import FeatureDrafts, TokenDrafts
from mtad.distill.train import TrainSettings
from mtad.models import load_model
from mtad.models.feature_draft import is_feature_draft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a mtad distill data directory")
    parser.add_argument("--instruction-set", type=int, default=2)
    parser.add_argument("--heldout-samples", type=int, default=32)
    parser.add_argument("--gen-batch-size", type=int, default=32, help="as the data was made with")
    parser.add_argument("--drafts", required=True, help="comma-separated draft directories")
    parser.add_argument("--depths", type=int, default=4)
    parser.add_argument("--target", help="default: the built-in target")
    parser.add_argument("--mtbench", type=int, default=0, help="also score answers to N MT-Bench questions")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="length of those answers")
    args = parser.parse_args()
    if args.target is None:
        from mtad.models.default_pair import default_target_path

        args.target = default_target_path()
    target = load_model(args.target, dtype=torch.float32, fast="off").model.eval()
    data = DataSettings(heldout_samples=args.heldout_samples, gen_batch_size=args.gen_batch_size,
                        instruction_set=args.instruction_set)  # fmt: skip
    answer_sets = {"held-out": load_split(Path(args.data_dir), "heldout", data)}
    if args.mtbench:
        answer_sets["MT-Bench"] = mtbench_answers(target, args.target, args.mtbench, args.max_new_tokens)
    settings = TrainSettings(depths=args.depths)
    rows = []
    for path in args.drafts.split(","):
        draft = load_model(path, dtype=torch.float32, fast="off").model.eval()
        kind = (FeatureDrafts if is_feature_draft(draft) else TokenDrafts)(target, settings)
        draft = kind.loaded(draft)
        for name, answers in answer_sets.items():
            started = time.perf_counter()
            metrics = kind.heldout(draft, answers)
            rows.append((path, "features" if is_feature_draft(draft) else "tokens", name, metrics))
            seconds = round(time.perf_counter() - started, 1)
            print(json.dumps({"draft": path, "answers": name, **metrics, "seconds": seconds}))
    print(machine_line(target))
    for name, answers in answer_sets.items():
        positions = next(r[3]["positions"] for r in rows if r[2] == name)
        print(f"{name}: {len(answers)} answers, {positions} positions, paper warp")
    columns = " | ".join(f"position {j + 1}" for j in range(args.depths))
    print(f"\n| answers | draft | kind | {columns} | KL (pos. 1) | greedy agreement |")
    print("|---|---|---|" + "---|" * (args.depths + 2))
    for path, kind_name, name, metrics in rows:
        cells = " | ".join(f"{a:.3f}" for a in metrics["acceptance_per_position"])
        print(f"| {name} | {path} | {kind_name} | {cells} | {metrics['kl']:.2f} | "
              f"{metrics['greedy_agreement']:.3f} |")  # fmt: skip


def mtbench_answers(target, target_dir, count: int, max_new_tokens: int) -> list:
    """The target's sampled answers to the first `count` MT-Bench questions (first turns)."""
    tokenizer = load_model(target_dir, dtype=torch.float32).tokenizer
    talks = [[record.messages[0]["content"]] for record in load_mtbench()[:count]]
    settings = DataSettings(max_new_tokens=max_new_tokens, gen_batch_size=count)
    return generate_samples(target, tokenizer, talks, settings, seed=0)


if __name__ == "__main__":
    main()
