import json
import sqlite3
from pathlib import Path

import pytest

from mtad.bench.spider import (
    execute_sql,
    execution_match,
    extract_sql,
    load_spider,
    read_schema,
    text_to_sql_prompt,
)
from mtad.errors import DatasetError, MtadError

QUESTIONS = [
    {"db_id": "concert", "question": "How many singers are there?", "query": "SELECT count(*) FROM singer"},
    {
        "db_id": "concert",
        "question": "Names of singers older than 30?",
        "query": "SELECT name FROM singer WHERE age > 30",
    },
]


def make_spider(root: Path, questions=QUESTIONS) -> Path:
    """A Spider-shaped directory: dev.json and database/<db_id>/<db_id>.sqlite."""
    db_dir = root / "database" / "concert"
    db_dir.mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "concert.sqlite")
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
    conn.executemany(
        "INSERT INTO singer VALUES (?, ?, ?)",
        [(1, "Ann", 25), (2, "Bob", 35), (3, "Cid", 41), (4, "Bob", 52)],
    )
    conn.commit()
    conn.close()
    (root / "dev.json").write_text(json.dumps(questions))
    return root


@pytest.fixture
def spider(tmp_path) -> Path:
    return make_spider(tmp_path / "spider")


@pytest.fixture
def db(spider) -> Path:
    return spider / "database" / "concert" / "concert.sqlite"


def test_loader_reads_questions_and_databases(spider, db):
    examples = load_spider(spider)
    assert [e.id for e in examples] == ["spider/0", "spider/1"]
    assert examples[1].gold_sql == QUESTIONS[1]["query"] and examples[1].db_path == db


def test_correct_prediction_matches_even_when_written_differently(db):
    assert execution_match(db, "SELECT count(*) FROM singer", "select COUNT(singer_id) from singer").correct


def test_row_order_is_ignored_but_duplicates_are_not(db):
    gold = "SELECT name FROM singer WHERE age > 30"
    assert execution_match(db, gold, "SELECT name FROM singer WHERE age > 30 ORDER BY name DESC").correct
    distinct = execution_match(db, gold, "SELECT DISTINCT name FROM singer WHERE age > 30")
    assert not distinct.correct and "2 predicted vs 3 gold" in distinct.reason


def test_wrong_prediction_is_wrong(db):
    result = execution_match(db, "SELECT count(*) FROM singer", "SELECT count(*) FROM singer WHERE age > 30")
    assert not result.correct and "different rows" in result.reason


@pytest.mark.parametrize(
    ("predicted", "reason"),
    [
        ("SELECT nme FROM singer", "no such column"),
        ("SELEC name FROM singer", "syntax error"),
        ("", "empty prediction"),
        ("SELECT 1; SELECT 2", "one statement"),
    ],
)
def test_erroring_prediction_is_wrong_with_its_reason(db, predicted, reason):
    result = execution_match(db, "SELECT count(*) FROM singer", predicted)
    assert not result.correct and reason in result.reason


def test_database_cannot_be_changed(db):
    for sql in (
        "DELETE FROM singer",
        "DROP TABLE singer",
        "ATTACH DATABASE 'x.db' AS x",
        "PRAGMA user_version = 3",
    ):
        with pytest.raises(sqlite3.Error):
            execute_sql(db, sql)
    assert execute_sql(db, "SELECT count(*) FROM singer") == [(4,)]


def test_runaway_query_times_out(db):
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    result = execution_match(db, "SELECT 1", endless, timeout_s=0.3)
    assert not result.correct and "timed out" in result.reason


def test_gold_failure_is_reported_as_such(db):
    result = execution_match(db, "SELECT missing FROM singer", "SELECT 1")
    assert not result.correct and result.reason.startswith("gold SQL failed")


def test_schema_and_prompt(db):
    schema = read_schema(db)
    assert schema.startswith("CREATE TABLE singer") and schema.endswith(";")
    prompt = text_to_sql_prompt(schema, "How many singers are there?")
    assert schema in prompt and prompt.endswith("Question: How many singers are there?\nSQL:")


@pytest.mark.parametrize(
    ("answer", "sql"),
    [
        ("SELECT name FROM singer;", "SELECT name FROM singer"),
        ("Here:\n```sql\nSELECT name\nFROM singer;\n```\nDone.", "SELECT name FROM singer"),
        (" SELECT 1\n\nExplanation: ...; more", "SELECT 1"),
    ],
)
def test_extract_sql(answer, sql):
    assert extract_sql(answer) == sql


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_spider(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dev.json").write_text("[]")
    with pytest.raises(DatasetError, match="no databases"):
        load_spider(empty)
    spider = make_spider(tmp_path / "s")
    with pytest.raises(DatasetError, match="does not exist"):
        load_spider(spider, "train.json")
    (spider / "dev.json").write_text("[{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_spider(spider)
    (spider / "dev.json").write_text(json.dumps([{"db_id": "concert", "question": "q"}]))
    with pytest.raises(DatasetError, match="lacks"):
        load_spider(spider)
    (spider / "dev.json").write_text(json.dumps([{"db_id": "nope", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(MtadError, match="names database 'nope'.*is missing"):
        load_spider(spider)
