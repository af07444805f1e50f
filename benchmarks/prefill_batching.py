"""The latency floor of a batch that starts together: prefills (serial, padded or packed into one
forward) and the step cost of N rows against one, on the default target.

    python benchmarks/prefill_batching.py --rows 8 --new-tokens 64

A batch prefills the prompts that join together in one packed forward, common prefixes fed once
(`mtad.runtime.ragged.packing`), and then joins their caches to the batch's
(`mtad.runtime.ragged`). This measures, side by side (interleaved, median of --repeats), that
packed forward against the N prefills one after another (a request joining alone) and one padded
forward over all N prompts, and one decode step of N rows against one row after those prompts.
From them it prints the best p50 ratio any scheduler can reach when N requests arrive at once:
every request waits for all prefills (they share the CPU with the decode steps however they are
ordered) and then for `--new-tokens` batched steps, against one prefill and as many lone steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

import mtad
from mtad.bench.datasets import load_mtbench
from mtad.models import load_model
from mtad.models.default_pair import default_target_path
from mtad.runtime.attention import additive_mask
from mtad.runtime.ragged import packing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_profile import machine_line  # noqa: E402


def padded_inputs(prompts: list[torch.Tensor], dtype: torch.dtype) -> dict:
    """Right-aligned prompts in one batch: padding slots see only themselves (no row of -inf)."""
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((rows, width), dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    visible = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1, 1)
    for row, prompt in enumerate(prompts):
        start = width - len(prompt)
        ids[row, start:], positions[row, start:] = prompt, torch.arange(len(prompt))
        visible[row, 0, start:, start:] = torch.ones((len(prompt),) * 2, dtype=torch.bool).tril()
    return {"input_ids": ids, "position_ids": positions, "attention_mask": additive_mask(visible, dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    loaded = load_model(default_target_path(), dtype=getattr(torch, args.dtype))
    model, tokenizer = loaded.model, loaded.tokenizer
    records = load_mtbench()[: args.rows]
    prompts = [
        torch.tensor(mtad.encode_prompt(tokenizer, r.prompt or r.messages[0]["content"])).reshape(-1)
        for r in records
    ]
    config = model.config

    def serial() -> None:
        for prompt in prompts:
            model(input_ids=prompt[None], cache=DynamicCache(config=config), use_cache=True, logits_to_keep=1)

    def padded() -> None:
        inputs = padded_inputs(prompts, model.dtype)
        model(**inputs, cache=DynamicCache(config=config), use_cache=True, logits_to_keep=1)

    def packed() -> None:  # what the batch does now (runtime.ragged.packing): one row, common prefixes once
        layout = packing.pack([{"input_ids": prompt[None], "logits_to_keep": 1} for prompt in prompts])
        last = torch.stack([path[-1] for path in layout.paths]).unique()
        model(input_ids=layout.input_ids, position_ids=layout.position_ids,
              attention_mask=additive_mask(layout.visible[None, None], model.dtype),
              cache=DynamicCache(config=config), use_cache=True, logits_to_keep=last)  # fmt: skip

    def step(rows: int):
        cache = DynamicCache(config=config)
        model(input_ids=prompts[0][None].expand(rows, -1), cache=cache, use_cache=True, logits_to_keep=1)
        return lambda: model(input_ids=torch.ones((rows, 1), dtype=torch.long), cache=cache, use_cache=True)

    def timed(function) -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    names = ("serial", "padded", "packed", "one", "one row step", "batch step")
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        one_step, batch_step = step(1), step(args.rows)
        for function in (serial, padded, packed, one_step, batch_step):
            function()  # warm-up
        for _ in range(args.repeats):
            times["serial"].append(timed(serial))
            times["padded"].append(timed(padded))
            times["packed"].append(timed(packed))
            times["one"].append(timed(lambda: model(input_ids=prompts[0][None], logits_to_keep=1)))
            times["one row step"].append(timed(one_step))
            times["batch step"].append(timed(batch_step))
    median = {name: statistics.median(values) for name, values in times.items()}
    one, batch = median["one row step"], median["batch step"]
    alone = median["one"] + args.new_tokens * one
    print(machine_line(model))
    print(f"{args.rows} MT-Bench prompts ({', '.join(str(len(p)) for p in prompts)} tokens), median of "
          f"{args.repeats}, interleaved")  # fmt: skip
    fed = packing.pack([{"input_ids": prompt[None]} for prompt in prompts]).tokens
    print(f"prefills one after another: {median['serial'] * 1000:.0f} ms; padded into one forward: "
          f"{median['padded'] * 1000:.0f} ms ({median['padded'] / median['serial']:.2f}x); packed, "
          f"common prefixes once (ragged.packing, {fed} of {sum(len(p) for p in prompts)} tokens): "
          f"{median['packed'] * 1000:.0f} ms ({median['packed'] / median['serial']:.2f}x)")  # fmt: skip
    print(f"decode step: 1 row {one * 1000:.1f} ms, {args.rows} rows {batch * 1000:.1f} ms "
          f"({batch / one:.2f}x)")  # fmt: skip
    for name in ("serial", "padded", "packed"):
        together = median[name] + args.new_tokens * batch
        print(f"p50 floor with {name} prefills, {args.new_tokens} tokens: {together:.2f} s against "
              f"{alone:.2f} s alone = {together / alone:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
