"""Hidden states recorded by hooks (`mtad.runtime.taps`) equal `output_hidden_states`, on plain and
fused models, and a model they cannot tap gets None (its caller then asks for hidden states)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from conftest import tiny_llama
from mtad.runtime import fast, native
from mtad.runtime.taps import taps_for


def _states(model, ids, layers):
    with torch.inference_mode():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    return torch.cat([hidden[i] for i in layers], dim=-1)


def test_taps_give_the_chosen_hidden_states_and_record_only_when_asked():
    model = tiny_llama(0)
    layers = [0, 1, 2]  # the embeddings, layer 0's output, the last layer's after the final norm
    taps = taps_for(model, layers)
    assert taps is not None and taps_for(model, layers) is taps  # made once per model and choice
    ids = torch.tensor([[0, 5, 7, 3, 9]])
    with torch.inference_mode():
        out, states = taps.call(lambda: model(input_ids=ids), layers)
        model(input_ids=ids)  # not recording: nothing kept
    assert torch.equal(states, _states(model, ids, layers)) and not taps.outputs
    assert out.logits.shape[:2] == ids.shape


def test_taps_on_a_fast_path_model_and_on_a_copy_of_it():
    model = tiny_llama(1)
    if native.kernels() is not None:
        fast.apply(model, fast.FastPath("on", "fp16", "float32", "test"))
    taps = taps_for(model, [1, 2])
    twin = copy.deepcopy(model)
    own = taps_for(twin, [1, 2])
    assert own is not None and own is not taps  # the copy's hooks are its own
    ids = torch.tensor([[0, 5, 7]])
    with torch.inference_mode():
        _, states = own.call(lambda: twin(input_ids=ids), [1, 2])
    assert torch.equal(states, _states(twin, ids, [1, 2]))


def test_a_model_without_a_decoder_stack_to_tap_gets_none():
    model = tiny_llama(2)
    model.model.layers = nn.Sequential(*model.model.layers)  # not the ModuleList the taps read
    assert taps_for(model, [1]) is None
