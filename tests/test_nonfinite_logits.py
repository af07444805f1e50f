"""A model that emits NaN or +inf logits fails its own request with `NumericalError`, not its batch.

The rigged models are the tiny pair with a forward hook: wherever the input token is `POISON`, the
logits at that position become NaN (or +inf, or a row of -inf), and POISON itself is never drawn.
A prompt ending in `POISON` asks for its first token from such a row; a prompt without it never
meets one.
"""

from __future__ import annotations

import math

import pytest
import torch

import mtad
from conftest import tiny_llama
from mtad.errors import NumericalError

POISON = 13


def rig(model, value: float):
    """`model`, whose logits are `value` at positions whose input token is POISON. (Position by
    position, not row by row: a batch's prefill may pack several prompts into one row.)"""

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)  # [rows, positions]
        logits = output.logits  # [rows, kept positions, vocab]
        keep = kwargs.get("logits_to_keep", 0)
        # The kept positions: the last `keep` (0: all), or given as indices (a packed prefill).
        kept = ids[:, keep.to(ids.device)] if isinstance(keep, torch.Tensor) else ids[:, -logits.shape[1] :]
        poisoned = kept == POISON  # [rows, kept positions]
        logits[..., POISON] = -math.inf  # no row ever draws POISON itself
        logits[poisoned] = value
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    model.generation_config.eos_token_id = []  # every clean run is exactly max_new_tokens long
    return model


@pytest.fixture(scope="module")
def clean_draft():
    return tiny_llama(seed=1, layers=1)


@pytest.mark.parametrize("method", mtad.METHODS)
@pytest.mark.parametrize(
    ("value", "needle"), [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "all -inf")]
)
def test_a_poisoned_target_fails_its_request_in_one_line(clean_draft, method, value, needle):
    target = rig(tiny_llama(seed=0), value)
    with pytest.raises(NumericalError, match=needle) as caught:
        mtad.generate(target, clean_draft, [0, 5, POISON], method=method, max_new_tokens=6, seed=1)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("method", ["sd", "mtad", "mmtad", "specinfer"])
def test_a_poisoned_draft_fails_its_request(method):
    target = rig(tiny_llama(seed=0), 0.0)  # never fires: 0.0 is finite, only EOS is turned off
    draft = rig(tiny_llama(seed=1, layers=1), math.nan)
    with pytest.raises(NumericalError):
        mtad.generate(target, draft, [0, 5, POISON], method=method, max_new_tokens=6, seed=1)


@pytest.mark.parametrize("method", ["ar", "sd", "mtad"])
def test_in_a_batch_only_the_poisoned_row_fails(method):
    target = rig(tiny_llama(seed=0), math.nan)
    draft = rig(tiny_llama(seed=1, layers=1), math.nan)  # so that it never drafts POISON either
    prompts = [[0, 5, 7], [0, 5, POISON], [0, 9, 2, 4]]
    batch = mtad.stream(target, draft, prompts, method=method, max_new_tokens=8, seed=3)
    with pytest.raises(NumericalError):
        for _ in batch:
            pass
    rows = batch.batch.rows
    assert isinstance(rows[1].error, NumericalError)
    for row in (rows[0], rows[2]):
        assert row.error is None and row.done
        assert len(row.generation.result.tokens) == 8 and row.generation.result.finish_reason == "length"
        assert all(0 <= t < 16 for t in row.generation.result.tokens)


def test_finite_logits_with_a_masked_tail_still_decode(clean_draft):
    """-inf is a legitimate mask: a row with some -inf entries decodes, it only never draws them."""
    target = tiny_llama(seed=0)
    target.generation_config.eos_token_id = []

    def mask_tail(module, args, output) -> None:
        output.logits[..., 8:] = -math.inf

    target.register_forward_hook(mask_tail)
    result = mtad.generate(target, clean_draft, [0, 5, 7], method="ar", max_new_tokens=10, seed=2)
    assert len(result.tokens) == 10 and all(t < 8 for t in result.tokens)
