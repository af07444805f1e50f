"""`mtad generate`: decode one prompt and print the text, or JSON with every statistic."""

from __future__ import annotations

import argparse
import json
import sys

from mtad.api import check_text, stream, validate_settings
from mtad.cli.common import (
    add_decoding_arguments,
    add_pair_arguments,
    decoding_settings,
    limits,
    load_pair_from_args,
)
from mtad.decoding.drafts import as_draft, describe_draft
from mtad.errors import ConfigError
from mtad.models import encode_prompt
from mtad.runtime.precision import dtype_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="decode one prompt with a method",
        description="Decode one prompt and print the text (or --json).",
    )
    parser.add_argument("prompt", help="the prompt text")
    add_pair_arguments(parser)
    add_decoding_arguments(parser)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object with text and statistics")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt:
        raise ConfigError("prompt is empty; allowed: a non-empty string")
    check_text(args.prompt, "prompt")
    for stop in args.stop or ():
        check_text(stop, "stop")
    settings = decoding_settings(args)
    spec, _ = validate_settings(**settings)  # before the (slow) model loading
    ceilings = limits(args)
    ceilings.check(spec)
    target, draft = load_pair_from_args(args, need_draft=spec.needs_draft)
    input_ids = encode_prompt(target.tokenizer, args.prompt, chat=not args.raw)
    generation = stream(
        target.model,
        as_draft(draft),
        input_ids,
        stop=args.stop,
        tokenizer=target.tokenizer,
        limits=ceilings,
        **settings,
    )
    for block in generation:
        if not args.json:
            sys.stdout.write(block.text)
            sys.stdout.flush()
    result = generation.result
    described = describe_draft(draft)
    if args.json:
        record = result.as_dict() | {
            "method": args.method,
            "target": target.name,
            "draft": (described or {}).get("name", (described or {}).get("kind")),
            "draft_kind": described,
            "dtype": dtype_name(target.model.dtype),
            "draft_dtype": (described or {}).get("dtype"),
            "fast_path": target.fast_path.as_dict() if target.fast_path else None,
            "draft_fast_path": (described or {}).get("fast_path"),
            "settings": settings,
        }
        print(json.dumps(record, indent=2))
    else:
        print()
        stats = result.stats
        print(
            f"[{args.method}] {stats.new_tokens} tokens, {_shown(stats.tokens_per_s, 1)} tok/s, "
            f"acceptance {_shown(stats.acceptance_rate)}, block efficiency {_shown(stats.block_efficiency)}, "
            f"finish {result.finish_reason}, {dtype_name(target.model.dtype)}"
            + (f", {target.fast_path.weights} weights" if target.fast_path else ""),
            file=sys.stderr,
        )
    return 0


def _shown(value: float | None, digits: int = 2) -> str:
    """A statistic, or n/a where it is undefined (nothing drafted, nothing generated)."""
    return "n/a" if value is None else f"{value:.{digits}f}"
