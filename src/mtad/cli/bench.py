"""`mtad bench`: speed, acceptance, output quality and energy of methods on a dataset (see mtad.bench)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shlex
from dataclasses import replace
from pathlib import Path

from mtad.cli.common import (
    add_decoding_arguments,
    add_pair_arguments,
    decoding_settings,
    limits,
    load_pair_from_args,
)
from mtad.cli.ray import add_ray_arguments, ray_workers
from mtad.decoding.methods import get_method
from mtad.errors import ConfigError, DatasetError
from mtad.extras import require
from mtad.runtime.fast import load_settings
from mtad.runtime.fast import resolve as resolve_fast_path
from mtad.runtime.precision import dtype_name

_DEFAULT_METHODS = "ar,sd,mtad"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark methods on a dataset: speed, acceptance, perplexity, task score, energy",
        description="Run methods interleaved per prompt on a dataset and write results.jsonl, "
        "summary.csv, report.md and plots to --out. Rerunning the same command resumes.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="mtbench, humaneval or spider")
    data.add_argument("--prompts", help="a JSONL file of {'prompt': ...} or {'messages': [...]} lines")
    data.add_argument("--data-path", help="the Spider directory (dev.json and database/)")
    data.add_argument("--limit", type=int, default=None, help="use the first N records")
    data.add_argument(
        "--prompt-format",
        default="auto",
        help="auto (default): chat template for chat data and for humaneval when the target has one "
        "(the program is extracted from the answer), raw completion for spider; chat or raw",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--methods", default=None, help=f"comma list of methods (default {_DEFAULT_METHODS})"
    )
    run_group.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="generations per prompt and method (default 1); n for HumanEval pass@k, k <= n",
    )
    run_group.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="prompts decoded together (default 1): rows keep their own statistics, and each row "
        "records the batch's throughput (batch_tokens_per_s)",
    )
    run_group.add_argument(
        "--sweep",
        help="e.g. gamma=2,4,6, threshold=0.3,0.5,0.7 or reference=best,max,own (methods it affects)",
    )
    run_group.add_argument("--sample-timeout", type=float, default=300.0, help="seconds per generation (300)")
    run_group.add_argument("--out", default=None, help="output directory (default: bench-<dataset>)")
    mode = run_group.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out (must match)")
    mode.add_argument("--overwrite", action="store_true", help="discard the results in --out and start over")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    run_group.add_argument(
        "--allow-unsandboxed-code",
        action="store_true",
        help="humaneval: run model-written code even where this machine has no sandbox (Linux "
        "namespaces via unshare), with resource limits only; without it such a run is refused",
    )
    judge = parser.add_argument_group("MT-Bench judge (single-answer grading 1-10 by an LLM)")
    judge.add_argument(
        "--judge-url", help="OpenAI-compatible base URL of the judge, e.g. http://127.0.0.1:8000/v1"
    )
    judge.add_argument("--judge-model", help="the judge model (default: the first one the endpoint lists)")
    judge.add_argument(
        "--judge-api-key-env",
        help="environment variable holding the judge's API key (default OPENAI_API_KEY; unset: 'none')",
    )
    judge.add_argument(
        "--judge-timeout", type=float, help="seconds per judge request (default 120; up to 3 tries)"
    )
    add_ray_arguments(parser, "actor", "actors")
    add_pair_arguments(parser)
    add_decoding_arguments(parser, method=None)
    parser.set_defaults(func=run)


def _code_isolation(dataset: str, allowed: bool):
    """For HumanEval, how its model-written code will run (`mtad.bench.sandbox.Isolation`);
    refused here, before minutes of loading, where there is no sandbox and no opt-in."""
    if dataset != "humaneval":
        return None
    from mtad.bench.execution import allow_unsandboxed, check_isolation

    if allowed:
        allow_unsandboxed()
    return check_isolation(allowed)


def _record_isolation(out: Path, sandbox) -> None:
    """The run's machine.json (and so its report's Machine table) says which isolation ran."""
    from mtad.bench.rundir import MACHINE_FILE

    path = out / MACHINE_FILE
    machine = json.loads(path.read_text()) if path.is_file() else {}
    unsandboxed = "none: resource limits only (--allow-unsandboxed-code)"
    machine["code_execution"] = sandbox.describe() if sandbox.isolated else unsandboxed
    path.write_text(json.dumps(machine, indent=2) + "\n")


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _data_source(args: argparse.Namespace) -> tuple[str, str | None]:
    if (args.dataset is None) == (args.prompts is None):
        raise DatasetError("give exactly one of --dataset (mtbench, humaneval, spider) or --prompts FILE")
    if args.prompts is not None:
        if args.data_path is not None:
            raise DatasetError("--data-path is for --dataset spider; --prompts already names the file")
        return "prompts", str(Path(args.prompts).resolve())
    if args.dataset == "prompts":
        raise DatasetError("use --prompts FILE for a prompts file")
    return args.dataset, str(Path(args.data_path).resolve()) if args.data_path else None


def _judge_settings(args: argparse.Namespace):
    from mtad.bench.judge import JudgeSettings

    if args.judge_url is None:
        given = [
            flag
            for flag, value in (
                ("--judge-model", args.judge_model),
                ("--judge-api-key-env", args.judge_api_key_env),
                ("--judge-timeout", args.judge_timeout),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --judge-url")
        return None
    optional = {
        "model": args.judge_model,
        "api_key_env": args.judge_api_key_env,
        "timeout_s": args.judge_timeout,
    }
    return JudgeSettings(args.judge_url, **{k: v for k, v in optional.items() if v is not None})


def build_config(args: argparse.Namespace):
    """The validated BenchConfig of the command line; raises MtadError on bad input."""
    from mtad.bench.plan import BenchConfig, Sweep

    if args.method is not None:
        raise ConfigError("mtad bench takes --methods (a comma list), not --method")
    dataset, data_path = _data_source(args)
    # resolved now, so the hash says what the run computes in (auto differs between machines)
    fast_path, run_dtype = resolve_fast_path(
        args.fast, args.quantize, args.dtype, _weights_device(args), args.device_map is not None
    )
    if args.recycle_store is not None or args.suffix_store is not None:
        flag = "--recycle-store" if args.recycle_store is not None else "--suffix-store"
        raise ConfigError(
            f"{flag} shares a draft's store across requests; a bench keeps every sample independent of "
            "the others (so a run resumes to the same results): drop it"
        )
    decoding = decoding_settings(args)
    decoding.pop("method")
    decoding.pop("seed")
    return BenchConfig(
        dataset=dataset,
        data_path=data_path,
        methods=_split(args.methods if args.methods is not None else _DEFAULT_METHODS),
        decoding=decoding,
        target=args.target or "default pair target",
        draft=args.draft or _default_draft(args),
        device=args.device,
        dtype=dtype_name(run_dtype),
        draft_dtype=args.draft_dtype,
        weights=fast_path.weights,
        repeats=args.repeats,
        batch_size=args.batch_size,
        seed=0 if args.seed is None else args.seed,
        sweep=Sweep.parse(args.sweep) if args.sweep else None,
        prompt_format=args.prompt_format,
        sample_timeout_s=args.sample_timeout,
        judge=_judge_settings(args),
        limit=args.limit,
        limits=limits(args),
    )


def _weights_device(args: argparse.Namespace) -> str:
    if args.device_map is not None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device or "cpu"


def _default_draft(args: argparse.Namespace) -> str | None:
    if args.target is not None:
        return None
    from mtad.models.default_pair import default_draft_path

    path = default_draft_path()
    return None if path is None else str(path)


def command_line(config, out: Path) -> str:
    """An `mtad bench` command with every setting explicit, which reproduces the run."""
    words = ["mtad", "bench"]
    if config.dataset == "prompts":
        words += ["--prompts", config.data_path]
    else:
        words += ["--dataset", config.dataset] + (
            ["--data-path", config.data_path] if config.data_path else []
        )
    words += ["--methods", ",".join(config.methods)]
    for flag, value in (("--target", config.target), ("--draft", config.draft)):
        if value and value != "default pair target":
            words += [flag, value]
    flags = (("--device", config.device), ("--dtype", config.dtype), ("--draft-dtype", config.draft_dtype))
    loading = load_settings(config.weights or "dense")
    flags += (("--fast", loading["fast"]), ("--quantize", loading["quantize"]))
    for flag, value in (*flags, ("--limit", config.limit)):
        if value is not None:
            words += [flag, str(value)]
    words += _decoding_words(config.decoding) + ["--seed", str(config.seed)]
    words += ["--repeats", str(config.repeats), "--prompt-format", config.prompt_format]
    if config.batch_size != 1:
        words += ["--batch-size", str(config.batch_size)]
    if config.sweep is not None:
        from mtad.bench.plan import format_sweep_value

        words += [
            "--sweep",
            f"{config.sweep.param}=" + ",".join(map(format_sweep_value, config.sweep.values)),
        ]
    if config.sample_timeout_s is not None:
        words += ["--sample-timeout", f"{config.sample_timeout_s:g}"]
    if config.judge is not None:
        words += ["--judge-url", config.judge.url] + (
            ["--judge-model", config.judge.model] if config.judge.model else []
        )
        words += ["--judge-api-key-env", config.judge.api_key_env]
        words += ["--judge-timeout", f"{config.judge.timeout_s:g}"]
    return shlex.join(words + ["--out", str(out)])


def _decoding_words(decoding: dict) -> list[str]:
    """Flags of the shared decoding options, one per setting (with_replacement is a negative switch)."""
    words = []
    for name, value in decoding.items():
        if name == "with_replacement":
            words += [] if value else ["--without-replacement"]
        elif isinstance(value, (tuple, list)):
            words += [f"--{name.replace('_', '-')}", ",".join(map(str, value))]
        else:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return words


def run(args: argparse.Namespace) -> int:
    require("bench", "mtad bench")
    from mtad.bench.datasets import load_dataset
    from mtad.bench.outputs import write_outputs
    from mtad.bench.plan import needs_draft, plan_variants
    from mtad.bench.report import speed_table
    from mtad.bench.rundir import LOCK_FILE, prepare_output_dir
    from mtad.bench.summary import summarize
    from mtad.locking import exclusive_directory

    workers = ray_workers(args, "actor", "actors")  # None without --ray
    config = build_config(args)
    variants = plan_variants(config)
    records = load_dataset(config.dataset, Path(config.data_path) if config.data_path else None, args.limit)
    if needs_draft(config) and config.draft is None:
        drafted = ", ".join(m for m in config.methods if get_method(m).needs_draft)
        raise ConfigError(
            f"{drafted} need a draft model: pass --draft "
            "(the built-in draft pairs only with the default target)"
        )
    if config.judge is not None and config.judge.model is None:
        from mtad.bench.judge import resolve_model

        config = replace(config, judge=resolve_model(config.judge))  # hashed with the model it names
    sandbox = _code_isolation(config.dataset, args.allow_unsandboxed_code)  # before loading models
    out = Path(args.out or f"bench-{config.dataset}")
    with contextlib.ExitStack() as stack:
        if workers is not None:  # the cluster is joined and checked before any model loads
            from mtad.cluster import check_room, connect

            count = check_room(stack.enter_context(connect(args.ray)), workers)
        stack.enter_context(exclusive_directory(out, LOCK_FILE, "mtad bench"))  # one run per --out
        prepare_output_dir(out, config, resume=args.resume, overwrite=args.overwrite)
        # the dtype and weight format hashed
        resolved = argparse.Namespace(
            **(vars(args) | {"dtype": config.dtype} | load_settings(config.weights))
        )
        load = functools.partial(load_pair_from_args, resolved, need_draft=needs_draft(config))
        if workers is None:
            from mtad.bench.runner import run_bench

            rows = run_bench(config, records, *load(), out, progress=not args.quiet)
        else:
            from mtad.bench.ray import run_bench_on_ray

            rows = run_bench_on_ray(config, records, load, out, workers, count, progress=not args.quiet,
                                    allow_unsandboxed=args.allow_unsandboxed_code)  # fmt: skip
        if sandbox is not None and workers is None:  # on Ray, each actor records its node's
            _record_isolation(out, sandbox)
        files = write_outputs(out, config, variants, rows, command_line(config, out))
    print(speed_table(summarize(rows, [v.label for v in variants], seed=config.seed)))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0
