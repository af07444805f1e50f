"""`mtad bench --ray` on a local Ray cluster: the same records as an unsharded run, in the same
order; an actor killed mid-run loses and duplicates nothing; an interrupted driver resumes; bad
input is one line and exit 2 before any model loads."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mtad.bench import ray as ray_bench
from mtad.cli import main
from mtad.cli.common import load_pair_from_args

from .test_cli_bench import bench_args, read_results

TIMINGS = {"wall_time_s", "tokens_per_s", "ms_per_token", "joules", "joules_per_token", "peak_memory_mb",
           "draft_seconds", "batch_wall_time_s", "batch_tokens_per_s"}  # fmt: skip


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    words = ["w3 w5 w7", "w4 w4 w9", "w2 w11", "w6 w8 w10 w12", "w13 w3"]
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(words)))
    return str(path)


def args(pair_dirs, prompts_file, out, *extra):
    return bench_args(pair_dirs, prompts_file, out, "--limit", "5", *extra)


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.fixture(scope="module")
def unsharded(pair_dirs, prompts_file, tmp_path_factory):
    """The reference: the same run without Ray."""
    out = tmp_path_factory.mktemp("unsharded") / "run"
    assert main(args(pair_dirs, prompts_file, out)) == 0
    rows = read_results(out)
    assert len(rows) == 5 * 3 and all(row["status"] == "ok" for row in rows)
    return untimed(rows)


def test_a_sharded_run_writes_the_unsharded_records_in_the_same_order(
    ray_cluster, pair_dirs, prompts_file, unsharded, tmp_path
):
    out = tmp_path / "run"
    assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 0
    assert untimed(read_results(out)) == unsharded
    machine = json.loads((out / "machine.json").read_text())
    assert machine["ray"].startswith("2 actors of 1 CPU each on 1 node(s)")
    assert len(machine["nodes"]) == 2 and all(n["dtype"] and n["node_cpus"] == 2 for n in machine["nodes"])
    assert "| actor 2 | " in (out / "report.md").read_text()


def dying_load(args, need_draft: bool = True, after_calls: int = 60):
    """`load_pair_from_args` for the test below (pickled by reference to the actors): the first
    actor to reach `after_calls` target forwards while the marker beside --out exists takes the
    marker and kills its own process (SIGKILL: no cleanup, as a lost node)."""
    target, draft = load_pair_from_args(args, need_draft)
    marker = str(Path(args.out).parent / "die")
    calls = [0]

    def maybe_die(*_):
        calls[0] += 1
        if calls[0] == after_calls:
            try:
                os.rename(marker, f"{marker}.{os.getpid()}")  # one actor wins the marker
            except FileNotFoundError:
                return
            os.kill(os.getpid(), 9)

    target.model.register_forward_pre_hook(maybe_die)
    return target, draft


def test_an_actor_killed_mid_run_loses_nothing_and_duplicates_nothing(
    ray_cluster, pair_dirs, prompts_file, unsharded, tmp_path, monkeypatch
):
    marker = tmp_path / "die"
    marker.write_text("")
    monkeypatch.setattr("mtad.bench.ray.ATTEMPTS", 2)
    monkeypatch.setattr("mtad.cli.bench.load_pair_from_args", dying_load)
    out = tmp_path / "run"
    assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 0
    assert not marker.exists() and list(tmp_path.glob("die.*")), "no actor died: the test proved nothing"
    assert untimed(read_results(out)) == unsharded


def test_a_replacement_the_cluster_cannot_place_stops_the_run_with_one_line(
    ray_cluster, pair_dirs, prompts_file, unsharded, tmp_path, monkeypatch, capsys
):
    """An actor dies and no node has room for its replacement (here: it asks for 64 CPUs): the
    driver gives up after the placement timeout with one line and exit 2, instead of waiting
    forever; what it wrote stays, and a rerun resumes to the unsharded records."""
    (tmp_path / "die").write_text("")
    monkeypatch.setattr("mtad.cli.bench.load_pair_from_args", dying_load)
    real = ray_bench._Pool._start
    started = []

    def no_room_for_replacements(pool):
        started.append(1)
        if len(started) > 2:  # the two first actors start (untimed); a replacement cannot be placed
            pool.options = pool.options | {"num_cpus": 64}
            monkeypatch.setattr(ray_bench, "PLACEMENT_TIMEOUT_S", 3.0)
        return real(pool)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(ray_bench._Pool, "_start", no_room_for_replacements)
        assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not placed and loaded within 3 s" in err, err
    assert list(tmp_path.glob("die.*")), "no actor died: the test proved nothing"
    assert cpus_free(ray_cluster, 2)  # the driver stopped its actors, the pending one included
    monkeypatch.undo()  # the plain loader and timeout
    assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 0
    assert untimed(read_results(out)) == unsharded


def test_an_interrupted_driver_resumes(
    ray_cluster, pair_dirs, prompts_file, unsharded, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real = ray_bench._Pool.next_done
    calls = []

    def interrupted(pool):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(pool)

    with monkeypatch.context() as patch:
        patch.setattr(ray_bench._Pool, "next_done", interrupted)
        assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 130
    written = untimed(read_results(out))
    assert 0 < len(written) < len(unsharded) and written == unsharded[: len(written)]
    assert cpus_free(ray_cluster, 2)  # the driver stopped its actors
    capsys.readouterr()
    assert main(args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "2")) == 0
    assert f"resuming, {len(written)} of 15 generations done" in capsys.readouterr().err
    assert untimed(read_results(out)) == unsharded


def cpus_free(ray, cpus: float, timeout_s: float = 20.0) -> bool:
    """Whether `cpus` CPUs are free within `timeout_s` (actors release theirs asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _one_line_exit_2(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_ray_input_is_one_line_and_exit_2_before_any_model_loads(
    pair_dirs, prompts_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("mtad.cli.common.load_pair", lambda *_, **__: pytest.fail("a model was loaded"))
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # Ray not installed
        _one_line_exit_2(args(pair_dirs, prompts_file, out, "--ray"), capsys, "pip install 'mtad[ray]'")
    _one_line_exit_2(args(pair_dirs, prompts_file, out, "--ray", "127.0.0.1:1"), capsys, "cannot reach")
    _one_line_exit_2(args(pair_dirs, prompts_file, out, "--ray", "no-port"), capsys, "invalid Ray address")
    _one_line_exit_2(args(pair_dirs, prompts_file, out, "--ray-actors", "2"), capsys, "needs --ray")
    _one_line_exit_2(args(pair_dirs, prompts_file, out, "--ray", "--ray-actors", "0"), capsys, ">= 1")
    assert not Path(out, "results.jsonl").exists()


def test_a_cluster_without_room_is_refused_before_any_model_loads(
    ray_cluster, pair_dirs, prompts_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("mtad.cli.common.load_pair", lambda *_, **__: pytest.fail("a model was loaded"))
    out = tmp_path / "run"
    _one_line_exit_2(
        args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-actors", "3"), capsys, "room for 2 workers"
    )
    _one_line_exit_2(
        args(pair_dirs, prompts_file, out, "--ray", "auto", "--ray-gpus-per-actor", "1"), capsys, "room for 0"
    )
