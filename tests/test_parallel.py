"""Independent stages at the same time (``jobs``, tailsynth.engine.parallel): dependency order, the most
downstream work first, at most ``jobs`` at once, a failed or killed stage named while the running ones finish,
and an experiment built with 2 jobs byte-identical to the one built with 1."""
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tailsynth.config import StrictConfig
from tailsynth.errors import TailsynthError
from tailsynth.pipeline import ArtifactStore, Runner, Stage
from tailsynth.engine.store import Artifact
from tailsynth.engine.parallel import PlannedStage, _downstream_counts, run_concurrently, worker_threads
from tiny import tiny


class WorkCfg(StrictConfig):
    name: str
    seconds: float = 0.0
    fail: str = ""  # "error": raise; "die": the process exits without a word


def work(cfg, inputs, workdir: Path):
    """Record when it ran and what it saw, after ``seconds``; fail as asked."""
    start = time.time()
    time.sleep(cfg.seconds)
    if cfg.fail == "error":
        raise TailsynthError(f"{cfg.name} cannot go on")
    if cfg.fail == "die":
        os._exit(3)
    seen = sorted((inp.path / "out.json").is_file() for inp in inputs.values())
    (workdir / "out.json").write_text(json.dumps({"start": start, "end": time.time(), "inputs_done": seen,
                                                  "pid": os.getpid()}))
    return {}


WORK = Stage("work", "1", work)


def plan(store: ArtifactStore, graph: dict[str, tuple[list[str], dict]]) -> list[PlannedStage]:
    """PlannedStages of ``graph`` (name -> (input names, extra config)), in the order given, as a plan-mode walk
    of an empty store would list them."""
    runner, made, out = Runner(store, log=lambda _m: None), {}, []
    for name, (needs, extra) in graph.items():
        cfg = WorkCfg(name=name, **extra)
        inputs = {n: made[n] for n in needs}
        fp = runner.fingerprint(WORK, cfg, inputs)
        out.append(PlannedStage(WORK, cfg, inputs, None, name, fp, "to run"))
        made[name] = Artifact("work", fp, store.final_dir("work", fp))
    return out


def record(store: ArtifactStore, planned: list[PlannedStage]) -> dict[str, dict]:
    return {p.label: json.loads((store.final_dir("work", p.fingerprint) / "out.json").read_text()) for p in planned}


def test_inputs_first_most_downstream_first_and_at_most_jobs_at_once(tmp_path):
    store = ArtifactStore(tmp_path)
    # c and d are ready at once; d has two stages below it, so it starts first with one job
    planned = plan(store, {"c": ([], {"seconds": 0.2}), "d": ([], {"seconds": 0.2}),
                           "e": (["d"], {}), "f": (["e", "c"], {})})
    logs: list[str] = []
    timings = run_concurrently(planned, store, jobs=1, threads=1, log=logs.append)
    runs = record(store, planned)
    assert runs["d"]["end"] <= runs["c"]["start"]  # d (2 stages downstream) before c (1)
    assert runs["e"]["start"] >= runs["d"]["end"] and runs["f"]["start"] >= max(runs["e"]["end"], runs["c"]["end"])
    assert runs["f"]["inputs_done"] == [True, True]
    assert set(timings) == {p.key for p in planned} and all(t["state"] == "ran" for t in timings.values())
    assert sum(line.startswith("[done]") for line in logs) == 4
    assert len({r["pid"] for r in runs.values()} | {os.getpid()}) == 5  # each stage in its own process
    # a second call finds nothing to build
    again = [PlannedStage(p.stage, p.config, p.inputs, None, p.label, p.fingerprint, "cached") for p in planned]
    assert run_concurrently(again, store, jobs=2, threads=1) == {}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_jobs_overlap_and_never_three(tmp_path, method):
    store = ArtifactStore(tmp_path)
    planned = plan(store, {name: ([], {"seconds": 0.6 if method == "fork" else 3.0}) for name in "abc"})
    run_concurrently(planned, store, jobs=2, threads=1, log=lambda _m: None, method=method)
    spans = sorted((r["start"], r["end"]) for r in record(store, planned).values())
    assert spans[1][0] < spans[0][1]  # the first two overlapped
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05  # the third waited for a free job


@pytest.mark.parametrize("fail, message", [("error", "b cannot go on"), ("die", "exited with code 3")])
def test_a_failed_stage_is_named_the_running_one_finishes_and_nothing_new_starts(tmp_path, fail, message):
    store = ArtifactStore(tmp_path)
    planned = plan(store, {"a": ([], {"seconds": 1.0}), "b": ([], {"seconds": 0.1, "fail": fail}),
                           "c": (["b"], {}), "d": ([], {})})
    with pytest.raises(TailsynthError, match=f"work/{planned[1].fingerprint} \\(b\\): .*{message}"):
        run_concurrently(planned, store, jobs=2, threads=1, log=lambda _m: None)
    assert store.lookup("work", planned[0].fingerprint) is not None  # a kept running and finished
    assert store.lookup("work", planned[2].fingerprint) is None  # c needs b
    assert store.lookup("work", planned[3].fingerprint) is None  # d was not started after the failure


def test_worker_threads_and_downstream_counts():
    assert worker_threads(3, 4) == 3
    assert worker_threads(None, os.cpu_count() or 1) == 1
    assert _downstream_counts({"a": set(), "b": {"a"}, "c": {"b"}, "d": {"a"}}) == {"a": 3, "b": 1, "c": 0, "d": 0}


def digests(runs: Path) -> dict:
    return {str(p.relative_to(runs)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(runs.rglob("*"))
            if p.is_file() and p.suffix in (".png", ".csv", ".safetensors", ".npz") and "reports" not in p.parts}


@pytest.mark.slow
def test_an_experiment_with_two_jobs_equals_one_job_byte_for_byte(tmp_path):
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    overrides = tiny("methods=[ce,logex-lora,logex]", "threads=1")
    one = run_experiment(load_experiment("demo", overrides + ["jobs=1"]), tmp_path / "one", log=lambda _m: None)
    logs: list[str] = []
    two = run_experiment(load_experiment("demo", overrides + ["jobs=2"]), tmp_path / "two", log=logs.append)
    assert digests(tmp_path / "one") == digests(tmp_path / "two") and len(digests(tmp_path / "one")) > 10
    # stages overlapped: a second one started before the first finished
    depth, deepest = 0, 0
    for line in logs:
        depth += line.startswith("[run]") - line.startswith("[done]")
        deepest = max(deepest, depth)
    assert deepest == 2
    # every stage was built by the concurrent pass; the report lists them as run, not cached
    results = [json.loads((r.report_dir / "results.json").read_text()) for r in (one, two)]
    assert results[0]["methods"] == results[1]["methods"]
    table = (two.report_dir / "report.md").read_text().split("## Stage timings")[1]
    assert "| train_diffusion | base diffusion | ran |" in table and "cached" not in table
    assert "this invocation (2 stages at a time)" in (two.report_dir / "report.md").read_text()
