"""Every decoding setting is declared once (`mtad.config.SETTINGS`), and each face of the product
derives from that declaration: the library's keywords and defaults, the CLI's flags and defaults,
the server's request fields and the field its errors name, the bench's sweep list, the methods'
`settings`. A face that drifts from the table fails here."""

from __future__ import annotations

import dataclasses

import pytest

import mtad
from mtad.api import DEFAULT_SETTINGS, validate_settings
from mtad.bench.plan import SWEEP_PARAMS, Sweep
from mtad.cli import build_parser
from mtad.cli.common import decoding_settings
from mtad.config import PAPER_WARP, PRESETS, SETTINGS, SamplingConfig
from mtad.decoding.methods import BUILT_IN, Method
from mtad.decoding.speculation import SpeculationConfig
from mtad.errors import ConfigError
from mtad.serve.app import _ENGINE_PARAMS
from mtad.serve.schemas import ChatRequest, CompletionRequest, DecodingOptions


def test_the_library_takes_every_declared_setting_and_only_those():
    assert DEFAULT_SETTINGS == {name: setting.default for name, setting in SETTINGS.items()}
    spec, sampling = validate_settings(**DEFAULT_SETTINGS)
    assert spec == SpeculationConfig() and sampling == SamplingConfig()
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) min_q; allowed: method, gamma,") as caught:
        validate_settings(min_q=0.1)
    assert caught.value.setting == "min_q"
    carried = {f.name for f in dataclasses.fields(SpeculationConfig) + dataclasses.fields(SamplingConfig)}
    assert carried | {"max_new_tokens", "seed"} == set(SETTINGS)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_bad_value_is_refused_by_its_declaration_naming_the_setting(name):
    bad = {"method": 7, "with_replacement": "yes", "tree": (0,), "reference": "worst", "seed": -1}.get(
        name, -5
    )
    with pytest.raises(ConfigError) as caught:
        validate_settings(**{name: bad})
    assert caught.value.setting == name
    if name != "method":  # the registry names the allowed methods itself
        assert str(caught.value).startswith(f"{name} must be {SETTINGS[name].allowed}, got ")


def test_the_cli_has_a_flag_per_setting_defaulting_to_the_cli_preset():
    args = build_parser().parse_args(["generate", "hi"])
    assert decoding_settings(args) == PRESETS["cli"]
    assert PRESETS["cli"] == DEFAULT_SETTINGS | PAPER_WARP | {"gamma": "auto"}
    flags = ["--gamma", "6", "--tree", "3,1", "--without-replacement", "--seed", "9", "--threshold", "0.25"]
    args = build_parser().parse_args(["generate", *flags, "hi"])
    given = decoding_settings(args)
    assert (given["gamma"], given["tree"], given["with_replacement"], given["seed"]) == (6, (3, 1), False, 9)
    assert given["threshold"] == 0.25


def test_the_server_takes_each_setting_where_its_declaration_says():
    for name, setting in SETTINGS.items():
        assert _ENGINE_PARAMS[name] == setting.request_field
        parent, _, field = setting.request_field.rpartition(".")
        fields = DecodingOptions.model_fields if parent == "mtad" else CompletionRequest.model_fields
        assert field in fields, setting.request_field
        assert field in ChatRequest.model_fields or parent == "mtad"
    assert set(DecodingOptions.model_fields) == {
        n for n, s in SETTINGS.items() if s.request_field.startswith("mtad.")
    }
    with pytest.raises(Exception, match="finite"):
        DecodingOptions.model_validate({"threshold": float("inf")})


def test_the_bench_sweeps_the_settings_declared_sweepable():
    assert set(SWEEP_PARAMS) == {name for name, setting in SETTINGS.items() if setting.sweepable}
    assert Sweep.parse("gamma=4,auto").values == (4, "auto")
    assert Sweep.parse("reference=best,own").values == ("best", "own")


def test_a_method_reads_only_declared_settings():
    for method in BUILT_IN:
        assert method.settings <= SETTINGS.keys()
    ar = BUILT_IN[0]
    with pytest.raises(ConfigError, match="reads undeclared setting\\(s\\) depth"):
        Method("mine", "a method", ar.shape, ar.proposer, ar.rule, True, settings=frozenset({"depth"}))


def test_presets_name_the_library_the_paper_and_the_cli():
    assert PRESETS["library"] == DEFAULT_SETTINGS
    assert PRESETS["paper"] == DEFAULT_SETTINGS | {"temperature": 1.0, "top_k": 10, "top_p": 0.9, "gamma": 4}
    for preset in PRESETS.values():
        validate_settings(**preset)
    assert mtad.generate.__doc__ and "validate_settings" in mtad.stream.__doc__
    assert all(f"{name} (default" in validate_settings.__doc__ for name in SETTINGS)
