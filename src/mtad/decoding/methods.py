"""The registry of decoding methods: one `Method` record each, from which every list of methods,
every check, the CLI's help, the server's validation and the bench's sweep rules derive.

A method is a *shape* (how a round is drafted: nothing, a chain, beams, a beam tree, a branching
tree, or the target's own beams), a *proposer* for that shape, an *acceptance rule* (a pure
function of `mtad.decoding.acceptance` returning a `Verdict`, given the round's `Round`),
whether it is lossless, and which decoding settings it reads. Adding one is one record (plus,
if new, one rule and one proposer):

    import dataclasses, mtad
    mine = dataclasses.replace(mtad.methods()["sd"], name="my-sd", description="sd, renamed")
    mtad.register_method(mine)          # now usable in mtad.generate, the CLI, the server, the bench

A package can also offer methods through the entry-point group `mtad.methods` (each entry point
a `Method`, or a callable returning one or a list of them); they are loaded on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Protocol

import torch

from mtad.config import AUTO, AUTO_TREE_NODES, SETTINGS, SamplingConfig, shown
from mtad.decoding import acceptance
from mtad.decoding.drafts import proposers as model_free
from mtad.decoding.proposals import (
    Proposal,
    Round,
    TreeProposal,
    beam_sample,
    beam_tree,
    branching_tree,
    chain_sample,
)
from mtad.decoding.shapes import SHAPES
from mtad.errors import ConfigError
from mtad.runtime.cache import CachedModel


class MethodSettings(Protocol):
    """The settings a method's parts are built from (`mtad.decoding.speculation.SpeculationConfig`
    has them all; the registry needs no more, so it sits below the settings that ask it)."""

    gamma: int | str
    beam_width: int
    threshold: float
    with_replacement: bool
    tree: tuple[int, ...] | str
    reference: str


#: (drafter, committed sequence [1, len], depth n, warp, generator) -> the round's draft (a `Round`).
Proposer = Callable[[CachedModel, torch.Tensor, int, SamplingConfig, torch.Generator], Round]
#: (p, proposal, generator) -> the Verdict (accepted nodes and the next token; chains' nodes are 0..n-1).
Acceptor = Callable[[torch.Tensor, Proposal | TreeProposal, torch.Generator], acceptance.Verdict]

ENTRY_POINT_GROUP = "mtad.methods"


@dataclass(frozen=True)
class Method:
    """One decoding method. `proposer(spec)` / `rule(spec)` build its parts for given settings
    (`proposer` None: nothing drafted); `settings` are the decoding settings it reads beyond the
    warp (temperature, top-k, top-p), so a sweep or a check knows what changes it."""

    name: str
    description: str
    shape: str
    proposer: Callable[[MethodSettings], Proposer | None]
    rule: Callable[[MethodSettings], Acceptor]
    lossless: bool
    settings: frozenset[str] = frozenset()
    #: Warp settings the method fixes whatever is asked, e.g. greedy's (("temperature", 0.0),).
    fixed_sampling: tuple[tuple[str, float], ...] = ()
    #: Its proposer over a model-free draft (`mtad.decoding.drafts`), for given settings; None:
    #: the method drafts only with a model.
    model_free_proposer: Callable[[MethodSettings], model_free.TokenProposer] | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or not self.name
            or "," in self.name
            or self.name != self.name.strip()
        ):
            raise ConfigError(
                f"a method name must be a non-empty word without commas, got {self.name!r}", "method"
            )
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown method shape {self.shape!r}; allowed: {', '.join(SHAPES)}", "method")
        undeclared = sorted((self.settings | {name for name, _ in self.fixed_sampling}) - SETTINGS.keys())
        if undeclared:
            raise ConfigError(
                f"method {self.name!r} reads undeclared setting(s) {', '.join(undeclared)}; allowed: "
                f"{', '.join(SETTINGS)}",
                "method",
            )

    @property
    def needs_draft(self) -> bool:
        return SHAPES[self.shape].drafts


# ---- acceptance rules, given a round's proposal ---------------------------------------------------


def chain_rule(rule: Callable) -> Acceptor:
    """A chain rule of `mtad.decoding.acceptance` (p, q, tokens, generator) -> Verdict, as an Acceptor."""

    def accept(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> acceptance.Verdict:
        return rule(p, proposal.probs, proposal.tokens, generator)

    return accept


#: Rounds that draft nothing (ar, greedy, and any round whose budget or gamma "auto" allows no draft).
TARGET_ONLY = chain_rule(acceptance.accept_none)


def _mmtad_rule(spec: MethodSettings) -> Acceptor:
    def accept(p: torch.Tensor, proposal: TreeProposal, generator: torch.Generator) -> acceptance.Verdict:
        tree = proposal.tree
        reference = acceptance.reference_log_joints(
            proposal.log_joint, tree.depths, tree.parents, proposal.best_leaf, spec.reference
        )
        return acceptance.mmtad_tree(
            p[0], proposal.tokens, tree.parents, tree.depths, reference, generator, spec.threshold
        )

    return accept


def _specinfer_rule(spec: MethodSettings) -> Acceptor:
    if spec.tree == AUTO:  # children chosen best first, not drawn: one-hot proposals
        return _ordered_rule

    def accept(p: torch.Tensor, proposal: TreeProposal, generator: torch.Generator) -> acceptance.Verdict:
        return acceptance.specinfer_tree(
            p[0], proposal.probs, proposal.tokens, proposal.tree.parents, generator, spec.with_replacement
        )

    return accept


def _ordered_rule(p: torch.Tensor, proposal: TreeProposal, generator: torch.Generator) -> acceptance.Verdict:
    return acceptance.ordered_candidates_tree(p[0], proposal.tokens, proposal.tree.parents, generator)


# ---- proposers, built for given settings ----------------------------------------------------------


def _beams(spec: MethodSettings) -> Proposer:
    return partial(beam_sample, width=spec.beam_width, with_replacement=spec.with_replacement)


def _beam_tree(spec: MethodSettings) -> Proposer:
    return partial(beam_tree, width=spec.beam_width, with_replacement=spec.with_replacement)


def _branching(spec: MethodSettings) -> Proposer:
    def propose(drafter, sequence, n, sampling, generator):  # depth n <= len(tree): budget or gamma auto
        return branching_tree(drafter, sequence, spec.tree[:n], sampling, generator,
                              with_replacement=spec.with_replacement)  # fmt: skip

    return propose


def _none(spec: MethodSettings) -> None:
    return None


def _free_beams(spec: MethodSettings) -> model_free.TokenProposer:
    return partial(model_free.beams, width=spec.beam_width, with_replacement=spec.with_replacement)


#: Tree "auto": sized by the loop's `mtad.decoding.adaptive.NodePolicy` (specinfer and mmtad).
_COST_SIZED = partial(model_free.cost_sized_tree, budget=AUTO_TREE_NODES)


def _free_beam_tree(spec: MethodSettings) -> model_free.TokenProposer:
    if spec.tree == AUTO:  # verified by the joint test over the tree
        return _COST_SIZED
    return partial(model_free.beam_tree, width=spec.beam_width, with_replacement=spec.with_replacement)


def _free_branching(spec: MethodSettings) -> model_free.TokenProposer:
    if spec.tree == AUTO:  # verified as chosen candidates (`_ordered_rule`)
        return _COST_SIZED

    def propose(drafter, sequence, n, sampling, generator):
        return model_free.branching_tree(drafter, sequence, spec.tree[:n], sampling, generator,
                                         with_replacement=spec.with_replacement)  # fmt: skip

    return propose


def _always(acceptor: Acceptor) -> Callable[[MethodSettings], Acceptor]:
    return lambda spec: acceptor


BEAMS = frozenset({"gamma", "beam_width", "with_replacement"})
BUILT_IN = (
    Method("ar", "target-only sampling with the warp (temperature, top-k, top-p)", "target", _none,
           _always(TARGET_ONLY), lossless=True),
    Method("greedy", "target-only argmax", "target", _none, _always(TARGET_ONLY), lossless=True,
           fixed_sampling=(("temperature", 0.0),)),
    Method("sd", "speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft gamma tokens, accept "
           "each with min(1, p/q), resample the residual, bonus token", "chain", lambda spec: chain_sample,
           _always(chain_rule(acceptance.speculative)), lossless=True, settings=frozenset({"gamma"}),
           model_free_proposer=lambda spec: model_free.chain),
    Method("mtad", "draft beam-samples gamma tokens with W beams; the target accepts the longest prefix "
           "whose joint likelihood ratio p/q exceeds tau; one target token after it (mode-seeking joint "
           "decoding, so not lossless by design)", "beams", _beams,
           lambda spec: chain_rule(partial(acceptance.mtad_joint, threshold=spec.threshold)),
           lossless=False, settings=BEAMS | {"threshold"}, model_free_proposer=_free_beams),
    Method("mmtad", "multi-candidate MTAD: every beam of every draft step forms a tree, verified in one "
           "target pass with tree attention; the deepest node passing the joint-ratio test wins (--reference "
           "best/max/own); with a model-free draft, --tree auto verifies a tree sized by measured costs",
           "beam_tree", _beam_tree, _mmtad_rule, lossless=False,
           settings=BEAMS | {"threshold", "reference", "tree"}, model_free_proposer=_free_beam_tree),
    Method("specinfer", "SpecInfer-style token tree from a branching config (--tree 4,2,2), multi-candidate "
           "speculative sampling with or without replacement; with a model-free draft, --tree auto grows the "
           "most probable paths and verifies as many as the measured costs pay for", "branching_tree",
           _branching, _specinfer_rule, lossless=True, settings=frozenset({"tree", "with_replacement"}),
           model_free_proposer=_free_branching),
    Method("mtjd", "target-only beam sampling of gamma-token blocks: the quality reference, slow by design",
           "self_beams", _beams, _always(chain_rule(acceptance.accept_all)), lossless=False, settings=BEAMS),
)  # fmt: skip
#: The built-in methods' names (`methods()` also lists registered ones).
METHODS = tuple(method.name for method in BUILT_IN)

_REGISTRY: dict[str, Method] = {method.name: method for method in BUILT_IN}
_plugins_loaded = False


def register_method(method: Method) -> Method:
    """Add `method` to the registry (a built-in name cannot be replaced); returns it."""
    if not isinstance(method, Method):
        raise ConfigError(f"register_method takes an mtad.Method, got {type(method).__name__}", "method")
    if method.name in METHODS:
        raise ConfigError(
            f"{method.name!r} is a built-in method; register yours under another name", "method"
        )
    _REGISTRY[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every method by name: the built-ins, then registered ones and the `mtad.methods` plugins."""
    _load_plugins()
    return dict(_REGISTRY)


