"""mtad: Multi-Token Assisted Decoding with a draft model, beside speculative-sampling baselines.

import mtad
target, draft = mtad.load_pair("path/to/target", "path/to/draft")
result = mtad.generate(target.model, draft.model, ids, method="mtad", tokenizer=target.tokenizer)
result.text, result.stats.acceptance_rate, result.stats.block_efficiency
"""

from mtad.api import generate, price_forwards, stream
from mtad.config import SamplingConfig, StopConfig
from mtad.decoding.drafts import DRAFT_KINDS, HybridDraft, ModelFreeDraft, RecycleDraft, SuffixDraft
from mtad.decoding.loop import Block, Generation, GenerationResult, Stats
from mtad.decoding.methods import METHODS, Method, methods, register_method
from mtad.decoding.speculation import Limits, SpeculationConfig
from mtad.errors import (
    ConfigError,
    ContextLengthError,
    ModelLoadError,
    MtadError,
    NumericalError,
    VocabularyMismatchError,
)
from mtad.models import LoadedModel, encode_prompt, load_model, load_pair

__all__ = [
    "METHODS",
    "Block",
    "ConfigError",
    "DRAFT_KINDS",
    "ContextLengthError",
    "Generation",
    "HybridDraft",
    "GenerationResult",
    "Limits",
    "Method",
    "LoadedModel",
    "ModelFreeDraft",
    "ModelLoadError",
    "MtadError",
    "NumericalError",
    "RecycleDraft",
    "SamplingConfig",
    "SpeculationConfig",
    "Stats",
    "StopConfig",
    "SuffixDraft",
    "VocabularyMismatchError",
    "encode_prompt",
    "generate",
    "load_model",
    "load_pair",
    "methods",
    "price_forwards",
    "register_method",
    "stream",
]
