"""Run an experiment: the methods' rows x seeds through the stage graph, then one report.

Shared stages run once (fingerprints); ``plan_only`` runs nothing and lists what would run.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import distributed
from ..version import __version__
from ..provenance import code_commit
from ..config import to_dict
from ..methods import METHODS
from ..utils import file_lock, torch_threads
from ..report.sweep import row_label
from .experiment import ExperimentConfig
from .graph import StageGraph, check_experiment
from ..engine import Artifact, ArtifactStore, Runner
from ..engine import machine as engine_machine
from ..engine.artifacts import read_split
from ..engine.parallel import run_concurrently, worker_threads
from .diffusion_stages import SYNTHESIZE
from .report_walk import ReportContext, stage_sections
from .far_ood import far_sets_of, log_skipped
from .stages import EVALUATE, EvalStageConfig, all_scores


@dataclass
class ExperimentResult:
    evaluations: list[Artifact] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    report_dir: Path | None = None
    labels: set[str] = field(default_factory=set)  # the report rows (method or method@N)
    wall_time_s: float = 0.0
    jobs: int = 1  # stages built at a time (1 under torchrun, whose ranks share each stage instead)
    far_ood_skipped: dict[str, str] = field(default_factory=dict)  # built-in far sets absent here: name -> why


def machine_description() -> str:
    """Where the numbers were measured: CPU model, cores, the vector ISA torch dispatches to and torch's thread
    count (AVX2 and AVX-512 kernels round differently, and so do 1 and 2 threads, so CPU results are bit-identical
    only on the same kind of CPU with the same thread count), accelerator, torch version
    (:func:`tailsynth.engine.machine.machine_description`; each stage's manifest records its own machine key)."""
    return engine_machine.machine_description()


def run_experiment(cfg: ExperimentConfig, runs_dir: str | Path, *, force: set[str] | None = None,
                   plan_only: bool = False, log: Callable[[str], None] = print,
                   command: str = "", results_dir: str | Path | None = None) -> ExperimentResult:
    """Run (or resume) every stage of ``cfg`` in ``runs_dir`` and write the report to
    ``runs_dir/reports/<name>``; ``results_dir``: also copy report.md, results.json and report.html there.
    ``cfg.threads`` pins torch's CPU thread count for the run; the caller's count is restored afterwards."""
    with torch_threads(cfg.threads):  # a pinned count holds for this run only (the API may run several)
        started = time.time()
        code_commit()  # the commit of the code that runs, read now (cached): a commit made meanwhile is not it
        check_experiment(cfg)
        distributed.init()  # several processes (torchrun / accelerate launch): see tailsynth.distributed
        main = distributed.world()[0] == 0
        # a sweep adds rows to a method that runs: `methods=[ce]` on a config with a logex sweep runs CE only
        cfg = cfg.model_copy(update={"synthetic_sweep": {m: n for m, n in cfg.synthetic_sweep.items()
                                                          if m in cfg.methods}})
        store = ArtifactStore(runs_dir)
        result = ExperimentResult(jobs=cfg.jobs if distributed.world()[1] == 1 else 1)
        result.far_ood_skipped = log_skipped(cfg, log if main else (lambda _msg: None))
        built_concurrently: dict = {}
        if result.jobs > 1 and not plan_only:
            # plan the graph, build its independent stages side by side (engine.parallel); the pass below
            # then finds them built
            planner = StageGraph(cfg, Runner(store, force=set(force or ()), log=lambda _msg: None), plan_only=True)
            _walk(planner, cfg)
            built_concurrently = run_concurrently(planner.planned, store, result.jobs,
                                                  worker_threads(cfg.threads, result.jobs), log)
        runner = Runner(store, force=set(force or ()), log=log if main else (lambda _msg: None))
        graph = StageGraph(cfg, runner, plan_only)
        _walk(graph, cfg, result)
        runner.timings = [built_concurrently.get((t["stage"], t["fingerprint"]), t) for t in runner.timings]
        result.plan = graph.plan
        result.wall_time_s = time.time() - started
        if not plan_only and main:
            report_dir = Path(runs_dir) / "reports" / cfg.name
            # several runs of one experiment may share a runs folder (each stage has its own lock): the report is
            # merged with the one on disk, so the read-merge-write and the copy must not interleave with another run's
            with report_lock(report_dir):
                result.report_dir = _write_report(cfg, report_dir, runner, result, graph, command)
                if results_dir is not None:
                    out = Path(results_dir)
                    out.mkdir(parents=True, exist_ok=True)
                    for name in REPORT_FILES:
                        shutil.copyfile(result.report_dir / name, out / name)
        return result


def _walk(graph: StageGraph, cfg: ExperimentConfig, result: ExperimentResult | None = None) -> None:
    """Request every stage of the experiment from ``graph`` in order: the split, each (method, seed, sweep
    count) row's classifier and evaluation, each method's extra stages (report figures), the oracle's verdict
    on the synthetic images. Fills ``result``'s evaluations and labels."""
    result = result if result is not None else ExperimentResult()
    split = graph.split()
    eval_cfg = EvalStageConfig(data=cfg.data, scores=all_scores(cfg.scores), primary_score=cfg.primary_score,
                               device=cfg.device, far_ood=far_sets_of(cfg))
    n_default = graph.synthesis.n_per_class
    sweep = cfg.synthetic_sweep
    rows = [(method, seed, None) for method in cfg.methods for seed in cfg.seeds]
    rows += [(method, seed, n) for method, counts in sweep.items()
             for n in counts for seed in (cfg.sweep_seeds if cfg.sweep_seeds is not None else cfg.seeds)]
    for method, seed, per_class in rows:
        classifier = graph.classifier(method, seed, per_class)
        label = row_label(method, per_class, n_default)
        result.labels.add(label)
        own = METHODS.get(method).primary_score  # a row with its own test score (Dream-OOD, BOOD: energy)
        row_eval = eval_cfg if own is None else eval_cfg.model_copy(update={"primary_score": own})
        result.evaluations.append(graph.run(EVALUATE, row_eval, {"split": split, "classifier": classifier},
                                            seed, f"{label} seed {seed}"))
    for method in dict.fromkeys(cfg.methods):  # before quality: they may add synthetic sets (minority: only LoRA)
        METHODS.get(method).extra_stages(graph)
    if graph.built(SYNTHESIZE.name) and cfg.oracle is not None:
        graph.quality()


REPORT_FILES = ("report.md", "results.json", "report.html")


def report_lock(report_dir: Path):
    """Wait for, then hold, an exclusive lock on ``report_dir`` (``.report.lock`` inside it)."""
    return file_lock(report_dir / ".report.lock", wait=True)


METHOD_KEYS = ("name", "profile", "methods", "seeds", "method_params", "synthetic_sweep", "sweep_seeds",
               "report_method", "scores", "far_ood")


def digest_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings :func:`settings_digest` covers, from a resolved experiment config (``to_dict(cfg)``, or the
    ``meta.settings`` of a results.json): the config without its method lists (``METHOD_KEYS``), ``jobs`` and
    ``threads`` (the same settings give the same digits with any job count; the thread count is part of the
    machine key of every stage manifest, which a report and ``tailsynth report --merge`` check instead) and the
    per-generator synthesis params."""
    settings = {k: v for k, v in config.items() if k not in METHOD_KEYS and k not in ("jobs", "threads")}
    if isinstance(settings.get("synthesis"), dict):
        settings["synthesis"] = {k: v for k, v in settings["synthesis"].items() if k != "params"}  # per generator
    return settings


def settings_digest(cfg: ExperimentConfig) -> str:
    """A digest of the experiment's non-method settings (benchmark, split, data, classifier, generator,
    synthesis, oracle, ...): rows of one table should share it. A run made before ``threads`` was left out of
    the digest has another digest for the same settings (``tailsynth report --merge`` refuses to join them)."""
    from ..utils import stable_hash
    return stable_hash(digest_settings(to_dict(cfg)))


def _kept_rows_machine_keys(report_dir: Path, labels: set[str], keys: dict[str, list[str]]) -> None:
    """Add to ``keys`` the machine keys of the rows the report on disk keeps (methods this run did not make): the
    merged results.json holds them, so its machine keys must too."""
    from ..errors import TailsynthError
    from ..report import read_results
    if not (report_dir / "results.json").is_file():
        return
    try:
        earlier = read_results(report_dir / "results.json")
    except TailsynthError:
        return  # write_report names the corrupt file
    kept = [m for m in earlier["methods"] if m not in labels]
    if kept:
        for key in (earlier.get("meta") or {}).get("machine_keys") or [engine_machine.UNKNOWN]:
            keys.setdefault(key, []).append(f"rows kept from the earlier report ({', '.join(kept)})")


def _write_report(cfg: ExperimentConfig, report_dir: Path, runner: Runner, result: ExperimentResult,
                  graph: StageGraph, command: str) -> Path:
    from ..report import write_report
    from ..report.sweep import sweep_points, sweep_sections
    # every stage of the experiment keeps the machine key it was built with (a cached stage: its first build's)
    built = [(Artifact(t["stage"], t["fingerprint"], runner.store.final_dir(t["stage"], t["fingerprint"])),
              t.get("label") or "") for t in runner.timings]
    built += [(b.artifact, b.label) for b in graph.built()]
    keys = engine_machine.stage_machine_keys(built + [(a, "") for a in result.evaluations])
    _kept_rows_machine_keys(report_dir, result.labels, keys)
    meta = {"command": command, "experiment": cfg.name, "benchmark": cfg.benchmark, "profile": cfg.profile,
            "machine": machine_description(), "machine_keys": list(keys),
            "machine_key_stages": keys if len(keys) > 1 else None,
            "split_fingerprint": graph.split().fingerprint, "settings": digest_settings(to_dict(cfg)),
            "package_version": __version__, "code_commit": code_commit(),  # read when the run started (cached)
            "seeds": list(cfg.seeds), "methods": list(cfg.methods),
            "report_method": cfg.report_method, "config": to_dict(cfg),
            "timings": runner.timings,
            # compute time of every stage of the experiment, whether it ran now or earlier (cached)
            "wall_time_s": round(sum({(t["stage"], t["fingerprint"]): t["wall_time_s"] or 0.0
                                      for t in runner.timings}.values()), 1),
            "this_invocation_s": round(result.wall_time_s, 1), "jobs": result.jobs,
            "far_ood_skipped": result.far_ood_skipped or None}
    sections, results = stage_sections(graph, ReportContext(cfg, read_split(graph.split())))
    if cfg.synthetic_sweep:
        seeds = cfg.sweep_seeds if cfg.sweep_seeds is not None else cfg.seeds
        points = sweep_points(cfg.synthetic_sweep, graph.synthesis.n_per_class, list(seeds),
                              [a.path for a in result.evaluations])
        sections += sweep_sections(points)
    digest = settings_digest(cfg)
    write_report([a.path for a in result.evaluations], report_dir, command=command, meta=meta,
                 extra_sections=sections, config_digest={label: digest for label in result.labels},
                 extra_results=results)
    return report_dir
