"""`mtad.generate` and `mtad.stream`: the Python face of the engine, validated at the edge."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from mtad.config import (
    DEFAULT_MAX_NEW_TOKENS,
    SEED_LIMIT,
    Limits,
    SamplingConfig,
    SpeculationConfig,
    StopConfig,
)
from mtad.engine import Generation, GenerationResult
from mtad.errors import ConfigError
from mtad.models import check_fits_context, check_heads_compatible, output_width, pair_context_length


def stream(
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    input_ids: Sequence[int] | torch.Tensor | str,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    tokenizer=None,
    limits: Limits | None = None,
    **settings,
) -> Generation:
    """Like `generate`, but returns an iterable of committed blocks; `.result` is set at the end.

    `settings` are the keyword arguments of `validate_settings` (method, gamma, beam_width, ...).
    `limits` caps the settings that size a round's tensors (default `Limits()`), lowered further
    to what the pair's context and vocabulary allow; a setting over its cap is a `ConfigError`
    before any work is done.
    """
    spec, sampling = validate_settings(**settings)
    max_new_tokens = settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    context = pair_context_length(target, draft if spec.needs_draft else None)
    (limits or Limits()).for_models(output_width(target), context).check(spec)
    prompt = _prompt_tensor(input_ids, tokenizer)
    stops = StopConfig(max_new_tokens, _eos_ids(eos_token_id, target, tokenizer), _stop_strings(stop))
    if spec.needs_draft:
        if draft is None:
            raise ConfigError(
                f"method {spec.method!r} needs a draft model; pass draft=... or use ar, greedy, mtjd"
            )
        check_heads_compatible(target, draft, tokenizer)
        check_fits_context(draft, prompt.shape[1], max_new_tokens, "draft")
    check_fits_context(target, prompt.shape[1], max_new_tokens, "target")
    return Generation(target, draft, prompt, spec, sampling, stops, settings.get("seed"), tokenizer)


def validate_settings(
    *,
    method: str = "mtad",
    gamma: int | str = 4,
    beam_width: int = 4,
    threshold: float = 0.5,
    with_replacement: bool = True,
    tree: Sequence[int] = (4, 2, 2),
    reference: str = "best",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int | None = None,
    **unknown,
) -> tuple[SpeculationConfig, SamplingConfig]:
    """Check every decoding setting at once (before any model is loaded, where callers can)."""
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(sorted(unknown))}; allowed: {', '.join(SETTINGS)}",
            sorted(unknown)[0],
        )
    tree = tuple(tree) if isinstance(tree, (list, tuple)) else tree
    spec = SpeculationConfig(method, gamma, beam_width, threshold, with_replacement, tree, reference)
    sampling = SamplingConfig(0.0 if method == "greedy" else temperature, top_k, top_p)
    StopConfig(max_new_tokens)
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT
    ):
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}", "seed")
    return spec, sampling


def generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    input_ids: Sequence[int] | torch.Tensor | str,
    **settings,
) -> GenerationResult:
    """Decode with `method` (see `mtad.methods()`) and return tokens, text and statistics.

    `input_ids`: token ids of the prompt (a list, or a tensor [len] / [1, len]), or a string when
    `tokenizer` is given (encoded as is; apply a chat template first if you want one).
    `eos_token_id`: None takes the target's generation config; [] disables EOS.
    `tree` (specinfer): branching per depth, e.g. (4, 2, 2). `reference` (mmtad): best, max or own.
    Lossless methods (`ar`, `greedy`, `sd`, `specinfer`) sample exactly the warped target
    distribution; `mtad`, `mmtad` and `mtjd` deliberately do not (see `mtad.acceptance`).
    """
    generation = stream(target, draft, input_ids, **settings)
    for _ in generation:
        pass
    return generation.result


def _prompt_tensor(input_ids, tokenizer) -> torch.Tensor:
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise ConfigError("a string prompt needs tokenizer=...; or pass token ids")
        if not input_ids:
            raise ConfigError("prompt is empty; allowed: at least one token", "prompt")
        check_text(input_ids, "prompt")
        input_ids = tokenizer(input_ids)["input_ids"]
    prompt = torch.as_tensor(input_ids, dtype=torch.long)
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ConfigError(
            f"input_ids must be one prompt of shape [len] or [1, len], got {tuple(prompt.shape)}"
        )
    if prompt.shape[1] == 0:
        raise ConfigError("prompt is empty; allowed: at least one token", "prompt")
    return prompt


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
    return tuple(eos_token_id)


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(stop)


#: Every decoding setting with its default, e.g. for a server's defaults or a test's baseline.
DEFAULT_SETTINGS: dict = dict(validate_settings.__kwdefaults__)
SETTINGS = tuple(DEFAULT_SETTINGS)
