"""Every bad input gets one clear line naming the value and what is allowed: library and CLI."""

from __future__ import annotations

import math

import pytest
import torch

import mtad
from conftest import tiny_llama, tiny_tokenizer
from mtad.cli import main
from mtad.errors import (
    ConfigError,
    ContextLengthError,
    ModelLoadError,
    MtadError,
    NumericalError,
    VocabularyMismatchError,
)

PROMPT = [0, 5, 7]


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"gamma": 0}, "gamma"),
        ({"gamma": 2.5}, "gamma"),
        ({"beam_width": 0}, "beam_width"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"method": "beam"}, "unknown method 'beam'"),
        ({"seed": -3}, "seed"),
        ({"max_new_tokens": 300}, "context length 256"),
        ({"stop": ["x"]}, "tokenizer"),
    ],
)
def test_bad_settings_raise_one_line_errors(target, draft, settings, needle):
    with pytest.raises(MtadError) as caught:
        mtad.generate(target, draft, PROMPT, **({"method": "mtad"} | settings))
    message = str(caught.value)
    assert needle in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_empty_prompt(target, draft, tokenizer):
    for empty in ([], torch.zeros(0, dtype=torch.long), ""):
        with pytest.raises(ConfigError, match="prompt is empty"):
            mtad.generate(target, draft, empty, tokenizer=tokenizer)


def test_context_length_error_names_numbers(target, draft):
    with pytest.raises(ContextLengthError, match=r"prompt \(3 tokens\) \+ max_new_tokens \(254\) = 257"):
        mtad.generate(target, draft, PROMPT, max_new_tokens=254)


def test_drafted_method_without_draft(target):
    with pytest.raises(ConfigError, match="needs a draft"):
        mtad.generate(target, None, PROMPT, method="sd")


def test_mismatched_vocabularies(target):
    other = tiny_llama(seed=2, vocab=20)
    with pytest.raises(VocabularyMismatchError, match="20 output token ids, target has 16"):
        mtad.generate(target, other, PROMPT, method="sd")


def test_mismatched_tokenizers_refused_at_load(tmp_path, target, tokenizer):
    target.save_pretrained(tmp_path / "t")
    tokenizer.save_pretrained(tmp_path / "t")
    other = tiny_tokenizer(vocab=16)
    other.add_tokens(["extra"])
    tiny_llama(seed=2, vocab=17).save_pretrained(tmp_path / "d")
    other.save_pretrained(tmp_path / "d")
    with pytest.raises(VocabularyMismatchError, match="vocabularies differ"):
        mtad.load_pair(tmp_path / "t", tmp_path / "d")


def test_missing_model_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        mtad.load_model("./no/such/model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        mtad.load_model("/tmp/missing.gguf")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody-xyz/not-a-model'"):
        mtad.load_model("nobody-xyz/not-a-model")


class _BrokenModel(torch.nn.Module):
    """Wraps a model and poisons its logits, as a diverged fp16 model would."""

    def __init__(self, inner, value: float) -> None:
        super().__init__()
        self.inner, self.value, self.config = inner, value, inner.config
        self.generation_config = inner.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., 3] = self.value
        return out


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_inf_logits(target, value):
    with pytest.raises(NumericalError, match="NaN or \\+inf"):
        mtad.generate(_BrokenModel(target, value), None, PROMPT, method="ar", max_new_tokens=3)


# --- CLI: exit code 2, one line on stderr, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gamma", "0"], "gamma must be"),
        (["--threshold", "2"], "threshold must be"),
        (["--top-p", "0"], "top_p must be"),
        (["--temperature", "-1"], "temperature must be"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--max-new-tokens", "-2"], "max_new_tokens must be"),
        (["--max-new-tokens", "1000"], "context length"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(pair_dirs, capsys, args, needle):
    target, draft = pair_dirs
    code = main(["generate", "--target", str(target), "--draft", str(draft), "--raw", "w3 w4", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err
    # the error is one line, the last one (loading progress may stand before it), and no traceback
    assert needle in err.splitlines()[-1]
    assert "Traceback" not in err


def test_cli_missing_model_and_empty_prompt(pair_dirs, capsys):
    assert main(["generate", "--target", "./nowhere", "--method", "ar", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
    target, draft = pair_dirs
    assert main(["generate", "--target", str(target), "--draft", str(draft), ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_cli_argparse_type_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["generate", "--gamma", "four", "hi"])
    assert caught.value.code == 2
    assert "invalid gamma 'four'; allowed: an integer >= 1 or 'auto'" in capsys.readouterr().err


def test_unknown_setting_is_named(target, draft):
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) beam_size; allowed: method, gamma"):
        mtad.generate(target, draft, PROMPT, beam_size=3)
