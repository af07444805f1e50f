"""Draft shapes are objects (`mtad.decoding.shapes`): what a round drafts, verifies and costs is
answered by its shape, and no code outside that module compares shape names."""

from __future__ import annotations

import ast

import pytest

import mtad
from mtad.decoding.shapes import SHAPES
from mtad.decoding.speculation import SpeculationConfig
from test_layers import modules


def test_no_module_but_shapes_compares_shape_names():
    found = []
    for name, path in modules().items():
        if name == "mtad.decoding.shapes":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
                found += [(name, node.lineno) for value in constants if value in SHAPES]
    assert found == []


@pytest.mark.parametrize("method", mtad.METHODS)
def test_a_methods_shape_answers_for_it(method):
    record = mtad.methods()[method]
    shape = SpeculationConfig(method).shape
    assert shape is SHAPES[record.shape]
    assert record.needs_draft == shape.drafts
    assert (method == "mtjd") == shape.self_drafted


@pytest.mark.parametrize(
    ("settings", "depth", "nodes"),
    [
        ({"method": "ar"}, 4, 0),
        ({"method": "sd", "gamma": 3}, 3, 3),
        ({"method": "mtad", "gamma": "auto"}, 8, 8),
        ({"method": "mmtad", "gamma": 3, "beam_width": 4}, 3, 12),
        ({"method": "specinfer", "tree": (4, 2, 2)}, 3, 4 + 8 + 16),
        ({"method": "mtjd", "gamma": "auto"}, 4, 0),
    ],
)
def test_depth_and_verified_nodes_by_shape(settings, depth, nodes):
    spec = SpeculationConfig(**settings)
    assert (spec.depth, spec.verified_nodes()) == (depth, nodes)
