"""Models: loading (a directory, a GGUF file or a hub id; `loading`), the offline default pair
(`default_pair`), the draft kinds (`feature_draft`: EAGLE-style drafts over the target's hidden
states; a token draft is any causal LM, over the whole vocabulary or a subset of it), and the
perplexity scoring pass (`scoring`). How their forwards run is `mtad.runtime`'s business."""

from mtad.models.loading import (
    LoadedModel,
    check_fits_context,
    check_heads_compatible,
    check_same_vocabulary,
    context_length,
    encode_prompt,
    load_model,
    load_pair,
    output_width,
    pair_context_length,
)

__all__ = [
    "LoadedModel",
    "check_fits_context",
    "check_heads_compatible",
    "check_same_vocabulary",
    "context_length",
    "encode_prompt",
    "load_model",
    "load_pair",
    "output_width",
    "pair_context_length",
]
