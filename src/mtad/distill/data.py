"""Training text for distillation: the target's own answers to generated instructions.

Made once and cached on disk in shards, so an interrupted run loses at most one shard:
  data_manifest.json   how the data was made (settings, instruction generator, target id) + stats
  train_00000.pt ...   per sample: token ids (prompt + answer), the first trained position, and
                       the teacher's top-k next-token log-probs at every trained position
  heldout_00000.pt     held-out samples (disjoint topics); scored against the live target

Why two teacher signals: sampling text from the target is slow (one forward per token), but a
teacher forward over text that already exists gives the full next-token distribution at every
position at once. We keep its top-k (log-probs, float16) to bound disk use; the loss renormalises
them. Trained positions are those predicting answer tokens: the prompt is given at decode time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mtad.config import PAPER_WARP
from mtad.distill import conversations, instructions
from mtad.errors import MtadError
from mtad.models import encode_prompt
from mtad.runtime.precision import resolve_dtype

MANIFEST_NAME = "data_manifest.json"
BENCHMARK_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "mtbench_question.jsonl"


class DistillDataError(MtadError):
    """Cached distillation data was made differently from what this run asks for."""


@dataclass(frozen=True)
class DataSettings:
    """How the distillation text is made. The sampling warp defaults to the paper's settings."""

    train_samples: int = 512
    heldout_samples: int = 32
    gen_batch_size: int = 16
    max_new_tokens: int = 128
    teacher_top_k: int = 64
    seed: int = 0
    temperature: float = PAPER_WARP["temperature"]
    top_k: int = PAPER_WARP["top_k"]
    top_p: float = PAPER_WARP["top_p"]
    # 1: explanatory prose (instructions.py); 2: eight kinds of request, some in two turns (conversations.py)
    instruction_set: int = 1
    # the dtype that writes the answers ("auto": bf16 where the CPU runs it natively); teachers stay float32
    generation_dtype: str = "float32"


@dataclass
class Sample:
    ids: torch.Tensor  # [length] int64: prompt then answer
    start: int  # first position whose next-token prediction is trained (prompt length - 1)
    topk_ids: torch.Tensor | None = None  # [length - 1 - start, k] int32 (train split only)
    topk_logp: torch.Tensor | None = None  # [length - 1 - start, k] float16


def target_fingerprint(target_dir: Path | str) -> str:
    """A cheap identity for a model directory: its config plus the names and sizes of its weights.

    The config is compared as data, without the `transformers_version` that saving stamps into
    it: the same weights converted by another transformers release are the same target (the
    committed data in distill-data/ must not be orphaned by an upgrade)."""
    directory = Path(target_dir)
    digest = hashlib.sha256()
    config = directory / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        settings.pop("transformers_version", None)
        digest.update(json.dumps(settings, sort_keys=True).encode())
    else:
        digest.update(str(directory).encode())
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def prepare_data(
    model, tokenizer, data_dir: Path, settings: DataSettings, target_id: str
) -> tuple[list[Sample], list[Sample]]:
    """Train and held-out samples, generating any missing shards first."""
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(data_dir, settings, target_id)
    for split, count in (("heldout", settings.heldout_samples), ("train", settings.train_samples)):
        turns = [turn for talk in requests(count, settings, split == "heldout") for turn in talk]
        manifest["splits"][split] = {
            "samples": count,
            "instructions_sha256": instructions.fingerprint(turns),
            "overlap_with_mtbench_6grams": _mtbench_overlap(turns),
        }
        _make_missing_shards(model, tokenizer, data_dir, split, count, settings, manifest)
    _save_manifest(data_dir, manifest)
    return load_split(data_dir, "train", settings), load_split(data_dir, "heldout", settings)


def _recipe(settings: DataSettings, target_id: str) -> dict:
    """What fixes the data. Sample counts are left out: instruction lists and per-shard seeds are
    prefix-stable, so asking for more samples later only adds shards."""
    fixed = {k: v for k, v in asdict(settings).items() if k not in ("train_samples", "heldout_samples")}
    if settings.instruction_set == 1:  # recipes made before the field existed stay valid
        fixed.pop("instruction_set")
    if settings.generation_dtype == "float32":
        fixed.pop("generation_dtype")
    made_by = instructions if settings.instruction_set == 1 else conversations
    return {"settings": fixed, "target": target_id, "instructions": made_by.describe()}


