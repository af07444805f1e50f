"""`mtad.generate` and `mtad.stream`: the Python face of the engine, validated at the edge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch
from transformers import PreTrainedModel

from mtad.config import PRESETS, SEED_LIMIT, SETTINGS, SamplingConfig, StopConfig, shown
from mtad.decoding import pricing
from mtad.decoding.batch import BatchGeneration
from mtad.decoding.drafts import ModelFreeDraft, draft_model_of, is_model_free, resolve_draft
from mtad.decoding.loop import Generation, GenerationResult
from mtad.decoding.methods import with_model_free_draft, without_draft
from mtad.decoding.speculation import Limits, SpeculationConfig
from mtad.errors import ConfigError
from mtad.models import check_fits_context, check_heads_compatible, output_width, pair_context_length
from mtad.models.feature_draft import check_target, is_feature_draft

Prompt = Sequence[int] | torch.Tensor | str


def stream(
    target: PreTrainedModel,
    draft: PreTrainedModel | ModelFreeDraft | str | None,
    input_ids: Prompt | Sequence[Prompt],
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    tokenizer=None,
    limits: Limits | None = None,
    batch_invariant: bool = False,
    **settings,
) -> Generation | BatchGeneration:
    """Like `generate`, but returns an iterable of committed blocks; `.result` is set at the end.

    For a batch of prompts it returns a `BatchGeneration`: an iterable of (prompt index, block)
    whose `.results` (one per prompt, in order) is set at the end.
    `settings` are the keyword arguments of `validate_settings` (method, gamma, beam_width, ...).
    `limits` caps the settings that size a round's tensors (default `Limits()`), lowered further
    to what the pair's context and vocabulary allow; a setting over its cap is a `ConfigError`
    before any work is done.
    """
    if not isinstance(batch_invariant, bool):
        raise ConfigError(
            f"batch_invariant must be True or False, got {shown(batch_invariant)}", "batch_invariant"
        )
    seed = settings.get("seed")
    row_seeds = isinstance(seed, list | tuple)  # a batch may give one seed per prompt
    spec, sampling = validate_settings(**(settings | {"seed": None} if row_seeds else settings))
    for i, value in enumerate(seed if row_seeds else ()):
        SETTINGS["seed"].check(value, f"seed[{i}]")
    max_new_tokens = settings.get("max_new_tokens", PRESETS["library"]["max_new_tokens"])
    draft = resolve_draft(draft)
    draft_model = draft_model_of(draft) if spec.needs_draft else None  # a model that drafts (or a hybrid's)
    context = pair_context_length(target, draft_model)
    (limits or Limits()).for_models(output_width(target), context).check(spec)
    prompts = _prompt_tensors(input_ids, tokenizer)
    stops = StopConfig(max_new_tokens, _eos_ids(eos_token_id, target, tokenizer), _stop_strings(stop))
    if spec.needs_draft:
        if draft is None:
            raise ConfigError(
                f"method {spec.method!r} needs a draft model; pass draft=... or use "
                f"{', '.join(without_draft())}"
            )
        if is_model_free(draft) and spec.record.model_free_proposer is None:
            raise ConfigError(
                f"method {spec.method!r} cannot draft with the model-free draft {draft.name!r}; allowed: "
                f"{', '.join(with_model_free_draft())}, or a draft model",
                "draft",
            )
        if spec.sized_by_cost and not is_model_free(draft):
            raise ConfigError(
                "tree 'auto' sizes the trees of a model-free draft (recycle, suffix); with a draft model, "
                "give a branching such as 4,2,2",
                "tree",
            )
        if draft_model is not None:
            check_heads_compatible(target, draft_model, tokenizer)
            if is_feature_draft(draft_model):
                check_target(draft_model, target)
    for name, prompt in prompts:
        _check_token_ids(prompt, target, name)
        if draft_model is not None:
            check_fits_context(draft_model, prompt.shape[1], max_new_tokens, "draft", name)
        check_fits_context(target, prompt.shape[1], max_new_tokens, "target", name)
    if _is_one_prompt(input_ids):
        if row_seeds:
            raise ConfigError(
                f"seed is a list ({len(seed)} seeds) for one prompt; allowed: an integer", "seed"
            )
        return Generation(target, draft, prompts[0][1], spec, sampling, stops, seed, tokenizer)
    if row_seeds and len(seed) != len(prompts):
        raise ConfigError(
            f"seed has {len(seed)} values for {len(prompts)} prompts; allowed: one per prompt", "seed"
        )
    # Row i takes seed + i (wrapping below SEED_LIMIT) unless seeds are given per prompt; rerun a row
    # alone with its result's seed.
    seeds = (
        list(seed)
        if row_seeds
        else [None if seed is None else (seed + i) % SEED_LIMIT for i in range(len(prompts))]
    )

    generations = [
        Generation(target, draft, prompt, spec, sampling, stops, seeds[i], tokenizer)
        for i, (_, prompt) in enumerate(prompts)
    ]
    return BatchGeneration(target, draft, generations, invariant=batch_invariant)


def validate_settings(**settings) -> tuple[SpeculationConfig, SamplingConfig]:
    """Check every decoding setting at once (before any model is loaded, where callers can); the
    settings a call leaves out take their declared defaults (`mtad.config.SETTINGS`):

    {table}
    """
    unknown = sorted(settings.keys() - SETTINGS.keys())
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(SETTINGS)}", unknown[0]
        )
    values = PRESETS["library"] | settings
    if isinstance(values["tree"], list):
        values["tree"] = tuple(values["tree"])
    spec = SpeculationConfig(**{item.name: values[item.name] for item in fields(SpeculationConfig)})
    warp = {item.name: values[item.name] for item in fields(SamplingConfig)}
    sampling = SamplingConfig(**warp | dict(spec.record.fixed_sampling))
    StopConfig(values["max_new_tokens"])
    SETTINGS["seed"].check(values["seed"])
    return spec, sampling


validate_settings.__doc__ = validate_settings.__doc__.format(
    table="\n    ".join(
        f"{s.name} (default {s.default!r}): {s.help}. Allowed: {s.allowed}" for s in SETTINGS.values()
    )
)


def generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | ModelFreeDraft | str | None,
    input_ids: Prompt | Sequence[Prompt],
    **settings,
) -> GenerationResult | list[GenerationResult]:
    """Decode with `method` (see `mtad.methods()`) and return tokens, text and statistics.

    `input_ids`: token ids of the prompt (a list, or a tensor [len] / [1, len]), or a string when
    `tokenizer` is given (encoded as is; apply a chat template first if you want one). A batch of
    prompts (a list of those, of any lengths, or a tensor [rows, len]) decodes together
    (`mtad.decoding.batch`) and returns one result per prompt, in order; `seed` is then one integer (prompt
    i uses seed + i) or a list with one seed per prompt. `batch_invariant=True` decodes each prompt
    as if alone (its tokens never depend on the other prompts; no forward is shared).
    `draft`: a draft model, or a model-free draft that runs no forward (`mtad.decoding.drafts`):
    "recycle" (the target's own earlier distributions), "suffix" (continuations seen in the prompt
    and output), or a `RecycleDraft` / `SuffixDraft` object to set options or share state across calls.
    `eos_token_id`: None takes the target's generation config; [] disables EOS.
    `tree` (specinfer): branching per depth, e.g. (4, 2, 2). `reference` (mmtad): best, max or own.
    Lossless methods (`ar`, `greedy`, `sd`, `specinfer`) sample exactly the warped target
    distribution; `mtad`, `mmtad` and `mtjd` deliberately do not (see `mtad.decoding.acceptance`).
    """
    generation = stream(target, draft, input_ids, **settings)
    for _ in generation:
        pass
    return generation.results if isinstance(generation, BatchGeneration) else generation.result


def price_forwards(
    target: PreTrainedModel,
    draft: PreTrainedModel | ModelFreeDraft | str | None,
    rows: int = 1,
    **settings,
) -> None:
    """Measure now, once per process, the forward costs gamma (or tree) "auto" reads with these
    settings, for batches of up to `rows` prompts (`mtad.decoding.pricing`): what a generation or
    a batch would otherwise measure when it is built. A server calls it at start for its defaults
    and its largest batch, so no request waits for it. Settings that size no round by cost
    measure nothing."""
    spec, sampling = validate_settings(**settings)
    if not spec.needs_draft or draft is None:
        return
    draft = resolve_draft(draft)
    drafting = target if spec.shape.self_drafted else None if is_model_free(draft) else draft
    pricing.price_rounds(target, drafting, spec, sampling, rows)


def _is_one_prompt(input_ids) -> bool:
    """A string, a flat (or empty) list of ids, or a tensor [len] / [1, len] is one prompt; a list
    of those, or a tensor [rows != 1, len], is a batch."""
    if isinstance(input_ids, str):
        return True
    if isinstance(input_ids, torch.Tensor):
        return input_ids.dim() == 1 or (input_ids.dim() == 2 and input_ids.shape[0] == 1)
    if isinstance(input_ids, list | tuple):
        return not input_ids or not isinstance(input_ids[0], str | list | tuple | torch.Tensor)
    return True


def _prompt_tensors(input_ids, tokenizer) -> list[tuple[str, torch.Tensor]]:
    """(name for errors, prompt [1, len]) for each prompt of `input_ids`."""
    if _is_one_prompt(input_ids):
        return [("prompt", _prompt_tensor(input_ids, tokenizer, "prompt"))]
    rows = list(input_ids)  # a tensor [rows, len] iterates over its rows
    if not rows:
        raise ConfigError("input_ids is an empty batch; allowed: at least one prompt", "input_ids")
    return [
        (f"input_ids[{i}]", _prompt_tensor(row, tokenizer, f"input_ids[{i}]")) for i, row in enumerate(rows)
    ]


def _prompt_tensor(input_ids, tokenizer, name: str = "prompt") -> torch.Tensor:
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise ConfigError(f"{name}: a string prompt needs tokenizer=...; or pass token ids", name)
        if not input_ids:
            raise ConfigError(f"{name} is empty; allowed: at least one token", name)
        check_text(input_ids, name)
        input_ids = tokenizer(input_ids)["input_ids"]
    try:
        prompt = torch.as_tensor(input_ids, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"{name} must be token ids (integers) or a string, got {shown(input_ids, 80)}", name
        ) from None
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ConfigError(
            f"{name} must be one prompt of shape [len] or [1, len], got {tuple(prompt.shape)}", name
        )
    if prompt.shape[1] == 0:
        raise ConfigError(f"{name} is empty; allowed: at least one token", name)
    return prompt


def _check_token_ids(prompt: torch.Tensor, target: PreTrainedModel, name: str) -> None:
    """Every id indexes the target's embedding (an id past it was an IndexError inside the model)."""
    vocab = getattr(target.get_input_embeddings(), "num_embeddings", None)
    if vocab is None:  # an embedding of another kind: let the model judge its ids
        return
    bad = prompt[(prompt < 0) | (prompt >= vocab)]
    if bad.numel():
        raise ConfigError(f"{name} has token id {int(bad[0])}; allowed: ids in [0, {vocab})", name)


def check_text(text: str, name: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate, e.g. from "\\ud800" in
    JSON or from undecodable bytes in a command-line argument): tokenizers raise TypeError on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError(
            f"{name} is not valid UTF-8 text: {error.object[error.start : error.end]!r} at character "
            f"{error.start}; allowed: text without lone surrogates",
            name,
        ) from None


def _eos_ids(eos_token_id, target: PreTrainedModel, tokenizer) -> tuple[int, ...]:
    if eos_token_id is None:
        config = getattr(target, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, int):
        return (eos_token_id,)
    if not isinstance(eos_token_id, Sequence) or isinstance(eos_token_id, str):
        raise ConfigError(
            f"eos_token_id must be an integer or a list of integers, got {shown(eos_token_id)}",
            "eos_token_id",
        )
    return tuple(eos_token_id)


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if not isinstance(stop, Sequence):
        raise ConfigError(f"stop must be a string or a list of strings, got {shown(stop)}", "stop")
    return tuple(stop)


#: Every decoding setting with its library default, e.g. for a server's defaults or a test's baseline.
DEFAULT_SETTINGS: dict = dict(PRESETS["library"])
