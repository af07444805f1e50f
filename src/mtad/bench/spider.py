"""Spider text-to-SQL: load a user's Spider copy, build prompts, score execution accuracy.

Layout expected under `--data-path` (the official release): `dev.json` (a list of objects with
`db_id`, `question`, `query`) and `database/<db_id>/<db_id>.sqlite`.

Execution accuracy: gold and predicted SQL both run on the database, opened read-only, with an
authorizer that allows reads only and a wall-clock timeout; the prediction is correct when both
return the same multiset of rows. Row order is ignored (even under ORDER BY) and column order is
not; 1 and 1.0 compare equal, as in Python.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mtad.errors import DatasetError


@dataclass(frozen=True)
class SpiderExample:
    id: str
    db_id: str
    question: str
    gold_sql: str
    db_path: Path


@dataclass(frozen=True)
class SqlMatch:
    correct: bool
    reason: str  # empty when correct


class SqlTimeout(Exception):
    pass


def database_path(data_path: Path, db_id: str) -> Path:
    return data_path / "database" / db_id / f"{db_id}.sqlite"


def load_spider(data_path: Path, split_file: str = "dev.json") -> list[SpiderExample]:
    """Read the split's questions; every database they name must exist. Raises DatasetError."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise DatasetError(f"Spider data path {data_path} is not a directory")
    questions = data_path / split_file
    if not questions.is_file():
        raise DatasetError(f"Spider questions file {questions} does not exist")
    databases = data_path / "database"
    if not databases.is_dir() or not any(databases.glob("*/*.sqlite")):
        raise DatasetError(f"{data_path} has no databases (expected database/<db_id>/<db_id>.sqlite)")
    try:
        items = json.loads(questions.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{questions} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise DatasetError(f"{questions} must hold a JSON list of questions")
    examples = []
    for i, item in enumerate(items):
        fields = ("db_id", "question", "query")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in fields):
            raise DatasetError(f"{questions} item {i} lacks a string db_id, question or query")
        db_path = database_path(data_path, item["db_id"])
        if not db_path.is_file():
            raise DatasetError(
                f"{questions} item {i} names database {item['db_id']!r}, but {db_path} is missing"
            )
        examples.append(SpiderExample(f"spider/{i}", item["db_id"], item["question"], item["query"], db_path))
    return examples


def _read_only_authorizer(action: int, *args: object) -> int:
    # Reads, the SELECT itself, functions and recursive CTEs; no writes, ATTACH or PRAGMA.
    allowed = (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE)
    return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY


def _connect(db_path: Path) -> sqlite3.Connection:
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    # Spider databases hold some non-UTF-8 text; decode it leniently rather than fail the query.
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="replace")
    return conn


def read_schema(db_path: Path) -> str:
    """The CREATE statements of the database's tables, as sqlite stored them."""
    conn = _connect(db_path)
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    return "\n".join(row[0].strip() + ";" for row in rows)


def text_to_sql_prompt(schema: str, question: str) -> str:
    return (
        "Given the following SQLite database schema, write one SQL query that answers the question.\n\n"
        f"{schema}\n\n"
        f"Question: {question}\n"
        "SQL:"
    )


def execute_sql(db_path: Path, sql: str, timeout_s: float = 10.0) -> list[tuple]:
    """Run one read-only statement and return its rows; raises sqlite3.Error or SqlTimeout."""
    deadline = time.monotonic() + timeout_s
    conn = _connect(db_path)
    timed_out = False

    def past_deadline() -> int:
        nonlocal timed_out
        timed_out = time.monotonic() > deadline
        return int(timed_out)  # non-zero aborts the statement

    try:
        conn.set_authorizer(_read_only_authorizer)
        # Checked every 10k virtual-machine instructions: cheap, and fine-grained enough.
        conn.set_progress_handler(past_deadline, 10_000)
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if timed_out:
                raise SqlTimeout(f"query ran longer than {timeout_s:g} s") from exc
            raise
    finally:
        conn.close()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def execution_match(db_path: Path, gold_sql: str, predicted_sql: str, timeout_s: float = 10.0) -> SqlMatch:
    """Whether the predicted SQL returns the gold SQL's rows (as a multiset) on the database."""
    try:
        gold = execute_sql(db_path, gold_sql, timeout_s)
    except (sqlite3.Error, SqlTimeout) as exc:
        return SqlMatch(False, f"gold SQL failed ({_describe(exc)})")
    if not predicted_sql.strip():
        return SqlMatch(False, "empty prediction")
    try:
        predicted = execute_sql(db_path, predicted_sql, timeout_s)
    except SqlTimeout as exc:
        return SqlMatch(False, f"predicted SQL timed out: {exc}")
    except (sqlite3.Error, ValueError, OverflowError) as exc:
        return SqlMatch(False, f"predicted SQL failed: {_describe(exc)}")
    if Counter(predicted) == Counter(gold):
        return SqlMatch(True, "")
    return SqlMatch(False, f"different rows ({len(predicted)} predicted vs {len(gold)} gold)")


_FENCE = re.compile(r"```(?:sql|sqlite)?\s*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The first SQL statement of a model's answer: inside a code fence if any, up to the first ';'
    or blank line (after which models write explanations), whitespace collapsed."""
    match = _FENCE.search(text)
    body = (match.group(1) if match else text).strip()
    statement = re.split(r";|\n\s*\n", body, maxsplit=1)[0]
    return " ".join(statement.split())
