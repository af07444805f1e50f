"""What a feature draft's step costs beside the target's, by decoder layers and head width.

    python benchmarks/draft_cost.py --layers 1,2 --heads 4096,8192,16384,0 --dtypes bfloat16,float32

Times one drafted token after a 200-token prefix (median of --repeats, after warm-up) for freshly
built feature drafts of the default target (`mtad.models.feature_draft.build_feature_draft`; weights do not
change the cost), against the target's forward of 1 and 5 tokens on the same cache length. Head 0 =
the whole vocabulary. Prints the CPU model and flags beside the table; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from mtad.models import load_model
from mtad.models.default_pair import default_target_path
from mtad.models.feature_draft import build_feature_draft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402

PREFIX = 200


def median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def target_ms(target, prefix: torch.Tensor, fed: int, repeats: int) -> float:
    cache = DynamicCache(config=target.config)
    target(prefix, cache=cache, use_cache=True)
    width = target.config.vocab_size

    def step() -> None:
        target(torch.randint(0, width, (1, fed)), cache=cache, use_cache=True, logits_to_keep=fed)
        cache.crop(-fed)

    return median_ms(step, repeats)


def draft_ms(draft, prefix: torch.Tensor, dtype: torch.dtype, repeats: int) -> float:
    cache = DynamicCache(config=draft.config)
    states = torch.zeros(1, PREFIX, draft.config.target_hidden_size * len(draft.config.feature_layers))
    draft(input_ids=prefix, features=draft.fuse_features(states.to(dtype)), cache=cache)
    own = torch.zeros(1, 1, draft.config.hidden_size, dtype=dtype)
    width = draft.target_width

    def step() -> None:
        draft(input_ids=torch.randint(0, width, (1, 1)), features=own, cache=cache, logits_to_keep=1)
        cache.crop(-1)

    return median_ms(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,2", help="decoder layers to try")
    parser.add_argument("--heads", default="4096,8192,16384,0", help="head rows to try (0: all)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--target", help="default: the built-in target")
    args = parser.parse_args()
    torch.manual_seed(0)
    source = load_model(args.target or default_target_path(), dtype=torch.float32, fast="off").model.eval()
    width = source.config.vocab_size
    prefix = torch.randint(0, width, (1, PREFIX))
    rows = []
    with torch.inference_mode():
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            target = load_model(args.target or default_target_path(), dtype=dtype).model.eval()
            one, five = target_ms(target, prefix, 1, args.repeats), target_ms(target, prefix, 5, args.repeats)
            print(f"{name}: target 1 token {one:.1f} ms, 5 tokens {five:.1f} ms", flush=True)
            for layers in (int(x) for x in args.layers.split(",")):
                for head in (int(x) or width for x in args.heads.split(",")):
                    draft = build_feature_draft(source, list(range(head)), None, layers).to(dtype).eval()
                    draft.attach(target)
                    ms = draft_ms(draft, prefix, dtype, args.repeats)
                    rows.append((name, layers, head, ms, ms / one))
    print(machine_line(target))
    print("| dtype | decoder layers | head rows | ms per drafted token | x target token |")
    print("|---|---|---|---|---|")
    for name, layers, head, ms, ratio in rows:
        print(f"| {name} | {layers} | {head} | {ms:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
