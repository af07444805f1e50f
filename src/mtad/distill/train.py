"""Knowledge distillation of a draft for a target: the training loop, checkpoints and exact resume.

The output directory:
  mtad_distill.json    marks it as a distillation run: settings, target, initial metrics
  checkpoint/          the latest checkpoint: a loadable model dir + optimizer.pt + trainer_state.json
  config.json, model.safetensors, tokenizer files, generation_config.json   the final draft
  report.json          held-out KL, greedy agreement, expected acceptance, forward-cost ratio
  heldout_curve.jsonl  held-out expected acceptance per draft position at every checkpoint
  teacher/             feature drafts: each sample's target states and teacher top-k, made once
  data/                generated text and teacher signal (default --data-dir), kept by --overwrite

Exact resume: the batch order is a seeded permutation per epoch, so (epoch, cursor) plus the
step, model, optimizer and RNG states are everything; a resumed run reproduces the weights of an
uninterrupted one bit for bit (same machine, same thread count). The learning rate has a linear
warm-up and is then constant, so extending --steps on resume changes nothing already done.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from mtad.config import PAPER_WARP
from mtad.distill.checkpoints import CHECKPOINT, Position, load_checkpoint, save_checkpoint
from mtad.distill.data import DataSettings, Sample, prepare_data, target_fingerprint
from mtad.distill.kinds import KINDS, draft_kind
from mtad.distill.metrics import forward_ms
from mtad.errors import ConfigError, ModelLoadError
from mtad.locking import OutputDirError, exclusive_directory
from mtad.models import load_model

MARKER = "mtad_distill.json"
LOCK = ".mtad_distill.lock"
TEACHER_CACHE = "teacher"  # feature drafts: per-sample target states and teacher top-k (kinds.py)
CURVE = "heldout_curve.jsonl"  # held-out acceptance per draft position at each checkpoint
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Settings a resumed run must share with the original; steps and checkpoint_every may change.
# decay_steps: a run trained at constant lr may end with a cooldown added on resume.
_RESUMABLE_CHANGES = ("steps", "checkpoint_every", "save_dtype", "decay_steps")
_RESUMABLE_DATA_CHANGES = ("train_samples",)  # more data may be added to a run


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-4
    warmup_steps: int = 20
    seed: int = 0
    layers: str | None = None  # target layers to keep, e.g. "0,-1" (None: the first alone)
    checkpoint_every: int = 100
    draft_vocab: int | None = None  # target ids the draft predicts (None: all; see mtad.runtime.vocabulary)
    save_dtype: str = "float32"  # dtype of the final draft's weights (training is float32)
    kind: str = (
        "tokens"  # "tokens" (target layers over tokens) or "features" (EAGLE-style, models.feature_draft)
    )
    feature_layers: str | None = None  # features: target hidden_states indices, e.g. "2,15,30"
    draft_layers: int = 1  # features: decoder layers (initialised from the target's first ones)
    depths: int = 4  # features: draft steps unrolled in training; positions in the held-out table
    decay_steps: int = 0  # lr falls linearly to 0 over the last N steps (0: constant after warm-up)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every", "draft_layers", "depths"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.decay_steps <= self.steps:
            raise ConfigError(f"--decay-steps must be in [0, --steps={self.steps}], got {self.decay_steps}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.draft_vocab is not None and self.draft_vocab < 1:
            raise ConfigError(f"--draft-vocab must be >= 1, got {self.draft_vocab}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(
                f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}"
            )


# --- output directory -----------------------------------------------------------------------


def load_run_settings(out_dir: Path) -> tuple[TrainSettings, DataSettings] | None:
    """The settings a previous run in `out_dir` used, or None if it holds no run."""
    marker = out_dir / MARKER
    if not marker.is_file():
        return None
    saved = json.loads(marker.read_text())
    return TrainSettings(**saved["train"]), DataSettings(**saved["data"])


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Check `out_dir` against the flags; True when there is a checkpoint to resume from."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    if not out_dir.exists() or (out_dir.is_dir() and all(p.name == LOCK for p in out_dir.iterdir())):
        out_dir.mkdir(parents=True, exist_ok=True)
        return False
    if not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} exists and is not a directory")
    is_run = (out_dir / MARKER).is_file()
    has_checkpoint = (out_dir / CHECKPOINT / "trainer_state.json").is_file()
    if overwrite:
        _remove_outputs(out_dir)
        return False
    if resume and is_run:
        return has_checkpoint  # a run interrupted before its first checkpoint starts over
    if is_run:
        raise OutputDirError(
            f"{out_dir} holds a distillation run; allowed: --resume to continue it, --overwrite to start over"
        )
    raise OutputDirError(
        f"{out_dir} exists and is not a distillation checkpoint; allowed: a new or empty "
        "directory, or --overwrite to write into it"
    )


def _remove_outputs(out_dir: Path) -> None:
    """Delete what a run writes (never other files, never the cached data)."""
    for path in out_dir.iterdir():
        ours = path.name in (
            MARKER,
            CHECKPOINT,
            CURVE,
            TEACHER_CACHE,
            "report.json",
            "config.json",
            "generation_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        )
        ours = ours or path.suffix == ".safetensors" or path.name.startswith(("tokenizer", ".checkpoint"))
        if ours:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# --- batches --------------------------------------------------------------------------------


def next_indices(position: Position, count: int, size: int, seed: int) -> list[int]:
    """The next `size` sample indices, advancing `position` through seeded per-epoch permutations."""
    picked = []
    while len(picked) < size:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7919 + position.epoch))
        take = order[position.cursor : position.cursor + size - len(picked)].tolist()
        picked += take
        position.cursor += len(take)
        if position.cursor >= count:
            position.epoch, position.cursor = position.epoch + 1, 0
    return picked


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, constant, then (with `decay_steps`) a linear cooldown ending at lr / decay_steps
    on the last step: a cooldown after a long constant phase is where held-out loss drops most
    (warmup-stable-decay schedules; measured for feature drafts in docs/results)."""
    scale = min(1.0, (step + 1) / max(settings.warmup_steps, 1))
    if settings.decay_steps:
        scale = min(scale, (settings.steps - step) / settings.decay_steps)
    return settings.lr * scale


