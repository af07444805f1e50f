"""Checkpoints of a distillation run: the student, its optimizer, the RNG and where training stands.

Written beside the previous checkpoint and then swapped in, so a crash never leaves neither.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

CHECKPOINT = "checkpoint"


@dataclass
class Position:
    """Where training stands: completed steps and the next sample in the epoch's permutation."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0


def save_checkpoint(out_dir: Path, student, optimizer, position: Position) -> None:
    """Write the checkpoint beside the old one, then swap, so a crash never leaves neither."""
    staging = out_dir / ".checkpoint.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(staging)
    torch.save(
        {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, staging / "optimizer.pt"
    )
    (staging / "trainer_state.json").write_text(json.dumps(asdict(position)) + "\n")
    final, old = out_dir / CHECKPOINT, out_dir / ".checkpoint.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out_dir: Path, lr: float):
    """The student, its optimizer and the position saved in `out_dir/checkpoint`."""
    folder = out_dir / CHECKPOINT
    student = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    return student, optimizer, Position(**json.loads((folder / "trainer_state.json").read_text()))
