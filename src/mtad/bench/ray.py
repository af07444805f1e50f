"""`mtad bench --ray`: a run's units sharded over Ray actors; this process alone writes the results.

A unit (`mtad.bench.plan.Unit`) is one prompt (a group with --batch-size) with every variant and
repeat of it, in the plan's interleaved order: speed ratios are always measured back to back on
one actor, never across machines. Each actor loads the pair once (`load`, a picklable callable
returning (target, draft)) and runs one unit at a time; its rows come back to the driver, which
buffers units that finish early and writes results.jsonl in the order an unsharded run writes it,
so resume, the lock, the report and the plots work as they do without Ray. A unit in progress on
an actor that dies is run again, whole, on a fresh actor (at most `ATTEMPTS` times; then its rows
are written as failed, and the run goes on); the writer skips any sample already written, so
nothing is lost and nothing is written twice. Stopping the driver (Ctrl-C) loses only the units
not yet written: a rerun resumes.

Every actor reserves `Workers.cpus` CPUs and runs torch on as many threads. machine.json holds
the first actor's description at the top level (the report's Machine table) and every actor's
under "nodes". With several actors on one node, a RAPL energy reading covers the whole package
(its neighbours included), and gamma "auto" measures its forward costs in each actor: only a
fixed gamma gives a sharded run the tokens of an unsharded one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from mtad.bench.datasets import PromptRecord
from mtad.bench.plan import BenchConfig, Unit, sample_seed
from mtad.bench.rundir import MACHINE_FILE, plan_rows, read_plan, results_writer
from mtad.bench.runner import failed_row, open_context, unit_rows
from mtad.cluster import Workers, node_of_this_process
from mtad.errors import ClusterError, MtadError
from mtad.models import LoadedModel

Loader = Callable[[], tuple[LoadedModel, LoadedModel | None]]
#: Tries of one unit on actors that die under it before its rows are written as failed.
ATTEMPTS = 3
#: Seconds an actor may take to be placed on a node and load the pair; past it, it is not coming.
PLACEMENT_TIMEOUT_S = 600.0


class BenchActor:
    """One Ray actor: loads the pair once, then runs units (`ray.remote` makes it an actor)."""

    def __init__(self, config: BenchConfig, load: Loader, threads: int, allow_unsandboxed: bool) -> None:
        torch.set_num_threads(threads)
        sandbox = None
        if config.dataset == "humaneval":  # model-written code runs here: this node's sandbox, or opt-in
            from mtad.bench.execution import allow_unsandboxed as allow
            from mtad.bench.execution import check_isolation

            if allow_unsandboxed:
                allow()
            sandbox = check_isolation(allow_unsandboxed).describe()
        target, draft = load()
        self.context = open_context(config, target, draft)
        self.context.machine |= node_of_this_process(ray) | {"torch_threads": str(threads)}
        if sandbox is not None:
            self.context.machine["code_execution"] = sandbox

    def machine(self) -> dict[str, Any]:
        return self.context.machine

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        return [row for rows in unit_rows(self.context, unit) for row in rows]


class _Pool:
    """`count` actors, each with at most one unit in flight; a dead actor is replaced."""

    def __init__(self, actor_args: tuple, workers: Workers, count: int) -> None:
        self.workers = workers
        self.options = {"num_cpus": workers.cpus, "num_gpus": workers.gpus, "max_restarts": 0}
        self.args = actor_args  # BenchActor's
        self.idle = [self._start() for _ in range(count)]
        self.running: dict[Any, tuple[Any, Unit]] = {}  # result ref -> (actor, unit)

    def _start(self) -> Any:
        return ray.remote(BenchActor).options(**self.options).remote(*self.args)

    def machines(self) -> list[dict[str, Any]]:
        """Every actor's machine description; waits for the pair to load everywhere."""
        self._wait_ready(self.idle)
        return ray.get([actor.machine.remote() for actor in self.idle])

    def _wait_ready(self, actors: list) -> None:
        """Until `actors` are placed and have loaded the pair; a ClusterError if one fails or
        cannot be placed within PLACEMENT_TIMEOUT_S (a cluster that lost the room for it)."""
        refs = [actor.__ray_ready__.remote() for actor in actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_TIMEOUT_S)
        try:
            ray.get(ready)
        except ray.exceptions.RayActorError as error:
            raise ClusterError(f"a Ray actor could not start: {_cause(error)}") from None
        if pending:
            free = ray.available_resources().get("CPU", 0)
            raise ClusterError(
                f"{len(pending)} Ray actor(s) of {self.workers.describe()} were not placed and loaded "
                f"within {PLACEMENT_TIMEOUT_S:.0f} s (the cluster has {free:g} CPUs free now); the "
                "written results stay, rerun to resume once the cluster has room"
            )

    def submit(self, unit: Unit) -> None:
        actor = self.idle.pop()
        self.running[actor.run.remote(unit)] = (actor, unit)

    def next_done(self) -> tuple[Unit, list[dict] | None]:
        """The next finished unit and its rows; None for rows when its actor died (replaced)."""
        [ref], _ = ray.wait(list(self.running), num_returns=1)
        actor, unit = self.running.pop(ref)
        try:
            rows = ray.get(ref)
        except ray.exceptions.RayActorError:
            ray.kill(actor, no_restart=True)
            replacement = self._start()
            self.idle.append(replacement)  # closed with the pool even if it never comes up
            self._wait_ready([replacement])
            return unit, None
        self.idle.append(actor)
        return unit, rows

    def close(self) -> None:
        for actor in self.idle + [actor for actor, _ in self.running.values()]:
            ray.kill(actor, no_restart=True)


