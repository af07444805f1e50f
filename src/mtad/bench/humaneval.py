"""HumanEval for instruct models: the chat instruction, and the program taken from the answer.

An instruct target answers HumanEval's raw code prompt with prose, so under the chat format the
problem is sent as a user message (`chat_instruction`) and the program is extracted from the
answer (`extract_program`), as instruct harnesses do (bigcode-evaluation-harness's
instruct-humaneval, EvalPlus's sanitizer): code blocks first, the function the problem names must
be defined, only the definitions it needs are kept. The wording of the instruction is ours;
`CHAT_PROMPT_VERSION` names it and is part of a bench run's configuration hash.

Extraction rules, in order (each answer yields one program or one reason, never an exception):
1. Spans: every fenced block tagged python/py/python3 or untagged (a last fence left open by the
   token budget runs to the end of the answer), in order; then the whole answer, for code
   written without fences. Blocks in other languages (```text, ```bash) are skipped.
2. A span whose first code line is indented is a body: it continues the problem's own function
   (prompt + span, cut like a raw completion by `truncate_completion`).
   Otherwise the span's longest run of lines that parses as Python and defines the entry point
   at top level is taken (the whole span when it parses); the prompt's preamble (its imports and
   helper functions, everything before `def <entry_point>`) is put in front, because a model
   that restates the signature `List[int]` rarely restates `from typing import List`.
3. The program keeps imports and the top-level functions, classes and assignments the entry
   point reaches (transitively, by name); the rest - usage examples, prints, asserts,
   `if __name__ == "__main__":` - is dropped, so an answer is not failed by its own demo code.
4. The first span whose entry point has a body (more than a docstring, `pass` or `...`) wins;
   a span that only restates the signature loses to a later one that implements it.
No span giving a program is a recorded failure with its reason ("no code: ...").
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mtad.bench.execution import keep_reachable, truncate_completion

CHAT_PROMPT_VERSION = "mtad-humaneval-chat-v1"
_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, its signature and "
    "any imports it needs included, in one ```python code block."
)
_PYTHON_TAGS = ("", "python", "py", "python3")
# An opening fence at the start of a line, its tag, then everything up to the closing fence or the end.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)


def chat_instruction(prompt: str) -> str:
    """The user message of a HumanEval problem under the chat format: instruction, then the code."""
    return f"{_INSTRUCTION}\n\n```python\n{prompt.strip()}\n```"


@dataclass(frozen=True)
class Extraction:
    """The program to run (None when there is none) and how it was found, or why not."""

    program: str | None
    source: str  # "fenced block 2", "unfenced answer", or "" when nothing was found
    reason: str = ""


def extract_program(answer: str, problem: Mapping[str, str]) -> Extraction:
    """The solution program in a chat answer to `problem` (keys prompt, entry_point); see the module."""
    entry = problem["entry_point"]
    if not answer.strip():
        return Extraction(None, "", "no code: the answer is empty")
    spans = [
        (f"fenced block {i}", body)
        for i, (tag, body) in enumerate(_FENCE.findall(answer), start=1)
        if tag.lower() in _PYTHON_TAGS
    ]
    spans.append(("unfenced answer", answer))
    empty: Extraction | None = None  # the first span that defines the entry point without a body
    for source, span in spans:
        program = _program(span, problem)
        if program is None:
            continue
        if _has_body(program, entry):
            return Extraction(program, source)
        empty = empty or Extraction(
            None, source, f"no code: `{entry}` in the {source} has no body (the signature only)"
        )
    return empty or Extraction(None, "", f"no code: no parseable Python in the answer defines `{entry}`")


def _program(span: str, problem: Mapping[str, str]) -> str | None:
    """The sanitized program of one span, or None when it does not define the entry point."""
    prompt, entry = problem["prompt"], problem["entry_point"]
    lines = [line for line in span.split("\n") if line.strip()]
    if not lines:
        return None
    if lines[0][0] in " \t":  # a body continuing the prompt's function
        code = prompt + truncate_completion(span, prompt)
    else:
        found = _longest_defining_run(span, entry)
        if found is None:
            return None
        code = _preamble(prompt, entry) + found
    return _sanitize(code, entry)


def _preamble(prompt: str, entry: str) -> str:
    """What the prompt holds before the entry point's `def`: its imports and helper functions."""
    match = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE)
    preamble = prompt[: match.start()] if match else ""
    return preamble.rstrip() + "\n\n\n" if preamble.strip() else ""


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes in the source
        return None


def _defines(tree: ast.Module, entry: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry for n in tree.body)


def _longest_defining_run(span: str, entry: str) -> str | None:
    """The longest run of whole lines that parses and defines `entry` at top level (EvalPlus-style).

    Runs start at an unindented line; for each start the longest parseable end is taken, so prose
    before and after the code (and a line cut off by the token budget) falls away. Quadratic in the
    number of lines at worst, which for answers of a few hundred tokens is a few thousand parses.
    """
    lines = span.split("\n")
    tree = _parse(span)
    if tree is not None and _defines(tree, entry):
        return span.strip("\n") + "\n"
    best: tuple[int, str] | None = None
    for start, first in enumerate(lines):
        if not first.strip() or first[0] in " \t" or f"def {entry}" not in "\n".join(lines[start:]):
            continue
        for end in range(len(lines), start, -1):
            code = "\n".join(lines[start:end])
            tree = _parse(code)
            if tree is not None and _defines(tree, entry):
                size = sum(1 for line in lines[start:end] if line.strip())
                if best is None or size > best[0]:
                    best = (size, code.strip("\n") + "\n")
                break
    return None if best is None else best[1]


def _sanitize(code: str, entry: str) -> str | None:
    """Imports plus the definitions `entry` reaches; None if the code does not parse or define it."""
    tree = _parse(code)
    if tree is None or not _defines(tree, entry):
        return None
    lines = code.split("\n")
    names: list[str | None] = []
    uses: list[set[str]] = []
    chunks: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            name = None  # always kept: the problem's typing imports, the model's own imports
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not all(isinstance(t, ast.Name) for t in targets):
                continue
            name = targets[0].id  # constants such as VOWELS = "aeiou"
        else:
            continue  # top-level statements: examples, prints, asserts, __main__ blocks
        start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        names.append(name)
        uses.append({n.id for n in ast.walk(node) if isinstance(n, ast.Name)})
        chunks.append("\n".join(lines[start - 1 : node.end_lineno]))
    kept = keep_reachable(names, uses, {entry})
    # two blank lines between top-level blocks, as the prompts have them
    return "\n\n\n".join(chunk for chunk, keep in zip(chunks, kept, strict=True) if keep).rstrip() + "\n"


def _has_body(program: str, entry: str) -> bool:
    """Whether the last top-level `def entry` (the one Python binds) does more than document itself."""
    tree = _parse(program)
    defs = [
        n
        for n in (tree.body if tree else [])
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry
    ]
    if not defs:
        return False
    for statement in defs[-1].body:
        if isinstance(statement, ast.Pass):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            if isinstance(statement.value.value, str) or statement.value.value is Ellipsis:
                continue
        return True
    return False
