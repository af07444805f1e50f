"""Arguments every pair-taking command shares (generate, demo, bench, serve), parsed one way."""

from __future__ import annotations

import argparse

from mtad.config import PRESETS, SETTINGS, Setting
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


def add_decoding_arguments(parser: argparse.ArgumentParser, method: str | None = "mtad") -> None:
    """A flag per decoding setting (`mtad.config.SETTINGS`), defaulting to the "cli" preset (the
    paper's warp, gamma auto); `method` is --method's default."""
    group = parser.add_argument_group("decoding")
    defaults = PRESETS["cli"] | {"method": method}
    for setting in SETTINGS.values():
        default = defaults[setting.name]
        if isinstance(default, bool):  # a switch: its flag turns the default over
            group.add_argument(
                setting.cli_flag, dest=setting.name, action="store_false" if default else "store_true",
                help=f"sets {setting.name} to {not default} ({setting.help})",
            )  # fmt: skip
            continue
        allowed = ", ".join(methods()) if setting.name == "method" else setting.allowed
        shown_default = ",".join(map(str, default)) if isinstance(default, tuple) else default
        tail = "" if default is None else f"; default {shown_default}"
        group.add_argument(
            setting.cli_flag, dest=setting.name, type=_flag_type(setting), default=default,
            metavar=setting.name.upper(), help=f"{setting.help} ({allowed}{tail})",
        )  # fmt: skip
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


def _flag_type(setting: Setting):
    """argparse's `type` for a setting's flag: its parser, with a one-line error naming the value."""

    def parse(text: str):
        try:
            return setting.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {setting.name} {text!r}; allowed: {setting.allowed}"
            ) from None

    parse.__name__ = setting.name
    return parse


def limits(args: argparse.Namespace) -> Limits:
    """The --max-* flags as `mtad.Limits` (a bad value is a `ConfigError` naming the flag's setting)."""
    return Limits(args.max_gamma, args.max_beam_width, args.max_tree_nodes)


def decoding_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments for `mtad.generate` from the parsed decoding arguments."""
    return {name: getattr(args, name) for name in SETTINGS}


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
