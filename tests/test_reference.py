"""The optimised loop against the read-me-first reference (`mtad.decoding.reference`): one
uncached SD and MTAD step over plain model calls. Same seed, same tokens, round after round, at
temperature 0 and when sampling (the reference draws in the loop's order from one generator)."""

from __future__ import annotations

import pytest
import torch

import mtad
from mtad.config import SamplingConfig
from mtad.decoding import reference

PROMPTS = [[0, 5, 7, 3], [0, 2], [0, 9, 9, 9, 4, 11, 12, 6]]
WARPS = {"greedy": SamplingConfig(0.0), "sampled": SamplingConfig(1.0, top_k=8, top_p=0.9)}
MTAD = {"width": 3, "tau": 0.3}


def loop(target, draft, prompt, method, sampling, gamma, seed, **settings):
    return mtad.generate(
        target, draft, prompt, method=method, gamma=gamma, seed=seed, max_new_tokens=24, eos_token_id=[],
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, **settings,
    )  # fmt: skip


@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize("gamma", [1, 3])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_sd_loop_equals_the_reference(target, draft, prompt, gamma, warp):
    sampling = WARPS[warp]
    result = loop(target, draft, prompt, "sd", sampling, gamma, seed=7)
    expected = reference.generate(reference.sd_step, target, draft, prompt, 24, 7, gamma, sampling)
    assert result.tokens == expected
    assert result.stats.drafted_tokens > 0  # guard: the loop really drafted


@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize("gamma", [1, 3])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_mtad_loop_equals_the_reference(target, draft, prompt, gamma, warp):
    sampling = WARPS[warp]
    result = loop(target, draft, prompt, "mtad", sampling, gamma, seed=7, beam_width=3, threshold=0.3)
    expected = reference.generate(reference.mtad_step, target, draft, prompt, 24, 7, gamma, sampling, **MTAD)
    assert result.tokens == expected
    assert result.stats.drafted_tokens > 0


def test_the_reference_accepts_and_rejects(target, draft):
    """Guard against a vacuous oracle: on the tiny pair, rounds of MTAD accept 0 and >0 tokens."""
    sampling = WARPS["sampled"]
    lengths = set()
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        block = reference.mtad_step(
            target, draft, PROMPTS[0], 3, sampling=sampling, generator=generator, **MTAD
        )
        lengths.add(len(block))
    assert 1 in lengths and max(lengths) > 1