def run_bench_on_ray(
    config: BenchConfig,
    records: Sequence[PromptRecord],
    load: Loader,
    out: Path,
    workers: Workers,
    count: int,
    *,
    progress: bool = True,
    allow_unsandboxed: bool = False,
) -> list[dict]:
    """`mtad.bench.runner.run_bench` over `count` actors of the connected cluster; returns all the
    plan's rows, in results.jsonl's order (the same as an unsharded run's). `allow_unsandboxed`:
    HumanEval code may run without a sandbox on nodes that have none (`--allow-unsandboxed-code`)."""
    plan, done = read_plan(config, records, out)
    if not plan.units:
        return plan_rows(plan, out)
    start = time.perf_counter()
    pool = _Pool((config, load, workers.cpus, allow_unsandboxed), workers, min(count, len(plan.units)))
    try:
        machines = pool.machines()
        _write_machine(out, machines, workers, time.perf_counter() - start)
        waiting = list(plan.units)  # in plan order; a unit whose actor died goes back to the front
        attempts = {unit.index: 0 for unit in plan.units}
        finished: dict[int, list[dict]] = {}  # unit index -> rows, until the units before it are written
        order = [unit.index for unit in plan.units]
        with results_writer(out, plan, done, progress) as writer:
            while waiting or pool.running:
                while waiting and pool.idle:
                    pool.submit(waiting.pop(0))
                unit, rows = pool.next_done()
                attempts[unit.index] += 1
                if rows is None and attempts[unit.index] < ATTEMPTS:
                    waiting.insert(0, unit)
                    continue
                finished[unit.index] = rows if rows is not None else _lost(config, unit)
                while order and order[0] in finished:
                    writer.write(finished.pop(order.pop(0)))
    finally:
        pool.close()
    return plan_rows(plan, out)


def _lost(config: BenchConfig, unit: Unit) -> list[dict]:
    """The rows of a unit whose actor died `ATTEMPTS` times: failed, with the reason."""
    error = ClusterError(f"the Ray actor running this prompt died {ATTEMPTS} times")
    heads = [
        {
            "prompt_id": record.id,
            "dataset": record.dataset,
            "variant": variant.label,
            "method": variant.method,
            "repeat": repeat,
            "seed": sample_seed(config.seed, record.id, repeat),
            "params": dict(variant.params),
        }  # fmt: skip
        for group, repeat, variant in unit.items
        for record in group
    ]
    return [failed_row(head, error) for head in heads]


def _write_machine(out: Path, machines: list[dict], workers: Workers, startup_s: float) -> None:
    nodes = [
        {key: m.get(key) for key in ("node_ip", "node_cpus", "node_gpus", "cpu", "cpu_flags", "gpu")}
        | {key: m.get(key) for key in ("device", "dtype", "torch_threads", "code_execution") if key in m}
        for m in machines
    ]
    machine = dict(machines[0]) | {
        "ray": f"{len(machines)} actors of {workers.describe()} on {len({n['node_ip'] for n in nodes})} "
        f"node(s); actors started and loaded the pair in {startup_s:.1f} s",
        "nodes": nodes,
    }
    (out / MACHINE_FILE).write_text(json.dumps(machine, indent=2) + "\n")


def _cause(error: Exception) -> str:
    """The first line of what killed an actor (its constructor's exception where there is one)."""
    cause = getattr(error, "cause", None) or getattr(error, "creation_task_error", None) or error
    inner = getattr(cause, "cause", None)
    if isinstance(inner, MtadError):
        return str(inner)
    return (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
