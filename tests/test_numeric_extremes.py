"""Every finite setting validation allows decodes; the rest are refused in one line.

Extreme temperatures once crashed the warp: 1e-45 (a float32 subnormal) and 1e-300 round to 0 in
float32, 1e308 to inf, and logits / 0 or -inf / inf is NaN, which the draw turned into an index past
the vocabulary. A tiny top_p rounded to 0 kept no token at all. These tests pin the limits: a
temperature towards 0 is greedy, a huge one uniform over the kept tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

import mtad
from conftest import tiny_llama
from mtad.cli import main
from mtad.config import SamplingConfig
from mtad.decoding.sampling import warp
from mtad.errors import ConfigError

TINY = [1e-30, 1.1e-38, 1e-45, 1e-300, 5e-324]
HUGE = [1e30, 3.5e38, 2.0**200, 1e308, 1.7976931348623157e308, 2**70]


def _logits(rows: int = 3, vocab: int = 50) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows * vocab)) * 4


@pytest.mark.parametrize("top_k", [0, 7])
@pytest.mark.parametrize("temperature", TINY)
def test_a_tiny_temperature_is_greedy(temperature, top_k):
    logits = _logits()
    probs = warp(logits, SamplingConfig(temperature, top_k, 1.0))
    greedy = warp(logits, SamplingConfig(0.0, top_k, 1.0))
    assert torch.equal(probs, greedy)


@pytest.mark.parametrize("top_k", [0, 2])
def test_a_tiny_temperature_shares_a_tied_maximum(top_k):
    probs = warp(torch.tensor([[2.0, 5.0, 5.0, -1.0]]), SamplingConfig(1e-300, top_k, 1.0))
    assert probs.tolist() == [[0.0, 0.5, 0.5, 0.0]]


@pytest.mark.parametrize("top_k", [0, 2])
def test_subnormal_logit_gaps_are_divided_exactly(top_k):
    """A gap of 1e-44 over a temperature of 1e-45 is exp(-10), not a tie or a one-hot."""
    logits = torch.tensor([[1e-44, 0.0, -1.0]])
    probs = warp(logits, SamplingConfig(1e-45, top_k, 1.0))
    gap = (float(logits[0, 0]) - float(logits[0, 1])) / 1e-45  # the float32 values, in float64
    expected = torch.tensor([[1.0, math.exp(-gap), 0.0]]) / (1 + math.exp(-gap))
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("temperature", HUGE)
def test_a_huge_temperature_is_uniform_over_the_kept_tokens(temperature):
    logits = _logits()
    everywhere = warp(logits, SamplingConfig(temperature, 0, 1.0))
    torch.testing.assert_close(everywhere, torch.full_like(everywhere, 1 / 50))
    top = warp(logits, SamplingConfig(temperature, 5, 1.0))
    kept = logits >= logits.topk(5, dim=-1).values[:, -1:]
    assert torch.equal(top > 0, kept)
    torch.testing.assert_close(top[kept], torch.full_like(top[kept], 1 / 5))


def test_a_huge_temperature_keeps_masked_tokens_at_zero():
    logits = torch.tensor([[1.0, 0.5, -math.inf, -math.inf, 0.0]])
    for top_k in (0, 2, 4):
        probs = warp(logits, SamplingConfig(1e308, top_k, 1.0))
        assert not probs.isnan().any() and probs[0, 2:4].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("top_k", [0, 4])
@pytest.mark.parametrize("top_p", [5e-324, 1e-300, 1e-45, 1e-9])
def test_a_tiny_top_p_keeps_only_the_most_likely_token(top_p, top_k):
    logits = _logits()
    probs = warp(logits, SamplingConfig(1.0, top_k, top_p))
    assert torch.equal(probs, warp(logits, SamplingConfig(0.0, 0, 1.0)))


def test_a_huge_top_k_is_no_top_k():
    logits = _logits()
    assert torch.equal(
        warp(logits, SamplingConfig(0.7, 2**70, 0.9)), warp(logits, SamplingConfig(0.7, 0, 0.9))
    )


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"temperature": 2**1100}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": -5e-324}, "temperature"),
        ({"top_p": -0.0}, "top_p"),
        ({"top_p": 1 + 2**-52}, "top_p"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 2**1100}, "threshold"),
        ({"top_k": -1}, "top_k"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
    ],
)
def test_values_past_the_limits_are_refused_naming_the_setting(target, draft, prompt, settings, name):
    with pytest.raises(ConfigError) as caught:
        mtad.generate(target, draft, prompt, max_new_tokens=2, **settings)
    assert caught.value.setting == name and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def quiet_target():
    """The tiny target with EOS off, so every run has the same length."""
    model = tiny_llama(seed=0)
    model.generation_config.eos_token_id = []
    return model


@pytest.mark.parametrize("method", mtad.METHODS)
@pytest.mark.parametrize("temperature", [1e-45, 5e-324])
def test_every_method_at_a_tiny_temperature_decodes_greedily(
    quiet_target, draft, prompt, method, temperature
):
    common = {"method": method, "max_new_tokens": 10, "seed": 4, "top_k": 10, "top_p": 0.9}
    result = mtad.generate(quiet_target, draft, prompt, temperature=temperature, **common)
    assert result.tokens == mtad.generate(quiet_target, draft, prompt, temperature=0.0, **common).tokens


@pytest.mark.parametrize("method", mtad.METHODS)
@pytest.mark.parametrize("temperature", [1e308, 2**70])
@pytest.mark.parametrize("top_k", [0, 3])
def test_every_method_at_a_huge_temperature_decodes(quiet_target, draft, prompt, method, temperature, top_k):
    settings = {"method": method, "max_new_tokens": 10, "seed": 4, "top_k": top_k, "threshold": 5e-324}
    result = mtad.generate(quiet_target, draft, prompt, temperature=temperature, **settings)
    assert len(result.tokens) == 10 and all(0 <= t < 16 for t in result.tokens)


@pytest.mark.parametrize("value", ["1e308", "1e-45", "5e-324", "-0.0"])
def test_the_cli_decodes_at_extreme_temperatures(pair_dirs, capsys, value):
    target, draft = pair_dirs
    args = ["generate", "--target", target, "--draft", draft, "--max-new-tokens", "4", "--seed", "1"]
    assert main([*args, f"--temperature={value}", "--top-p", "5e-324", "--raw", "w3 w5"]) == 0


@pytest.mark.parametrize("value", ["1e309", "nan", "-1e-300"])
def test_the_cli_refuses_temperatures_past_the_limits_in_one_line(pair_dirs, capsys, value):
    target, draft = pair_dirs
    args = ["generate", "--target", target, "--draft", draft, "--max-new-tokens", "4"]
    assert main([*args, f"--temperature={value}", "--raw", "w3 w5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature" in err and "Traceback" not in err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [*TINY, 0.5, 1.0, *HUGE])
@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (2, 1.0), (0, 0.5), (2, 5e-324)])
def test_logits_at_the_dtype_limits_give_distributions(dtype, temperature, top_k, top_p):
    """Logits as large as the dtype holds (a span past float32's range), ties and masks: every
    row is a distribution, never NaN, and a masked token keeps zero mass."""
    big = torch.finfo(dtype).max
    logits = torch.tensor(
        [[big, -big, 0.0, big], [-big, -big, -big, -math.inf], [1e-3, 0.0, -1e-3, 5.0]], dtype=dtype
    )
    probs = warp(logits, SamplingConfig(temperature, top_k, top_p))
    assert not probs.isnan().any() and probs.ge(0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert probs[1, 3] == 0
