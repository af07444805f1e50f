"""`mtad demo`: the README's first command. The default pair, a few prompts, methods side by side.

Methods run interleaved per prompt (ar, sd, mtad, ar, sd, mtad, ...) after one warm-up, so a noisy
machine slows them alike; the table shows medians over prompts and the speed-up over `ar` measured
in this same run. Perplexity is scored afterwards under the unwarped target, outside the timing.
"""

from __future__ import annotations

import argparse
import statistics

from rich.console import Console
from rich.table import Table

from mtad.api import generate, validate_settings
from mtad.bench.metrics import perplexity
from mtad.cli.common import (
    add_decoding_arguments,
    add_pair_arguments,
    decoding_settings,
    limits,
    load_pair_from_args,
)
from mtad.decoding.drafts import as_draft
from mtad.decoding.methods import methods as registered
from mtad.decoding.methods import without_draft
from mtad.decoding.speculation import SpeculationConfig
from mtad.errors import ConfigError
from mtad.models import encode_prompt
from mtad.models.scoring import target_logprobs
from mtad.runtime.fast import weights_format
from mtad.runtime.precision import dtype_name

# Written for this demo: none of them comes from MT-Bench, HumanEval or Spider, nor from the
# distillation instructions, so the draft never saw them.
DEMO_PROMPTS = (
    "Explain in a short paragraph why the sky looks blue during the day.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Give three practical tips for learning to cook at home.",
    "Describe how a bicycle gear system works to a ten-year-old.",
)


DEFAULT_METHODS = "ar,sd,mtad"


def _split_methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run ar, sd and mtad side by side on the default pair",
        description="Run several methods on a few built-in prompts and print a side-by-side table.",
    )  # fmt: skip
    add_pair_arguments(parser)
    add_decoding_arguments(parser)
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default {DEFAULT_METHODS}; {','.join(without_draft())} "
        "without a draft)",
    )
    parser.add_argument("--prompts", type=int, default=len(DEMO_PROMPTS), help="how many built-in prompts")
    parser.set_defaults(func=run, max_new_tokens=64, seed=0)


def run(args: argparse.Namespace) -> int:
    methods = _split_methods(args.methods or DEFAULT_METHODS)
    unknown = [m for m in methods if m not in registered()]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown or methods!r}; allowed: {', '.join(registered())}")
    if not 1 <= args.prompts <= len(DEMO_PROMPTS):
        raise ConfigError(f"--prompts must be in 1..{len(DEMO_PROMPTS)}, got {args.prompts}")
    if args.max_new_tokens < 1:
        raise ConfigError(
            f"--max-new-tokens must be >= 1 for the demo's speed table, got {args.max_new_tokens}"
        )
    settings, ceilings = decoding_settings(args), limits(args)
    for method in methods:
        ceilings.check(validate_settings(**(settings | {"method": method}))[0])
    console = Console(stderr=True)
    console.print("[bold]mtad demo[/bold]: loading the model pair (the first run converts the target)...")
    target, draft = load_pair_from_args(args, need_draft=True)
    needs_draft = [m for m in methods if SpeculationConfig(method=m).needs_draft]
    if draft is None and needs_draft and args.methods is None:
        # A --target without --draft (the built-in draft pairs only with the default target): show
        # what runs instead of failing, and say how to get the drafted methods.
        console.print(
            f"[yellow]no draft model[/yellow] for this target, so {', '.join(needs_draft)} "
            f"cannot run; showing {','.join(without_draft())}. Pass --draft DIR (see `mtad distill`) "
            "for them."
        )
        methods = without_draft()
    elif draft is None and needs_draft:
        raise ConfigError(
            f"no draft model for {', '.join(needs_draft)}: pass --draft DIR (the built-in draft pairs "
            f"only with the default target), or --methods {','.join(without_draft())}"
        )
    prompts = [encode_prompt(target.tokenizer, text) for text in DEMO_PROMPTS[: args.prompts]]
    draft_model = as_draft(draft)

    def run_one(method: str, prompt: list[int], seed: int):
        return generate(target.model, draft_model, prompt, tokenizer=target.tokenizer, limits=ceilings,
                        **(settings | {"method": method, "seed": seed}))  # fmt: skip

    run_one(methods[0], prompts[0], 0)  # warm-up: first-call allocations are not anybody's cost
    results = {m: [] for m in methods}
    for i, prompt in enumerate(prompts):
        for method in methods:
            console.print(f"  prompt {i + 1}/{len(prompts)}: {method}", highlight=False)
            results[method].append(run_one(method, prompt, args.seed + i))
    print_table(results, prompts, target.model, methods, args)
    return 0


def print_table(results: dict, prompts: list[list[int]], target_model, methods: list[str], args) -> None:
    console = Console()
    speed = {m: statistics.median(r.stats.tokens_per_s for r in rs) for m, rs in results.items()}
    baseline = speed.get("ar")
    precision = dtype_name(target_model.dtype)
    if weights_format(target_model) != "dense":
        precision += f", {weights_format(target_model)} weights"
    table = Table(title=f"mtad demo: {len(prompts)} prompts, {precision}, medians "
                        f"(gamma {args.gamma}, beam width "
                        f"{args.beam_width}, tau {args.threshold}, T {args.temperature}, top-k {args.top_k}, "
                        f"top-p {args.top_p})")  # fmt: skip
    for column in ("method", "tokens/s", "speed-up vs ar", "acceptance", "block eff.", "perplexity"):
        table.add_column(column, justify="right")
    for method in methods:
        runs = results[method]
        ppl = statistics.median(
            perplexity(target_logprobs(target_model, prompt, r.tokens))
            for prompt, r in zip(prompts, runs, strict=True)
        )
        drafted = SpeculationConfig(method=method).needs_draft
        table.add_row(
            method,
            f"{speed[method]:.1f}",
            f"{speed[method] / baseline:.2f}x" if baseline else "n/a",
            _median(r.stats.acceptance_rate for r in runs) if drafted else "-",
            _median(r.stats.block_efficiency for r in runs),
            f"{ppl:.2f}",
        )
    console.print(table)
    for method in methods:
        console.rule(f"{method}: sample output (prompt 1)")
        console.print(results[method][0].text, highlight=False, markup=False)


def _median(values) -> str:
    """The median of the defined values ("n/a" when none is: gamma auto may never draft)."""
    defined = [v for v in values if v is not None]
    return f"{statistics.median(defined):.2f}" if defined else "n/a"