# --- the run --------------------------------------------------------------------------------


def distill(
    target_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    train: TrainSettings | None = None,
    data: DataSettings | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    draft_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Distill a draft for `target_dir` into `out_dir`; returns the report (also in report.json).

    `on_step(step, loss)` is called after every completed step (and its checkpoint, if any).
    """
    out = Path(out_dir)
    train, data = train or TrainSettings(), data or DataSettings()
    with exclusive_directory(out, LOCK, "mtad distill"):
        return _distill(out, train, data, target_dir, data_dir, draft_dir, resume, overwrite, on_step)


def _distill(
    out: Path,
    train: TrainSettings,
    data: DataSettings,
    target_dir,
    data_dir,
    draft_dir,
    resume: bool,
    overwrite: bool,
    on_step,
) -> dict:
    resuming = prepare_out_dir(out, resume, overwrite)
    train, data = _check_resumed_settings(out, train, data, resume)
    target, tokenizer = _load_target(target_dir)
    data_path = Path(data_dir) if data_dir else out / "data"
    train_set, heldout = prepare_data(target, tokenizer, data_path, data, target_fingerprint(target_dir))
    if not train_set:
        raise ConfigError("no training samples; allowed: --samples >= 1")
    kind = draft_kind(target, train, out / TEACHER_CACHE)
    if resuming:
        student, optimizer, position = load_checkpoint(out, train.lr)
        student = kind.loaded(student)
        marker = json.loads((out / MARKER).read_text())
        initial = marker.get("initial")
        # Record the grown settings (steps, samples) so the next --resume starts from them.
        _write_marker(out, train, data, target_dir, data_path, marker.get("initial_draft"), initial)
    else:
        student = kind.initial(tokenizer, draft_dir, train_set)
        optimizer = torch.optim.AdamW(student.parameters(), lr=train.lr, weight_decay=0.0)
        position = Position()
        initial = kind.heldout(student.eval(), heldout)
        _write_marker(out, train, data, target_dir, data_path, draft_dir, initial)
    started = time.perf_counter()
    last = _train_loop(student.train(), optimizer, position, train_set, train, out, on_step, kind, heldout)
    final = last if last is not None else kind.heldout(student.eval(), heldout)  # resumed at its end
    return _finish(
        out, student.eval(), target, tokenizer, final, initial, position,
        train, time.perf_counter() - started, train_set,
    )  # fmt: skip


def _check_resumed_settings(
    out: Path, train: TrainSettings, data: DataSettings, resume: bool
) -> tuple[TrainSettings, DataSettings]:
    saved = load_run_settings(out) if resume else None
    if saved is None:
        return train, data
    saved_train, saved_data = saved
    for given, stored, allowed in (
        (train, saved_train, _RESUMABLE_CHANGES),
        (data, saved_data, _RESUMABLE_DATA_CHANGES),
    ):
        for field in fields(given):
            if field.name not in allowed and getattr(given, field.name) != getattr(stored, field.name):
                raise ConfigError(
                    f"resuming a run made with {field.name}={getattr(stored, field.name)!r}, "
                    f"got {getattr(given, field.name)!r}; allowed: the run's own settings"
                )
    train = replace(saved_train, **{name: getattr(train, name) for name in _RESUMABLE_CHANGES})
    return train, replace(saved_data, train_samples=data.train_samples)


def _load_target(target_dir):
    loaded = load_model(target_dir, dtype=torch.float32, fast="off")  # its head seeds the draft
    if loaded.tokenizer is None:
        raise ModelLoadError(
            f"target {str(target_dir)!r} has no tokenizer; allowed: a model directory with "
            "one (the draft must share it)"
        )
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    return loaded.model.eval(), loaded.tokenizer


def _write_marker(
    out: Path,
    train: TrainSettings,
    data: DataSettings,
    target_dir,
    data_path: Path,
    draft_dir: str | None,
    initial: dict,
) -> None:
    marker = {
        "train": asdict(train),
        "data": asdict(data),
        "target": str(target_dir),
        "data_dir": str(data_path),
        "initial_draft": draft_dir,
        "initial": initial,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _train_loop(
    student,
    optimizer,
    position: Position,
    train_set: list[Sample],
    settings: TrainSettings,
    out: Path,
    on_step: Callable[[int, float], None] | None,
    kind,
    heldout: list[Sample],
) -> dict | None:
    """Steps until `settings.steps`; at each checkpoint the held-out acceptance per draft position
    is appended to CURVE (inference only: it touches no random state, so resume stays exact).
    Returns the last checkpoint's held-out metrics (the final step always checkpoints), or None
    when no step was left to run."""
    bar = tqdm(
        total=settings.steps,
        initial=position.step,
        desc="distilling",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    smoothed, tokens, started = None, 0, time.perf_counter()
    metrics = None
    while position.step < settings.steps:
        indices = next_indices(position, len(train_set), settings.batch_size, settings.seed)
        samples = [train_set[i] for i in indices]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, position.step)
        loss = kind.loss(student, samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        position.step += 1
        tokens += sum(min(len(sample.ids), settings.seq_len) for sample in samples)
        loss = float(loss.detach())
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        if position.step % settings.checkpoint_every == 0 or position.step == settings.steps:
            save_checkpoint(out, student, optimizer, position)
            metrics = kind.heldout(student.eval(), heldout)
            _record_curve(out, position, metrics, bar)
            student.train()
        if on_step is not None:
            on_step(position.step, loss)
    bar.close()
    return metrics


def _record_curve(out: Path, position: Position, metrics: dict, bar) -> None:
    row = {"step": position.step, **metrics}
    with (out / CURVE).open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    per_position = " ".join(f"{a:.3f}" for a in metrics["acceptance_per_position"])
    bar.write(f"step {position.step}: held-out acceptance per draft position {per_position}", file=sys.stderr)


def _finish(
    out: Path,
    student,
    target,
    tokenizer,
    heldout: dict,
    initial,
    position: Position,
    settings: TrainSettings,
    seconds: float,
    train_set: list[Sample],
) -> dict:
    saved = copy.deepcopy(student).to(SAVE_DTYPES[settings.save_dtype])
    saved.save_pretrained(out)
    tokenizer.save_pretrained(out)
    target_ms, draft_ms = forward_ms(target), forward_ms(student)
    report = {
        "heldout": heldout,
        "initial_heldout": initial,
        "sampling": PAPER_WARP,
        "steps": position.step,
        "epochs": round(position.epoch + position.cursor / len(train_set), 2),
        "train_samples": len(train_set),
        "train_tokens_in_data": sum(len(s.ids) for s in train_set),
        "train_seconds_this_session": round(seconds, 1),
        "forward_ms_1_token_after_200": {
            "target": target_ms,
            "draft": draft_ms,
            "ratio": round(draft_ms / target_ms, 3),
        },
        "kind": settings.kind,
        "feature_layers": getattr(student.config, "feature_layers", None),
        "draft_layers": student.config.num_hidden_layers,
        "draft_vocab": settings.draft_vocab,
        "saved_dtype": settings.save_dtype,
        "weights_mb": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20, 1),
        "layers_flag": settings.layers,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
