"""Arguments every pair-taking command shares (generate, demo, bench, serve), parsed one way."""

from __future__ import annotations

import argparse

from mtad.config import AUTO, AUTO_MAX_GAMMA, MTJD_AUTO_GAMMA, SEED_LIMIT, parse_gamma
from mtad.decoding.drafts import HybridDraft, ModelFreeDraft, RecycleDraft, SuffixDraft, is_kind_name
from mtad.decoding.methods import methods
from mtad.decoding.speculation import Limits
from mtad.errors import ConfigError
from mtad.models import LoadedModel, load_pair
from mtad.runtime.fast import FAST_MODES, QUANTIZE_FORMATS
from mtad.runtime.precision import DTYPES


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model pair (default: the built-in offline pair)")
    group.add_argument("--target", help="target model: a directory, a .gguf file or a hub id")
    group.add_argument(
        "--draft",
        help="draft model sharing the target's vocabulary (a directory or hub id), or a draft that runs "
        "no model: recycle (the target's own earlier candidates), suffix (continuations seen in the "
        "prompt and output), or several merged: recycle+suffix, recycle+DIR (a draft model adding its "
        "candidates after the committed text)",
    )
    group.add_argument(
        "--recycle-store", type=int, default=None, metavar="N",
        help="--draft recycle: one table of at most N entries shared by every request of this process "
        "(default: a table per request)",
    )  # fmt: skip
    group.add_argument(
        "--suffix-store", type=int, default=None, metavar="N",
        help="--draft suffix: also draft from this process's past outputs, at most N tokens of them",
    )  # fmt: skip
    group.add_argument("--device", default=None, help="device for both models, e.g. cpu, cuda, cuda:1")
    group.add_argument("--draft-device", default=None, help="device for the draft, if not --device")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="auto (default): bfloat16 where this CPU (AVX-512 BF16/AMX) or GPU runs it natively, "
        "else float32",
    )
    group.add_argument(
        "--draft-dtype",
        default=None,
        choices=tuple(DTYPES),
        help="the draft's dtype (default: the dtype the target got)",
    )
    group.add_argument("--device-map", default=None, help="accelerate device map for the target, e.g. auto")
    group.add_argument(
        "--fast",
        default="auto",
        choices=FAST_MODES,
        help="auto (default): pack linear weights as fp16 (float32 arithmetic) where a self-test shows "
        "it is faster on this CPU; on: always (error where it cannot run); off: run the model as loaded",
    )
    group.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE_FORMATS,
        help="store linear weights in fewer bits, lossy (CPU): int8 (per channel, bfloat16 activations) "
        "or int4 (groups of 32, bfloat16 scales). Default none",
    )


def add_decoding_arguments(parser: argparse.ArgumentParser, method: str = "mtad") -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument("--method", default=method, help=f"one of {', '.join(methods())} (default: {method})")
    group.add_argument(
        "--gamma",
        type=gamma_value,
        default=AUTO,
        help="draft tokens per round, or auto (default): chosen every round, 0 (a plain target step) "
        f"to {AUTO_MAX_GAMMA}, to maximise expected tokens/s from costs measured once and the acceptance "
        f"so far; ignored by ar and greedy; auto is {MTJD_AUTO_GAMMA} for mtjd. The paper used 4",
    )
    group.add_argument(
        "--beam-width", type=int, default=4, help="beams of the draft's beam sampling (default 4)"
    )
    group.add_argument("--threshold", type=float, default=0.5, help="MTAD acceptance threshold tau in (0, 1]")
    group.add_argument(
        "--without-replacement", action="store_true", help="beam/tree sampling without replacement"
    )
    group.add_argument(
        "--tree", type=_branching, default=(4, 2, 2),
        help="specinfer branching, e.g. 4,2,2; or auto (a model-free draft): each round's tree grown from "
        "the most probable paths and cut where the measured verification costs say it pays",
    )  # fmt: skip
    group.add_argument("--reference", default="best", help="mmtad reference joint: best, max or own")
    group.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    group.add_argument("--top-k", type=int, default=10, help="0 = off (default 10, the paper's)")
    group.add_argument("--top-p", type=float, default=0.9, help="1 = off (default 0.9, the paper's)")
    group.add_argument("--max-new-tokens", type=int, default=128, help="exact upper bound (default 128)")
    group.add_argument("--seed", type=_seed, default=None, help="same seed, same output (0 <= seed < 2**63)")
    ceilings = parser.add_argument_group("limits (settings that size a round's tensors; see mtad.Limits)")
    default = Limits()
    ceilings.add_argument(
        "--max-gamma",
        type=int,
        default=default.max_gamma,
        help=f"largest gamma or tree depth ({default.max_gamma})",
    )
    ceilings.add_argument(
        "--max-beam-width", type=int, default=default.max_beam_width,
        help=f"largest beam width ({default.max_beam_width})",
    )  # fmt: skip
    ceilings.add_argument(
        "--max-tree-nodes", type=int, default=default.max_tree_nodes,
        help=f"most draft nodes the target verifies a round ({default.max_tree_nodes})",
    )  # fmt: skip