def requests(count: int, settings: DataSettings, heldout: bool) -> list[list[str]]:
    """The first `count` conversations (lists of user turns) of the settings' instruction set."""
    if settings.instruction_set == 1:
        return [[text] for text in instructions.instructions(count, settings.seed, heldout=heldout)]
    if settings.instruction_set == 2:
        return conversations.conversations(count, settings.seed, heldout=heldout)
    raise DistillDataError(f"instruction set must be 1 or 2, got {settings.instruction_set}")


def _open_manifest(data_dir: Path, settings: DataSettings, target_id: str) -> dict:
    path = data_dir / MANIFEST_NAME
    recipe = _recipe(settings, target_id)
    if path.is_file():
        manifest = json.loads(path.read_text())
        if {key: manifest.get(key) for key in recipe} != recipe:
            raise DistillDataError(
                f"data in {data_dir} was made with other settings or another target; allowed: the same "
                "settings, or a fresh --data-dir"
            )
        return manifest
    return {**recipe, "splits": {}, "shards": {}}


def _mtbench_overlap(made: list[str]) -> int | None:
    if not BENCHMARK_PROMPTS.is_file():
        return None
    lines = BENCHMARK_PROMPTS.read_text().splitlines()
    turns = [turn for line in lines if line.strip() for turn in json.loads(line)["turns"]]
    return instructions.overlap_with(made, turns)


def _save_manifest(data_dir: Path, manifest: dict) -> None:
    generated = sum(s["generated_tokens"] for s in manifest["shards"].values())
    seconds = sum(s["generation_seconds"] for s in manifest["shards"].values())
    manifest["generated_tokens"] = generated
    manifest["generation_tokens_per_second"] = round(generated / seconds, 1) if seconds else None
    tmp = data_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, data_dir / MANIFEST_NAME)


def _make_missing_shards(
    model, tokenizer, data_dir: Path, split: str, count: int, settings: DataSettings, manifest: dict
) -> None:
    """Generate every shard the first `count` samples need. Shards are always full (gen_batch_size
    samples, per-shard seed), so asking for more samples later never changes an existing shard."""
    size = settings.gen_batch_size
    missing = [i for i in range(math.ceil(count / size)) if not _shard_complete(data_dir, split, i, size)]
    if not missing:
        return
    writer = _generation_copy(model, settings.generation_dtype)
    bar = tqdm(missing, desc=f"generating {split} text", unit="shard", file=sys.stderr, dynamic_ncols=True)
    for index in bar:
        started = time.perf_counter()
        seed = settings.seed * 1_000_003 + index * 2 + (split == "heldout")
        talks = requests((index + 1) * size, settings, heldout=split == "heldout")
        samples = generate_samples(writer, tokenizer, talks[index * size :], settings, seed)
        seconds = time.perf_counter() - started
        if split == "train" and settings.teacher_top_k > 0:  # 0: the trainer makes its own (features)
            attach_teacher(model, samples, settings.teacher_top_k)
        name = _shard_name(split, index)
        _atomic_save(samples, data_dir / name)
        generated = sum(len(s.ids) - s.start - 1 for s in samples)
        manifest["shards"][name] = {
            "samples": len(samples),
            "generated_tokens": generated,
            "tokens": sum(len(s.ids) for s in samples),
            "generation_seconds": round(seconds, 2),
        }
        _save_manifest(data_dir, manifest)
        bar.set_postfix(gen_tok_s=f"{generated / seconds:.0f}")


def _shard_complete(data_dir: Path, split: str, index: int, size: int) -> bool:
    manifest = (
        json.loads((data_dir / MANIFEST_NAME).read_text()) if (data_dir / MANIFEST_NAME).is_file() else {}
    )
    entry = manifest.get("shards", {}).get(_shard_name(split, index))
    return (data_dir / _shard_name(split, index)).is_file() and entry is not None and entry["samples"] == size


def _shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.pt"


