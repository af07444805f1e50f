"""Loading models and tokenizers: a local directory, a GGUF file, or a hub id.

Offline, a hub id fails with a clear error instead of hanging or a stack trace. Draft and target
must share one token-to-id map; a mismatch is refused at load time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mtad.errors import ContextLengthError, ModelLoadError, VocabularyMismatchError
from mtad.models.feature_draft import check_target, is_feature_draft
from mtad.runtime import fast as fast_path
from mtad.runtime.vocabulary import subset_of


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object | None  # a transformers tokenizer, or None when the model ships none
    name: str
    fast_path: fast_path.FastPath | None = None  # how its linear layers run (`mtad.runtime.fast`)


def load_model(
    name: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    fast: str = "auto",
    quantize: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer. `device_map` (accelerate) overrides `device`.

    `dtype` None or "auto": the fastest dtype this device runs natively (`mtad.runtime.precision`:
    bfloat16 on CPUs with AVX-512 BF16/AMX and on GPUs that support it, else float32), unless the
    fast path packs the linear layers (`fast`, `quantize`: see `mtad.runtime.fast`), which then
    decides the dtype the rest of the model runs in.
    """
    source, kwargs = _resolve_source(str(name))
    where = _load_device(device, device_map)
    plan, run_dtype = fast_path.resolve(fast, quantize, dtype, where, device_map=device_map is not None)
    packs = plan.weights != "dense"
    # Packing reads the weights as stored (float32 in a converted checkpoint): a format that holds
    # them exactly (int4 on a 4-bit grid) must see them before any rounding to the run dtype.
    torch_dtype = torch.float32 if packs else run_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, **kwargs
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {str(name)!r}: {_first_line(error)}") from None
    if device_map is None and device is not None:
        model = model.to(device)
    model.eval()
    plan = fast_path.apply(model, plan)
    if packs and run_dtype != torch.float32:
        model = model.to(run_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return LoadedModel(model, tokenizer, str(name), plan)


def _resolve_source(name: str) -> tuple[str, dict]:
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name[:1]:
        raise ModelLoadError(
            f"model path {name!r} does not exist; allowed: a model directory, a .gguf file, or a hub id"
        )
    return name, {}  # a hub id such as "org/model": works where a hub is reachable


def _load_device(device: str | None, device_map: str | dict | None) -> str:
    """Where the weights will live, for choosing the dtype: a device map places them on the GPU
    when there is one."""
    if device_map is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device or "cpu"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_same_vocabulary(target_tokenizer, draft_tokenizer) -> None:
    """Refuse a pair whose token-to-id maps differ: p and q must index the same tokens."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_vocab == draft_vocab:
        return
    differing = sorted(set(target_vocab.items()) ^ set(draft_vocab.items()), key=str)
    raise VocabularyMismatchError(
        f"draft and target vocabularies differ ({len(draft_vocab)} vs {len(target_vocab)} tokens, "
        f"{len(differing)} differing entries, e.g. {differing[0]!r}); allowed: a draft sharing the "
        "target's tokenizer"
    )


def output_width(model: PreTrainedModel) -> int:
    """Token ids the model's output head scores (may exceed the tokenizer's size by padding)."""
    head = model.get_output_embeddings()
    if head is None:
        return model.config.vocab_size
    return head.out_features if hasattr(head, "out_features") else head.weight.shape[0]


def check_heads_compatible(target: PreTrainedModel, draft: PreTrainedModel, tokenizer=None) -> None:
    """Output heads may differ only by padding past the real vocabulary (e.g. Qwen2.5 0.5B vs 7B),
    or the draft predicts a subset of the target's ids (`mtad.runtime.vocabulary`, checked here)."""
    if subset_of(draft.config, output_width(target)) is not None:
        return
    widths = [output_width(m) for m in (target, draft)]
    if widths[0] == widths[1]:
        return
    if tokenizer is not None and min(widths) >= len(tokenizer):
        return
    raise VocabularyMismatchError(
        f"draft has {widths[1]} output token ids, target has {widths[0]}; allowed: the same vocabulary "
        "(pass the tokenizer to accept heads that differ only by padding)"
    )


def context_length(model: PreTrainedModel) -> int | None:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pair_context_length(target: PreTrainedModel, draft: PreTrainedModel | None) -> int | None:
    """The context window a generation on this pair must fit: the smaller known one (None: no
    known limit). Pass draft None when the method decodes with the target alone."""
    limits = [n for n in map(context_length, (target, draft) if draft is not None else (target,)) if n]
    return min(limits, default=None)


def check_fits_context(
    model: PreTrainedModel, prompt_len: int, max_new_tokens: int, role: str, name: str = "prompt"
) -> None:
    limit = context_length(model)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ContextLengthError(
            f"{name} ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} "
            f"exceeds the {role} model's context length {limit}"
        )


def load_pair(
    target: str | os.PathLike,
    draft: str | os.PathLike | None,
    device: str | None = None,
    draft_device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    draft_dtype: str | torch.dtype | None = None,
    fast: str = "auto",
    quantize: str | None = None,
) -> tuple[LoadedModel, LoadedModel | None]:
    """Load target and draft; refuse a pair without a shared vocabulary.

    `dtype` (None/"auto" = the device's best, see `load_model`) is the target's; the draft
    follows the dtype the target got unless `draft_dtype` says otherwise. `fast` and `quantize`
    (`mtad.runtime.fast`) apply to both.
    """
    loaded_target = load_model(
        target, device=device, dtype=dtype, device_map=device_map, fast=fast, quantize=quantize
    )
    if loaded_target.tokenizer is None:
        raise ModelLoadError(f"target {str(target)!r} has no tokenizer; allowed: a model directory with one")
    if draft is None:
        return loaded_target, None
    draft_dtype = loaded_target.model.dtype if draft_dtype is None else draft_dtype
    loaded_draft = load_model(
        draft, device=draft_device or device, dtype=draft_dtype, fast=fast, quantize=quantize
    )
    if loaded_draft.tokenizer is not None:
        check_same_vocabulary(loaded_target.tokenizer, loaded_draft.tokenizer)
    check_heads_compatible(loaded_target.model, loaded_draft.model, loaded_target.tokenizer)
    if is_feature_draft(loaded_draft.model):
        check_target(loaded_draft.model, loaded_target.model)
    return loaded_target, loaded_draft


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """Token ids of a user prompt; the chat template is applied when the tokenizer has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]