def with_model_free_draft() -> list[str]:
    """The methods that can draft with a model-free draft (`mtad.decoding.drafts`)."""
    return [name for name, method in methods().items() if method.model_free_proposer is not None]


def without_draft() -> list[str]:
    """The methods that run on the target alone (no draft model), plugins included."""
    return [name for name, method in methods().items() if not method.needs_draft]


def get_method(name: object) -> Method:
    """The method called `name`, or a `ConfigError` listing the allowed names."""
    registry = methods()
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"unknown method {shown(name)}; allowed: {', '.join(registry)}", "method")
    return registry[name]


def markdown_table(listed: tuple[Method, ...] = BUILT_IN) -> str:
    """The README's method table, made from the registry's built-ins (a test keeps them equal)."""
    lines = ["| method | what it does | lossless | draft |", "|---|---|---|---|"]
    for method in listed:
        own = SHAPES[method.shape].self_drafted
        draft = "the target's own" if own else "yes" if method.needs_draft else "no"
        lossless = "yes" if method.lossless else "no"
        lines.append(f"| `{method.name}` | {method.description} | {lossless} | {draft} |")
    return "\n".join(lines)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        offered = entry_point.load()
        offered = offered() if callable(offered) and not isinstance(offered, Method) else offered
        for method in offered if isinstance(offered, (list, tuple)) else [offered]:
            register_method(method)
