"""Run an experiment: the methods' rows x seeds through the stage graph, then one report.

Shared stages run once (fingerprints); ``plan_only`` runs nothing and lists what would run.
"""
from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import distributed
from ..version import __version__
from ..config import to_dict
from ..methods import METHODS
from ..utils import file_lock, torch_threads
from ..report.sweep import row_label
from .experiment import ExperimentConfig
from .graph import StageGraph, check_experiment
from ..engine import Artifact, ArtifactStore, Runner
from ..engine.artifacts import read_split
from ..engine.parallel import run_concurrently, worker_threads
from .diffusion_stages import SYNTHESIZE
from .report_walk import ReportContext, stage_sections
from .stages import EVALUATE, EvalStageConfig, all_scores


@dataclass
class ExperimentResult:
    evaluations: list[Artifact] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    report_dir: Path | None = None
    labels: set[str] = field(default_factory=set)  # the report rows (method or method@N)
    wall_time_s: float = 0.0
    jobs: int = 1  # stages built at a time (1 under torchrun, whose ranks share each stage instead)


def machine_description() -> str:
    """Where the numbers were measured: CPU model, cores, the vector ISA torch dispatches to and torch's thread
    count (AVX2 and AVX-512 kernels round differently, and so do 1 and 2 threads, so CPU results are bit-identical
    only on the same kind of CPU with the same thread count), accelerator, torch version."""
    import os

    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.machine()} {platform.system()}, {cpu}, {os.cpu_count()} CPU cores "
            f"({torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} torch threads), {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def run_experiment(cfg: ExperimentConfig, runs_dir: str | Path, *, force: set[str] | None = None,
                   plan_only: bool = False, log: Callable[[str], None] = print,
                   command: str = "", results_dir: str | Path | None = None) -> ExperimentResult:
    """Run (or resume) every stage of ``cfg`` in ``runs_dir`` and write the report to
    ``runs_dir/reports/<name>``; ``results_dir``: also copy report.md, results.json and report.html there.
    ``cfg.threads`` pins torch's CPU thread count for the run; the caller's count is restored afterwards."""
    with torch_threads(cfg.threads):  # a pinned count holds for this run only (the API may run several)
        started = time.time()
        check_experiment(cfg)
        distributed.init()  # several processes (torchrun / accelerate launch): see tailsynth.distributed
        main = distributed.world()[0] == 0
        # a sweep adds rows to a method that runs: `methods=[ce]` on a config with a logex sweep runs CE only
        cfg = cfg.model_copy(update={"synthetic_sweep": {m: n for m, n in cfg.synthetic_sweep.items()
                                                          if m in cfg.methods}})
        store = ArtifactStore(runs_dir)
        result = ExperimentResult(jobs=cfg.jobs if distributed.world()[1] == 1 else 1)
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
                               device=cfg.device)
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
               "report_method", "scores")


def settings_digest(cfg: ExperimentConfig) -> str:
    """A digest of the experiment's non-method settings (benchmark, split, data, classifier, generator,
    synthesis, oracle, ...): rows of one table should share it."""
    from ..utils import stable_hash
    settings = {k: v for k, v in to_dict(cfg).items() if k not in METHOD_KEYS and k != "jobs"}  # jobs: same digits
    settings["synthesis"] = {k: v for k, v in settings["synthesis"].items() if k != "params"}  # per generator
    return stable_hash(settings)


def _write_report(cfg: ExperimentConfig, report_dir: Path, runner: Runner, result: ExperimentResult,
                  graph: StageGraph, command: str) -> Path:
    from ..report import write_report
    from ..report.sweep import sweep_points, sweep_sections
    meta = {"command": command, "experiment": cfg.name, "profile": cfg.profile,
            "machine": machine_description(),
            "package_version": __version__, "seeds": list(cfg.seeds), "methods": list(cfg.methods),
            "report_method": cfg.report_method, "config": to_dict(cfg),
            "timings": runner.timings,
            # compute time of every stage of the experiment, whether it ran now or earlier (cached)
            "wall_time_s": round(sum({(t["stage"], t["fingerprint"]): t["wall_time_s"] or 0.0
                                      for t in runner.timings}.values()), 1),
            "this_invocation_s": round(result.wall_time_s, 1), "jobs": result.jobs}
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
