"""The hidden states a feature draft reads, recorded by forward hooks instead of `output_hidden_states`.

A target that feeds a feature draft keeps, per position, a few of its `hidden_states` (the
draft's `feature_layers`: 0 = the embeddings, i = the output of decoder layer i - 1, L = the last
layer's output after the final norm). Asking the model for `output_hidden_states` records all of
them through transformers' output capturing on every forward, drafting or not: ~0.5 ms of a 7 ms
step on the default target, which a method whose policy drafts nothing paid beside `ar`. `Taps`
hooks only the modules that produce the chosen states, and records only while a forward that
wants them runs.

Taps are made once per model and layer choice, and used only where a forward with them gives
exactly what `output_hidden_states` gives on a test input (`taps_for`); elsewhere (an
architecture whose states are not its layers' outputs) the caller asks for `hidden_states`.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn


class Taps:
    """Forward hooks on the modules whose outputs are `hidden_states[i]` for the chosen i."""

    def __init__(self, sources: dict[int, nn.Module]) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self.recording = False
        self.handles = [module.register_forward_hook(self._hook(index)) for index, module in sources.items()]

    def _hook(self, index: int):
        def keep(module, args, output) -> None:
            if self.recording:
                self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def call(self, run, layers: list[int]) -> tuple[object, torch.Tensor]:
        """`run()` (a forward of the model) with the chosen states recorded: its output and the
        states concatenated [rows, fed, layers x hidden]."""
        self.outputs.clear()
        self.recording = True
        try:
            out = run()
        finally:
            self.recording = False
        states = torch.cat([self.outputs[i] for i in layers], dim=-1)
        self.outputs.clear()
        return out, states


_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def taps_for(model: nn.Module, layers: list[int]) -> Taps | None:
    """The model's taps for `layers` (made and checked on first use), or None where hooks do not
    give its `hidden_states` exactly."""
    made = _MADE.setdefault(model, {})  # not on the model: a copy of it gets taps of its own
    key = tuple(layers)
    if key not in made:
        made[key] = _checked(model, layers)
    return made[key]


def _checked(model: nn.Module, layers: list[int]) -> Taps | None:
    base = getattr(model, "model", None)
    decoder_layers, norm = getattr(base, "layers", None), getattr(base, "norm", None)
    if not isinstance(decoder_layers, nn.ModuleList) or not isinstance(norm, nn.Module):
        return None
    count = len(decoder_layers)
    if any(not 0 <= i <= count for i in layers):
        return None
    sources = {
        i: model.get_input_embeddings() if i == 0 else norm if i == count else decoder_layers[i - 1]
        for i in layers
    }
    taps = Taps(sources)
    ids = torch.arange(3, device=model.get_input_embeddings().weight.device)[None] % model.config.vocab_size
    try:
        with torch.inference_mode():
            want = model(input_ids=ids, output_hidden_states=True).hidden_states
            _, got = taps.call(lambda: model(input_ids=ids), layers)
        agrees = torch.equal(got, torch.cat([want[i] for i in layers], dim=-1))
    except (RuntimeError, KeyError, IndexError, TypeError):
        agrees = False
    if not agrees:
        taps.remove()
        return None
    return taps
