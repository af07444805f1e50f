"""Where a decode step's time goes, per method: target forward, draft forward, sampling and
acceptance, cache operations, and the rest (the loop, tree buffers, stop checks, detokenizing).

    python benchmarks/step_profile.py                              # the default pair, dtype auto
    python benchmarks/step_profile.py --methods ar,sd --prompts 4 --max-new-tokens 64 --dtype float32
    python benchmarks/step_profile.py --target T --draft D
    python benchmarks/step_profile.py --draft suffix --methods ar,sd,specinfer --tree auto

It wraps the engine's parts with wall-clock timers (the wrappers cost well under a microsecond a
call) and runs every method on the same MT-Bench prompts, interleaved per prompt, after one
warm-up generation per method. It prints the CPU model and its relevant flags beside the table.
On CUDA each timed part synchronises the device first, so its time is its own.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator

import torch

import mtad
from mtad.bench.datasets import load_dataset
from mtad.bench.scoring import encode_record
from mtad.config import PRESETS
from mtad.decoding import acceptance, sampling
from mtad.decoding import proposals as drafting
from mtad.decoding.drafts import is_kind_name
from mtad.runtime import cache, vocabulary
from mtad.runtime.precision import DTYPES

PARTS = ("target forward", "draft forward", "model-free draft", "sampling + acceptance", "cache ops", "rest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target"), parser.add_argument("--draft")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    parser.add_argument("--methods", default="ar,sd,mtad,mmtad")
    parser.add_argument("--prompts", type=int, default=4, help="MT-Bench questions (first N)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=mtad.config.parse_gamma, default="auto", help="an integer or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tree", default="4,2,2", help="specinfer/mmtad tree: a branching or auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target, draft = load(args, args.dtype)
    settings = {
        **{k: v for k, v in PRESETS["paper"].items() if k not in ("method", "seed")},
        "gamma": args.gamma,
        "max_new_tokens": args.max_new_tokens,
        "tree": args.tree if args.tree == "auto" else tuple(int(b) for b in args.tree.split(",")),
    }  # the paper's settings
    methods = args.methods.split(",")
    records = load_dataset("mtbench", None, args.prompts)
    prompts = [encode_record(record, target.tokenizer) for record in records]
    timer = PartTimer(target.model)
    with timer.installed():
        for method in methods:  # warm-up: first-call allocations are nobody's cost
            generate(target, draft, prompts[0], method, settings | {"max_new_tokens": 8}, seed=0)
        timer.reset()
        profiles: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
        for i, prompt in enumerate(prompts):
            for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
                timer.reset()
                start = time.perf_counter()
                result = generate(target, draft, prompt, method, settings, seed=i)
                wall = time.perf_counter() - start
                profiles[method].append(timer.split(wall, result.stats))
    print(machine_line(target.model))
    print(f"{len(prompts)} MT-Bench prompts, {args.max_new_tokens} new tokens, gamma {args.gamma}, "
          "beam width 4, T 1, top-k 10, top-p 0.9; medians over prompts")  # fmt: skip
    print(table(profiles, methods))


def load(args: argparse.Namespace, dtype: str) -> tuple[mtad.LoadedModel, mtad.LoadedModel]:
    """The pair named by --target/--draft, or the built-in default pair, in `dtype`."""
    from mtad.models.default_pair import default_draft_path, default_target_path

    target = args.target or default_target_path()
    if is_kind_name(args.draft):  # a model-free draft: only the target is loaded
        return mtad.load_model(target, dtype=dtype), args.draft
    draft = args.draft or (default_draft_path() if args.target is None else None)
    return mtad.load_pair(target, draft, dtype=dtype)


def generate(target, draft, prompt, method, settings, seed) -> mtad.GenerationResult:
    drafting = draft.model if isinstance(draft, mtad.LoadedModel) else draft
    return mtad.generate(target.model, drafting, prompt, method=method, seed=seed,
                         tokenizer=target.tokenizer, **settings)  # fmt: skip


class PartTimer:
    """Wall time per part, accumulated by wrappers installed on the engine's modules."""

    def __init__(self, target_model: torch.nn.Module) -> None:
        self.target_model = target_model
        self.seconds: collections.Counter = collections.Counter()

    def reset(self) -> None:
        self.seconds.clear()

    def split(self, wall: float, stats: mtad.Stats) -> dict[str, float]:
        """Milliseconds per new token of each part, and of the whole generation (a model-free
        draft's lookups and learning are timed by the loop: `Stats.draft_seconds`)."""
        new_tokens = stats.new_tokens
        parts = {part: self.seconds[part] for part in PARTS[:-1]} | {"model-free draft": stats.draft_seconds}
        parts["rest"] = max(0.0, wall - sum(parts.values()))
        scale = 1000 / max(1, new_tokens)
        return {part: seconds * scale for part, seconds in parts.items()} | {"total": wall * scale}

    def _timed(self, part: str | Callable[..., str], function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            name = part(*args) if callable(part) else part
            _synchronise()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _synchronise()
                self.seconds[name] += time.perf_counter() - start

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def which_forward(model: cache.CachedModel, *_: object) -> str:
            return "target forward" if model.model is self.target_model else "draft forward"

        # A feature draft's forward overrides the base one (and does not call it): patch both.
        patches = [
            (cache.CachedModel, "own_logits", which_forward),
            (cache.FeatureDrafter, "own_logits", which_forward),
        ]
        patches += [
            (cache.CachedModel, op, "cache ops") for op in ("truncate", "keep", "repeat", "reorder", "select")
        ]
        patches += [
            (sampling, "warp", "sampling + acceptance"),
            (vocabulary.TokenSubset, "to_target_probs", "sampling + acceptance"),
        ]
        patches += [(drafting, name, "sampling + acceptance") for name in ("sample", "_draw")]
        rules = ("speculative", "mtad_joint", "accept_none", "accept_all", "mmtad_tree", "specinfer_tree",
                 "ordered_candidates_tree", "reference_log_joints")  # fmt: skip
        patches += [(acceptance, name, "sampling + acceptance") for name in rules]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, part in patches:
            setattr(owner, name, self._timed(part, getattr(owner, name)))
        try:
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)


def _synchronise() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def use_pair_arguments(args: argparse.Namespace) -> None:
    """--threads and --target/--draft as the benchmarks share them: torch's thread count, and the
    built-in default pair when no target is named."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.target is None:
        from mtad.models.default_pair import default_draft_path, default_target_path

        args.target, args.draft = default_target_path(), args.draft or default_draft_path()


def machine_line(model: torch.nn.Module) -> str:
    from mtad.bench.machine import describe_machine

    info = describe_machine(model.get_input_embeddings().weight.device, model.dtype)
    return (f"CPU {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads), "
            f"flags: {info['cpu_flags']}; device {info['device']}, dtype {info['dtype']}, "
            f"torch {info['torch']}")  # fmt: skip


def table(profiles: dict[str, list[dict[str, float]]], methods: list[str]) -> str:
    header = "| method | ms/token | " + " | ".join(PARTS) + " | outside forwards |"
    lines = [header, "|" + "---|" * (len(PARTS) + 3)]
    for method in methods:
        median = {key: statistics.median(p[key] for p in profiles[method]) for key in (*PARTS, "total")}
        total = sum(median[part] for part in PARTS)
        cells = [f"{median[part]:.1f} ({100 * median[part] / total:.0f}%)" for part in PARTS]
        outside = 1 - (median["target forward"] + median["draft forward"]) / total
        lines.append(
            f"| {method} | {median['total']:.1f} | " + " | ".join(cells) + f" | {100 * outside:.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
