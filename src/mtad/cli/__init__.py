"""The `mtad` command. Each subcommand lives in its own module with `register(subparsers)`.

A registered subcommand sets `func=run` on its parser; `run(args) -> int` returns the exit code.
Every `MtadError` becomes one line on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mtad.errors import MtadError

# Order is the order `mtad --help` lists them.
_COMMAND_MODULES = [
    "mtad.cli.demo",
    "mtad.cli.generate",
    "mtad.cli.serve",
    "mtad.cli.distill",
    "mtad.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtad",
        description="Multi-Token Assisted Decoding: faster and better LLM decoding with a draft model.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MtadError as error:
        print(f"mtad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
