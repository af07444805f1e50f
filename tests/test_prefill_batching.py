"""benchmarks/prefill_batching.py times a padded prefill; its padding must compute what each prompt
computes alone, or the time it reports is the time of another computation."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from prefill_batching import padded_inputs  # noqa: E402

from conftest import VOCAB  # noqa: E402


def test_padded_prefill_equals_each_prompt_alone(target):
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, VOCAB, (length,), generator=generator) for length in (5, 9, 1)]
    with torch.no_grad():
        together = target(**padded_inputs(prompts, target.dtype), use_cache=False).logits
        for row, prompt in enumerate(prompts):
            alone = target(input_ids=prompt[None], use_cache=False).logits[0]
            torch.testing.assert_close(together[row, -len(prompt) :], alone, atol=1e-5, rtol=1e-5)