def _branching(text: str) -> tuple[int, ...] | str:
    if text.strip() == AUTO:
        return AUTO
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid tree {text!r}; allowed: comma-separated integers like 4,2,2, or auto"
        ) from None


def gamma_value(text: str) -> int | str:
    """`--gamma`: an integer, or "auto"."""
    try:
        return parse_gamma(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid gamma {text!r}; allowed: an integer >= 1 or auto"
        ) from None


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}; allowed: an integer in [0, 2**63)")
    return seed


def limits(args: argparse.Namespace) -> Limits:
    """The --max-* flags as `mtad.Limits` (a bad value is a `ConfigError` naming the flag's setting)."""
    return Limits(args.max_gamma, args.max_beam_width, args.max_tree_nodes)


def decoding_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments for `mtad.generate` from the parsed decoding arguments."""
    return {
        "method": args.method,
        "gamma": args.gamma,
        "beam_width": args.beam_width,
        "threshold": args.threshold,
        "with_replacement": not args.without_replacement,
        "tree": args.tree,
        "reference": args.reference,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }


def split_draft(text: str | None) -> tuple[list[str], str | None]:
    """--draft as (model-free kinds, a draft model's path): "recycle+suffix" -> (both, None),
    "recycle+DIR" -> (["recycle"], DIR), "DIR" -> ([], DIR). A path may itself hold a "+": only
    the parts that name kinds are kinds."""
    if text is None:
        return [], None
    parts = text.split("+")
    kinds = [part for part in parts if is_kind_name(part)]
    rest = "+".join(part for part in parts if not is_kind_name(part))
    return kinds, rest or None


def model_free_draft(args: argparse.Namespace) -> ModelFreeDraft | None:
    """The model-free drafts --draft names, with their store options (None: --draft is a model
    alone). A store option for a draft that has no such store, or a store size that is not a
    positive integer, is a `ConfigError` (exit 2)."""
    kinds, _ = split_draft(args.draft)
    for flag, value, owner in (("--recycle-store", args.recycle_store, "recycle"),
                               ("--suffix-store", args.suffix_store, "suffix")):  # fmt: skip
        if value is not None and owner not in kinds:
            raise ConfigError(f"{flag} {value} is for --draft {owner}, got --draft {args.draft}", "draft")
    made = {
        "recycle": lambda: (
            RecycleDraft(shared=True, max_entries=args.recycle_store)
            if args.recycle_store is not None
            else RecycleDraft()
        ),
        "suffix": lambda: SuffixDraft(store_tokens=args.suffix_store),
    }
    drafts = [made[kind]() for kind in kinds]
    if not drafts:
        return None
    return drafts[0] if len(drafts) == 1 else HybridDraft(drafts)


def load_pair_from_args(
    args: argparse.Namespace, need_draft: bool = True
) -> tuple[LoadedModel, LoadedModel | ModelFreeDraft | None]:
    """The pair named on the command line, or the built-in default pair when --target is omitted.
    A model-free --draft loads no draft model; "recycle+DIR" loads DIR as the hybrid's model part
    (checked against the target as any draft is)."""
    model_free = model_free_draft(args)
    if model_free is not None:
        _, model_path = split_draft(args.draft)
        alone = vars(args) | {"draft": model_path, "recycle_store": None, "suffix_store": None}
        target, model = load_pair_from_args(argparse.Namespace(**alone), need_draft=model_path is not None)
        if not need_draft:
            return target, None
        if model is None:
            return target, model_free
        parts = model_free.parts if isinstance(model_free, HybridDraft) else [model_free]
        return target, HybridDraft([*parts, model.model])
    target, draft = args.target, args.draft
    if target is None:
        from mtad.models.default_pair import default_draft_path, default_target_path

        target = default_target_path()
        if draft is None:
            draft = default_draft_path()
    if not need_draft:
        draft = None
    return load_pair(
        target,
        draft,
        device=args.device,
        draft_device=args.draft_device,
        dtype=args.dtype,
        device_map=args.device_map,
        draft_dtype=args.draft_dtype,
        fast=args.fast,
        quantize=args.quantize,
    )
