"""Stages and the runner that executes them with cached, resumable artifacts.

A :class:`Stage` is a function ``func(cfg, inputs, workdir) -> dict | None`` with a typed config and
named upstream artifacts. Its fingerprint is the hash of (stage name, stage code version, resolved config,
upstream fingerprints): a rerun with the same fingerprint skips the stage; ``force`` recomputes it.
A stage carries its own ``--plan`` cost line (``cost``) and, if it shows anything in the experiment report, its
report section (``report``): the engine knows no method, the stage says what it is.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from .. import distributed
from ..version import __version__
from ..config import to_dict
from ..errors import TailsynthError
from ..utils import atomic_write_json, stable_hash
from .machine import machine_info, machine_key
from .memory import PeakRss
from .store import MANIFEST, Artifact, ArtifactStore

ELAPSED = "elapsed.json"  # in a partial work directory: wall time of the interrupted invocations so far

StageFunc = Callable[[Any, dict[str, Artifact], Path], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Built:
    """One stage an experiment requested: the stage, its config, inputs, label and (finished or, in plan mode,
    planned) artifact; what a stage's report hook receives."""

    stage: "Stage"
    config: Any
    inputs: dict[str, Artifact]
    label: str
    artifact: Artifact


# report(built, context) -> (sections, results): ``built`` = every artifact of this stage the experiment made (in
# request order), ``context`` = what the report walk offers (tailsynth.pipeline.report_walk.ReportContext);
# sections are report.Table or (title, PNG bytes), results a mapping merged into results.json
ReportHook = Callable[[list[Built], Any], "tuple[list, dict[str, Any]]"]


def _small(_cfg: Any) -> str:
    return "small"


@dataclass(frozen=True)
class Stage:
    """A named, versioned unit of work. Bump ``version`` when the stage's code changes its output.

    ``cost(cfg)``: a rough size of the work for ``--plan`` (epochs, steps, images); ``report``: the stage's
    section of the experiment report, or None when it shows nothing there; ``synthetic_set``: see below."""

    name: str
    version: str
    func: StageFunc
    description: str = ""
    sharded: bool = False  # with several processes, every rank runs ``func`` on its share (tailsynth.distributed)
    cost: Callable[[Any], str] = _small
    report: ReportHook | None = None
    # its artifact is a SyntheticSet of tail images named by its config's ``method`` (a synthesis, a judged set):
    # the oracle's verdict on synthetic images (the synthetic-quality stage) covers it
    synthetic_set: bool = False