def _atomic_save(samples: list[Sample], path: Path) -> None:
    """Token ids as uint16 when every id fits (a quarter of int64: the data is small enough to commit)."""
    rows = [asdict(s) for s in samples]
    if all(int(row["ids"].max()) < 2**16 for row in rows):
        for row in rows:
            row["ids"] = row["ids"].to(torch.uint16)
    tmp = path.with_suffix(".tmp")
    torch.save(rows, tmp)
    os.replace(tmp, path)


def load_split(data_dir: Path, split: str, settings: DataSettings) -> list[Sample]:
    """The first N samples of a split (N from the settings), ignoring shards beyond them; ids int64."""
    count = settings.train_samples if split == "train" else settings.heldout_samples
    samples: list[Sample] = []
    for index in range(math.ceil(count / settings.gen_batch_size)):
        rows = torch.load(data_dir / _shard_name(split, index), weights_only=True)
        samples += [Sample(**(row | {"ids": row["ids"].long()})) for row in rows]
    return samples[:count]


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def _generation_copy(model, dtype: str):
    """The model that writes the answers: the target itself, or a copy in `dtype` ("auto": bf16
    where the CPU runs it natively, ~1.5x faster; the teacher signals still come from float32)."""
    wanted = resolve_dtype(dtype, str(model.device))
    return model if wanted == model.dtype else copy.deepcopy(model).to(wanted)


@torch.inference_mode()
def generate_samples(
    model, tokenizer, talks: list[list[str]], settings: DataSettings, seed: int
) -> list[Sample]:
    """The target's sampled answers (paper warp) to each conversation's turns, one Sample per
    conversation: its ids run to the last answer, training starts at the first answer."""
    torch.manual_seed(seed)
    histories: list[list[dict]] = [[] for _ in talks]
    samples: list[Sample | None] = [None] * len(talks)
    for turn in range(max(len(talk) for talk in talks)):
        rows = [i for i, talk in enumerate(talks) if turn < len(talk)]
        for i in rows:
            histories[i].append({"role": "user", "content": talks[i][turn]})
        encoded = [_encode_chat(tokenizer, histories[i]) for i in rows]
        answers = _sample_answers(model, tokenizer, encoded, settings)
        for i, ids, answer in zip(rows, encoded, answers, strict=True):
            histories[i].append(
                {"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True)}
            )
            start = samples[i].start if samples[i] is not None else len(ids) - 1
            samples[i] = Sample(ids=torch.tensor(ids + answer), start=start)
    return samples


def _encode_chat(tokenizer, history: list[dict]) -> list[int]:
    if len(history) == 1:
        return encode_prompt(tokenizer, history[0]["content"])
    if not getattr(tokenizer, "chat_template", None):  # a base model: the turns as plain text
        return tokenizer("\n\n".join(message["content"] for message in history))["input_ids"]
    ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _sample_answers(model, tokenizer, encoded: list[list[int]], settings: DataSettings) -> list[list[int]]:
    """One sampled answer (token ids, ending at EOS when reached) per encoded prompt."""
    stops = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    width = max(len(ids) for ids in encoded)
    # Left padding: every row's answer starts at the same column.
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        do_sample=True,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=sorted(stops),
    )
    return [_cut_at_eos(row, stops) for row in output[:, width:].tolist()]


def _cut_at_eos(tokens: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in stops:
            return tokens[: position + 1]
    return tokens


@torch.inference_mode()
def attach_teacher(model, samples: list[Sample], top_k: int) -> None:
    """Fill each sample's top-k teacher log-probs with one batched target forward."""
    width = max(len(s.ids) for s in samples)
    input_ids = torch.zeros(len(samples), width, dtype=torch.long)
    attention = torch.zeros(len(samples), width, dtype=torch.long)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample.ids)] = sample.ids
        attention[row, : len(sample.ids)] = 1
    logits = model(input_ids=input_ids, attention_mask=attention).logits  # [batch, width, vocab]
    k = min(top_k, logits.shape[-1])
    for row, sample in enumerate(samples):
        logp = torch.log_softmax(logits[row, sample.start : len(sample.ids) - 1].float(), dim=-1)
        top = logp.topk(k, dim=-1)
        sample.topk_ids = top.indices.to(torch.int32)
        sample.topk_logp = top.values.to(torch.float16)
