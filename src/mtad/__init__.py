"""mtad: Multi-Token Assisted Decoding with a draft model, beside speculative-sampling baselines.

import mtad
target, draft = mtad.load_pair("path/to/target", "path/to/draft")
result = mtad.generate(target.model, draft.model, ids, method="mtad", tokenizer=target.tokenizer)
result.text, result.stats.acceptance_rate, result.stats.block_efficiency
"""

from mtad.api import generate, stream
from mtad.config import METHODS, Limits, SamplingConfig, SpeculationConfig, StopConfig
from mtad.engine import Block, Generation, GenerationResult, Stats
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
    "ContextLengthError",
    "Generation",
    "GenerationResult",
    "Limits",
    "LoadedModel",
    "ModelLoadError",
    "MtadError",
    "NumericalError",
    "SamplingConfig",
    "SpeculationConfig",
    "Stats",
    "StopConfig",
    "VocabularyMismatchError",
    "encode_prompt",
    "generate",
    "load_model",
    "load_pair",
    "stream",
]
