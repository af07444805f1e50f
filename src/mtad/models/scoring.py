"""Output quality under the target: a separate scoring pass, never inside the timed decode loop.

Perplexity uses the *unwarped* target at temperature 1 (paper brief, Metrics), so every method is
judged by the same yardstick whatever warp it sampled with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


@torch.inference_mode()
def target_logprobs(model: PreTrainedModel, prompt: Sequence[int], generated: Sequence[int]) -> list[float]:
    """log p(token | everything before it) for each generated token, in one forward pass."""
    if not generated:
        return []
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([list(prompt) + list(generated)], device=device)
    logits = model(input_ids=ids, logits_to_keep=len(generated) + 1).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(-1, ids[0, len(prompt) :].unsqueeze(-1)).squeeze(-1).tolist()