@dataclass
class Runner:
    """Runs stages into an :class:`ArtifactStore`, skipping completed ones.

    ``force`` names stages to recompute (each at most once per runner, even when several downstream
    stages ask for it); every stage downstream of a recomputed one is recomputed too, since its cached
    result was made from the old output. ``log`` receives one line per stage event.
    """

    store: ArtifactStore
    force: set[str] = field(default_factory=set)
    log: Callable[[str], None] = print
    _forced_done: set[tuple[str, str]] = field(default_factory=set)
    _recomputed: set[str] = field(default_factory=set)  # fingerprints rebuilt by force in this runner
    timings: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self, stage: Stage, cfg: BaseModel, inputs: dict[str, Artifact]) -> str:
        return stable_hash({
            "stage": stage.name,
            "version": stage.version,
            "config": to_dict(cfg),
            "inputs": {name: art.fingerprint for name, art in sorted(inputs.items())},
        })

    def plan(self, stage: Stage, cfg: BaseModel, inputs: dict[str, Artifact]) -> tuple[str, str]:
        """(fingerprint, state) where state is 'cached', 'partial' or 'to run' (for ``--plan``)."""
        fp = self.fingerprint(stage, cfg, inputs)
        stale_input = any(a.fingerprint in self._recomputed for a in inputs.values())
        if (stage.name in self.force or stale_input) and (stage.name, fp) not in self._forced_done:
            self._forced_done.add((stage.name, fp))
            self._recomputed.add(fp)
            return fp, "forced"
        if self.store.lookup(stage.name, fp) is not None:
            return fp, "cached"
        if self.store.partial_dir(stage.name, fp).exists():
            return fp, "partial (resumes)"
        return fp, "to run"

    def run(self, stage: Stage, cfg: BaseModel, inputs: dict[str, Artifact] | None = None,
            seed: int | None = None, label: str = "") -> Artifact:
        """The finished artifact of ``stage`` (cached, resumed or computed now). With several processes
        (``tailsynth.distributed``) rank 0 computes it; for a sharded stage every rank works on its share."""
        rank, size = distributed.world()
        if size == 1:
            return self._run_here(stage, cfg, inputs, seed, label)
        if rank == 0:
            started: list[Path] = []

            def on_start(workdir: Path) -> None:
                started.append(workdir)
                if stage.sharded:
                    distributed.broadcast(str(workdir))

            artifact = self._run_here(stage, cfg, inputs, seed, label, on_start=on_start)
            if stage.sharded and not started:
                distributed.broadcast(None)  # cached: nothing for the other ranks to do
            distributed.barrier()
            return artifact
        fp = self.fingerprint(stage, cfg, dict(inputs or {}))
        if stage.sharded:
            workdir = distributed.broadcast(None)
            if workdir is not None:
                stage.func(cfg, dict(inputs or {}), Path(workdir))  # this rank's shards
        distributed.barrier()
        artifact = self.store.lookup(stage.name, fp)
        if artifact is None:
            raise TailsynthError(f"rank {rank}: {stage.name}/{fp} was not finished by rank 0")
        return artifact

    def _run_here(self, stage: Stage, cfg: BaseModel, inputs: dict[str, Artifact] | None, seed: int | None,
                  label: str, on_start: Callable[[Path], Any] | None = None) -> Artifact:
        inputs = dict(inputs or {})
        fp = self.fingerprint(stage, cfg, inputs)
        key = (stage.name, fp)
        name = f"{stage.name}/{fp}" + (f" ({label})" if label else "")
        stale_input = any(a.fingerprint in self._recomputed for a in inputs.values())
        if (stage.name in self.force or stale_input) and key not in self._forced_done:
            self.log(f"[force] {name}: recomputing" + (" (an input was recomputed)" if stale_input else ""))
            self.store.remove(stage.name, fp)
            self._forced_done.add(key)
            self._recomputed.add(fp)
        done = self.store.lookup(stage.name, fp)
        if done is not None:
            self.log(f"[cached] {name}")
            self.timings.append({"stage": stage.name, "label": label, "fingerprint": fp, "state": "cached",
                                 "wall_time_s": done.manifest.get("wall_time_s"),
                                 "peak_rss_bytes": done.manifest.get("peak_rss_bytes")})
            return done
        with self.store.lock(stage.name, fp):
            workdir = self.store.partial_dir(stage.name, fp)
            resuming = workdir.exists()
            try:
                workdir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise TailsynthError(f"cannot create {workdir}: {err.strerror or err}") from err
            self.log(f"[{'resume' if resuming else 'run'}] {name}")
            earlier = _earlier_wall_time(workdir)
            earlier_keys = _earlier_machine_keys(workdir)
            earlier_peak = _earlier_peak_rss(workdir)
            started = time.time()
            if on_start is not None:
                on_start(workdir)  # the other ranks start on their shards
            peak = PeakRss().start()
            try:
                extra = stage.func(cfg, inputs, workdir) or {}
            except BaseException:  # Ctrl-C or an error: keep the time spent, a rerun adds to it
                try:
                    atomic_write_json(workdir / ELAPSED, {
                        "wall_time_s": round(earlier + time.time() - started, 3),
                        "machine_keys": list(dict.fromkeys(earlier_keys + [machine_key()])),
                        "peak_rss_bytes": max(earlier_peak, peak.read())})
                except Exception:  # noqa: BLE001 -- the stage's own error is the one to report
                    pass
                raise
            wall = time.time() - started
            peak_rss = max(earlier_peak, peak.read())
            (workdir / ELAPSED).unlink(missing_ok=True)
            machine = machine_info()
            atomic_write_json(workdir / MANIFEST, {
                "stage": stage.name,
                "version": stage.version,
                "fingerprint": fp,
                "label": label,
                "config": to_dict(cfg),
                "inputs": {k: {"stage": a.stage, "fingerprint": a.fingerprint, "path": str(a.path)}
                           for k, a in sorted(inputs.items())},
                "seed": seed,
                "package_version": __version__,
                # the process that built it: CPU digits are bit-identical only under one machine key
                "machine": machine,
                "machine_key": machine_key(machine),
                # interrupted invocations of this stage on other machines (its partial work came from them)
                "resumed_machine_keys": [k for k in earlier_keys if k != machine_key(machine)],
                "wall_time_s": round(earlier + wall, 3),  # all invocations (a SIGKILLed one's time is lost)
                "wall_time_this_run_s": round(wall, 3),
                # peak resident memory of the process while the stage ran (all invocations); scope "process": since
                # the process started, where the per-stage reset is unavailable (tailsynth.engine.memory)
                "peak_rss_bytes": peak_rss,
                "peak_rss_scope": peak.scope,
                "resumed": resuming,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "result": extra,
            })
            try:
                artifact = self.store.commit(stage.name, fp)
            except OSError as err:
                raise TailsynthError(f"cannot finalise artifact {workdir}: {err.strerror or err}") from err
        self.log(f"[done] {name} in {wall:.1f}s{_summary(extra)}")
        self.timings.append({"stage": stage.name, "label": label, "fingerprint": fp,
                             "state": "resumed" if resuming else "ran", "wall_time_s": round(earlier + wall, 3),
                             "peak_rss_bytes": peak_rss})
        return artifact


def _summary(result: dict, limit: int = 4) -> str:
    """The stage result's first ``limit`` scalar entries for its ``[done]`` line (``: best_epoch 9, ...``):
    with no per-epoch lines in a log file, this is what a stage reports there."""
    parts = []
    for key, value in result.items():
        if isinstance(value, bool) or value is None or not isinstance(value, (int, float, str)):
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        if len(parts) == limit:
            break
    return f": {', '.join(parts)}" if parts else ""


def _earlier_machine_keys(workdir: Path) -> list[str]:
    """Machine keys of earlier, interrupted invocations that recorded theirs (a SIGKILLed one records none)."""
    try:
        keys = json.loads((workdir / ELAPSED).read_text()).get("machine_keys") or []
        return [str(k) for k in keys]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def _earlier_peak_rss(workdir: Path) -> int:
    """The peak RSS recorded by earlier, interrupted invocations (0 when none recorded one)."""
    try:
        return int(json.loads((workdir / ELAPSED).read_text()).get("peak_rss_bytes") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def _earlier_wall_time(workdir: Path) -> float:
    """Seconds spent on this stage by earlier, interrupted invocations (0 for a fresh work directory)."""
    try:
        return float(json.loads((workdir / ELAPSED).read_text())["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
