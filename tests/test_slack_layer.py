"""`SlackLayer` appends in place and otherwise behaves as the `DynamicLayer` it replaces."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from mtad.runtime.slack_layer import SlackLayer


def _states(generator: torch.Generator, rows: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 2, slots, 4, generator=generator), torch.randn(
        rows, 2, slots, 4, generator=generator
    )


def test_every_operation_leaves_what_a_dynamic_layer_leaves():
    generator = torch.Generator().manual_seed(0)
    plain, slack = DynamicLayer(), SlackLayer()
    operations = [
        ("update", 5), ("update", 1), ("update", 1), ("crop", -2), ("update", 3), ("select", [0, 2]),
        ("update", 1), ("reorder", [1, 0]), ("repeat", 2), ("update", 2), ("crop", -1), ("update", 40),
    ]  # fmt: skip
    rows = 3
    for name, argument in operations:
        if name == "update":
            keys, values = _states(generator, rows, argument)
            out_plain, out_slack = plain.update(keys, values), slack.update(keys, values)
            for a, b in zip(out_plain, out_slack, strict=True):
                assert torch.equal(a, b)
        elif name == "crop":
            plain.crop(argument), slack.crop(argument)
        elif name == "select":
            (
                plain.batch_select_indices(torch.tensor(argument)),
                slack.batch_select_indices(torch.tensor(argument)),
            )
            rows = len(argument)
        elif name == "reorder":
            plain.reorder_cache(torch.tensor(argument)), slack.reorder_cache(torch.tensor(argument))
        else:
            plain.batch_repeat_interleave(argument), slack.batch_repeat_interleave(argument)
            rows *= argument
        assert torch.equal(plain.keys, slack.keys) and torch.equal(plain.values, slack.values)
        assert plain.get_seq_length() == slack.get_seq_length()


def test_steps_write_into_spare_slots_and_a_crop_keeps_them():
    generator = torch.Generator().manual_seed(1)
    layer = SlackLayer()
    layer.update(*_states(generator, 2, 30))
    storage = layer.keys.data_ptr()
    for _ in range(5):
        layer.update(*_states(generator, 2, 1))
    assert layer.keys.data_ptr() == storage and layer.get_seq_length() == 35  # no copy per step
    layer.crop(-3)
    layer.update(*_states(generator, 2, 2))
    assert layer.keys.data_ptr() == storage and layer.get_seq_length() == 34


def test_a_layer_made_from_a_filled_one_holds_the_same_states():
    generator = torch.Generator().manual_seed(2)
    plain = DynamicLayer()
    plain.update(*_states(generator, 1, 6))
    slack = SlackLayer.from_layer(plain)
    assert (
        slack.is_initialized
        and torch.equal(slack.keys, plain.keys)
        and torch.equal(slack.values, plain.values)
    )
    assert not SlackLayer.from_layer(DynamicLayer()).is_initialized
