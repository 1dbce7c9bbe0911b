"""Independent stages at the same time, in ``jobs`` processes (``ExperimentConfig.jobs``).

Many stages of an experiment do not depend on each other: on the demo, the CE classifier, the guidance's
auxiliary classifier and the oracle need only the split, while the base diffusion model trains; the only-LoRA
synthesis and its classifier need only the LoRA, while DiG-IN runs. Tiny models use one core poorly (two torch
threads run them about 1.2x faster than one), so two one-thread stages side by side do better: on 2 AVX2 cores
the demo's stages took 205 s with 2 jobs and 268 s with 1 (the same artifacts).

How: the stage graph is first walked in plan mode (:class:`PlannedStage` records each stage with its config and
inputs); every stage still to build ('to run', or 'partial' to resume) becomes a task. A task starts when the
tasks that build its inputs have finished, in a process of its own (forked, so methods registered from Python
are there too; spawned once this process has initialised CUDA), the one with the most tasks downstream first.
The usual sequential pass then finds every artifact built and writes the report. The artifacts are those of a
sequential run: a stage reads nothing but its config and inputs, each process pins the same torch thread
count, and the store commits each artifact atomically. A stage that fails stops new starts; the running ones finish (their work is kept), then its error
is raised. Stages that ``--force`` recomputes, and their downstream, are left to the sequential pass.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

from pydantic import BaseModel

from ..errors import TailsynthError
from .runner import Runner, Stage
from .store import Artifact, ArtifactStore

TO_BUILD = ("to run", "partial (resumes)")


@dataclass(frozen=True)
class PlannedStage:
    """One stage as the plan-mode walk of the graph met it."""

    stage: Stage
    config: BaseModel
    inputs: dict[str, Artifact]
    seed: int | None
    label: str
    fingerprint: str
    state: str  # Runner.plan's: 'cached', 'partial (resumes)', 'to run' or 'forced'

    @property
    def key(self) -> tuple[str, str]:
        return (self.stage.name, self.fingerprint)


def worker_threads(threads: int | None, jobs: int) -> int:
    """Torch threads per stage process: the run's pinned count, else the cores shared out among the jobs."""
    return threads if threads is not None else max(1, (os.cpu_count() or 1) // jobs)


def start_method() -> str:
    """'fork' where the OS has it (the children inherit the imports and any method registered from Python), but
    'spawn' once this process has initialised CUDA, which a forked child cannot use."""
    import torch
    if "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def run_concurrently(planned: list[PlannedStage], store: ArtifactStore, jobs: int, threads: int,
                     log: Callable[[str], None] = print, method: str | None = None
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    """Build every stage of ``planned`` still to build, up to ``jobs`` at a time, each with ``threads`` torch
    threads, in processes started by ``method`` (default :func:`start_method`); returns the timing row
    (Runner.timings) of each stage built, by (stage name, fingerprint)."""
    tasks = {p.key: p for p in planned if p.state in TO_BUILD}
    needs = {key: {(a.stage, a.fingerprint) for a in p.inputs.values()} & set(tasks) for key, p in tasks.items()}
    priority = _downstream_counts(needs)
    order = {key: i for i, key in enumerate(tasks)}
    done: set[tuple[str, str]] = set()
    started: set[tuple[str, str]] = set()
    running: dict[Any, tuple[tuple[str, str], Any]] = {}  # connection -> (task key, process)
    timings: dict[tuple[str, str], dict[str, Any]] = {}
    failure: str | None = None
    context = mp.get_context(method or start_method())
    try:
        while True:
            if failure is None:
                ready = sorted((k for k in tasks if k not in started and needs[k] <= done),
                               key=lambda k: (-priority[k], order[k]))
                for key in ready[: jobs - len(running)]:
                    receive, send = context.Pipe(duplex=False)
                    process = context.Process(target=_build, args=(send, store.root, tasks[key], threads),
                                              name=f"tailsynth {key[0]}", daemon=False)
                    process.start()
                    send.close()
                    running[receive] = (key, process)
                    started.add(key)
            if not running:
                break
            for conn in wait(list(running)):
                key, process = running[conn]
                try:
                    kind, payload = conn.recv()
                except EOFError:  # the process died without a word (killed, out of memory)
                    process.join()
                    kind, payload = "error", f"its process exited with code {process.exitcode}"
                if kind == "log":
                    log(payload)
                    continue
                conn.close()
                process.join()
                del running[conn]
                if kind == "done":
                    done.add(key)
                    timings[key] = payload
                elif failure is None:
                    failure = f"{key[0]}/{key[1]} ({tasks[key].label}): {payload}"
                    if running:
                        log(f"[stop] {failure.splitlines()[0]}; waiting for {len(running)} running stage(s)")
    finally:  # Ctrl-C in this process: the children got it too; do not leave them running
        for conn, (_key, process) in running.items():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
            conn.close()
    if failure is not None:
        raise TailsynthError(failure)
    if len(done) != len(tasks):  # a cycle cannot happen (inputs come before their users); guard anyway
        raise TailsynthError(f"stages never started: {sorted(set(tasks) - done)}")
    return timings


def _downstream_counts(needs: dict[tuple[str, str], set[tuple[str, str]]]) -> dict[tuple[str, str], int]:
    """For each task, how many tasks depend on it directly or indirectly (the longest waits start first)."""
    users: dict[tuple[str, str], set[tuple[str, str]]] = {k: set() for k in needs}
    for key, inputs in needs.items():
        for dep in inputs:
            users[dep].add(key)
    counts: dict[tuple[str, str], int] = {}

    def below(key: tuple[str, str], seen: set[tuple[str, str]]) -> None:
        for user in users[key]:
            if user not in seen:
                seen.add(user)
                below(user, seen)

    for key in needs:
        seen: set[tuple[str, str]] = set()
        below(key, seen)
        counts[key] = len(seen)
    return counts


def _build(conn, store_root, planned: PlannedStage, threads: int) -> None:
    """In the stage's own process: build it with the run's thread count; report log lines, then the outcome."""
    import torch
    os.environ["TAILSYNTH_PROGRESS"] = "0"  # concurrent progress bars would overwrite each other
    torch.set_num_threads(threads)
    runner = Runner(ArtifactStore(store_root), log=lambda msg: conn.send(("log", msg)))
    try:
        runner.run(planned.stage, planned.config, planned.inputs, seed=planned.seed, label=planned.label)
        conn.send(("done", runner.timings[-1]))
    except BaseException as err:  # noqa: BLE001 -- reported to the parent, which raises it
        detail = str(err) if isinstance(err, TailsynthError) else traceback.format_exc().rstrip()
        conn.send(("error", detail or type(err).__name__))
    finally:
        conn.close()
