"""`mtad distill`: train a draft for a target by knowledge distillation (see mtad.distill)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

_TRAIN_FLAGS = (
    "steps", "batch_size", "seq_len", "lr", "seed", "layers", "checkpoint_every", "draft_vocab", "save_dtype",
    "kind", "feature_layers", "draft_layers", "depths", "decay_steps",
)  # fmt: skip
_DATA_FLAGS = {
    "samples": "train_samples",
    "heldout_samples": "heldout_samples",
    "gen_batch_size": "gen_batch_size",
    "max_new_tokens": "max_new_tokens",
    "teacher_top_k": "teacher_top_k",
    "instruction_set": "instruction_set",
    "generation_dtype": "generation_dtype",
    "seed": "seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="train a draft model for a target by knowledge distillation",
        description="Generate text with the target, then distill a small draft into --out, a plain "
        "transformers model directory. Interrupt at any time; --resume continues exactly.",
    )
    parser.add_argument(
        "--target", help="target model directory (default: the built-in SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--out", required=True, help="output directory for checkpoints, the draft and report.json"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument(
        "--overwrite", action="store_true", help="start over in --out (keeps its cached data/)"
    )
    group = parser.add_argument_group(
        "training (defaults: 1000 steps, batch 8, seq-len 256, lr 3e-4, seed 0)"
    )
    group.add_argument("--steps", type=int, help="total optimizer steps (may grow on --resume)")
    group.add_argument("--batch-size", type=int, help="sequences per step")
    group.add_argument("--seq-len", type=int, help="tokens per sequence (longer ones are cut)")
    group.add_argument("--lr", type=float, help="AdamW learning rate after warm-up")
    group.add_argument("--seed", type=int, help="seed for instructions, sampling and batch order")
    group.add_argument(
        "--kind",
        choices=("tokens", "features"),
        help="tokens: the target's own layers over tokens (default); features: an EAGLE-style draft "
        "reading the target's hidden states (mtad.models.feature_draft)",
    )
    group.add_argument("--layers", help='tokens: target layers the draft keeps, e.g. "0,-1" (default: 0)')
    group.add_argument(
        "--feature-layers",
        help='features: target hidden_states the draft reads, e.g. "2,15,30" (0 = embeddings, the '
        "last = the final normed state; default: low, middle and final)",
    )
    group.add_argument(
        "--draft-layers",
        type=int,
        help="features: decoder layers, from the target's first ones (default 1); with --draft, more "
        "layers than that draft has grows it (new layers start as zero residual branches)",
    )
    group.add_argument(
        "--depths",
        type=int,
        help="features: draft steps unrolled in training (training-time test) and positions in the "
        "held-out table (default 4)",
    )
    group.add_argument(
        "--draft-vocab",
        type=int,
        help="predict only the K target tokens with the most teacher mass (a smaller, faster head; "
        "lossless methods stay lossless, see mtad.runtime.vocabulary). Default: the whole vocabulary",
    )
    group.add_argument(
        "--save-dtype", choices=("float32", "float16", "bfloat16"), help="dtype of the final draft weights"
    )
    group.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 100)")
    group.add_argument(
        "--decay-steps",
        type=int,
        help="let the lr fall linearly to 0 over the last N steps (default 0: constant); may be added "
        "or changed on --resume, e.g. to end a long run with a cooldown",
    )
    group.add_argument("--draft", help="start from this draft directory instead of the target's layers")
    group = parser.add_argument_group("data (made once, cached in --data-dir)")
    group.add_argument("--data-dir", help="where generated text lives (default: OUT/data)")
    group.add_argument("--samples", type=int, help="training answers to generate (default 512)")
    group.add_argument("--heldout-samples", type=int, help="held-out answers on unseen topics (default 32)")
    group.add_argument("--gen-batch-size", type=int, help="answers generated per batch (default 16)")
    group.add_argument("--max-new-tokens", type=int, help="longest answer (default 128)")
    group.add_argument("--teacher-top-k", type=int, help="teacher log-probs kept per position (default 64)")
    group.add_argument(
        "--instruction-set",
        type=int,
        choices=(1, 2),
        help="1: explanatory prose (default); 2: writing, role play, reasoning, maths, coding, extraction, "
        "STEM and humanities requests, some with a second turn",
    )
    group.add_argument(
        "--generation-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="dtype the target writes the answers in (auto: bf16 where the CPU runs it natively); "
        "teacher signals stay float32. Default float32",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtad.distill import DataSettings, TrainSettings, distill, load_run_settings

    out = Path(args.out)
    saved = load_run_settings(out) if args.resume else None
    train, data = saved if saved is not None else (TrainSettings(), DataSettings())
    train = replace(
        train, **{name: getattr(args, name) for name in _TRAIN_FLAGS if getattr(args, name) is not None}
    )
    data = replace(
        data,
        **{
            field: getattr(args, flag)
            for flag, field in _DATA_FLAGS.items()
            if getattr(args, flag) is not None
        },
    )
    target = args.target
    if target is None:
        from mtad.models.default_pair import default_target_path

        target = default_target_path()
    report = distill(
        target,
        out,
        train,
        data,
        data_dir=args.data_dir,
        draft_dir=args.draft,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(json.dumps(report, indent=2))
    return 0
