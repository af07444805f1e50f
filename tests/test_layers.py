"""The package shows its layers, and the import graph keeps them: no cycle, nothing imported from
a higher layer, no file too long to hold in one's head.

Layers, lowest first (a module may import its own layer and the ones below):

    errors, config, locking,    settings as data, the error types, joining a Ray cluster
    cluster
    runtime/                    how forwards run and where tensors live between rounds
    models/                     loading, the default pair, draft kinds
    decoding/                   the core: sampling, acceptance, proposals, methods, the loop, batches
    api, mtad                   the public face
    serve/, bench/, distill/    applications of the library
    cli/, __main__              the command line over all of them

Every import counts, at module level or inside a function, except those under
`if TYPE_CHECKING:` (never run). Read with `ast`: nothing is imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS = (
    ("mtad.errors", "mtad.config", "mtad.locking", "mtad.cluster"),
    ("mtad.runtime",),
    ("mtad.models",),
    ("mtad.decoding",),
    ("mtad.api", "mtad"),
    ("mtad.serve", "mtad.bench", "mtad.distill"),
    ("mtad.cli", "mtad.__main__"),
)
APPLICATIONS = ("mtad.cli", "mtad.serve", "mtad.bench", "mtad.distill")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / "mtad").rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mtad modules `name` imports (a `from package import submodule` names the submodule)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mtad"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            assert not node.level, f"{name}: import absolutely (from mtad.x import y)"
            if base.split(".")[0] != "mtad":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {module for module in found if module != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> int:
    """The layer of the longest prefix of `module` named in LAYERS."""
    best, best_len = None, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def back_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (module, imported)
        for module, imported_set in graph.items()
        for imported in imported_set
        if layer_of(imported) > layer_of(module)
    )


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_from_a_higher_layer():
    assert back_edges(import_graph()) == []


def test_decoding_imports_nothing_from_the_applications():
    graph = import_graph()
    leaks = [
        (module, imported)
        for module, imported_set in graph.items()
        if module.startswith("mtad.decoding")
        for imported in imported_set
        if imported.startswith(APPLICATIONS)
    ]
    assert leaks == []


def test_no_source_file_is_too_long_to_hold_in_ones_head():
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


#: Ray is an optional extra: these modules alone import it (mtad.cluster only inside functions).
RAY_MODULES = {"mtad.cluster", "mtad.bench.ray", "mtad.serve.ray"}


def _imports_ray(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_only_the_ray_modules_import_ray_and_nothing_imports_them_at_module_level():
    assert {name for name, path in modules().items() if _imports_ray(path)} == RAY_MODULES
    for name, path in modules().items():
        top_level = ast.parse(path.read_text()).body
        imported = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
        imported |= {
            f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in RAY_MODULES else node.module
            for node in top_level
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not imported & (RAY_MODULES - {"mtad.cluster"}), name


def test_the_package_and_its_commands_import_without_ray():
    import subprocess
    import sys

    code = (
        "import sys, mtad, mtad.cli, mtad.cli.bench, mtad.cli.serve, mtad.bench.runner, mtad.serve, "
        "mtad.cluster; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
