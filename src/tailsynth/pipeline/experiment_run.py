"""Chain the stages of an experiment; shared stages run once (fingerprints); ``plan`` runs nothing."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..config import StrictConfig, to_dict
from ..data import index_source, load_benchmark_config
from ..errors import TailsynthError
from ..training import METHODS
from .experiment import ExperimentConfig
from .runner import Runner, Stage
from .stages import EVALUATE, SPLIT, TRAIN, EvalStageConfig, SplitStageConfig, TrainStageConfig, all_scores
from .store import Artifact, ArtifactStore
from .sweep_report import row_label


@dataclass
class ExperimentResult:
    evaluations: list[Artifact] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    report_dir: Path | None = None
    wall_time_s: float = 0.0


def _flatten(prefix: str, data: dict[str, Any]) -> list[str]:
    items = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(name + ".", value)
        else:
            items.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return items


class _Chain:
    """Runs (or, in plan mode, only fingerprints) each stage in order."""

    def __init__(self, runner: Runner, plan_only: bool):
        self.runner, self.plan_only, self.plan = runner, plan_only, []

    def __call__(self, stage: Stage, cfg: StrictConfig, inputs: dict[str, Artifact], seed: int | None,
                 label: str) -> Artifact:
        if self.plan_only:
            fp, state = self.runner.plan(stage, cfg, inputs)
            if not any(p["stage"] == stage.name and p["fingerprint"] == fp for p in self.plan):
                self.plan.append({"stage": stage.name, "fingerprint": fp, "label": label, "state": state,
                                  "cost": describe_cost(stage.name, cfg)})
            return Artifact(stage.name, fp, self.runner.store.final_dir(stage.name, fp))
        return self.runner.run(stage, cfg, inputs, seed=seed, label=label)


def machine_description() -> str:
    """Where the numbers were measured: CPU model, cores and the vector ISA torch dispatches to (AVX2 and
    AVX-512 kernels round differently, so CPU results are bit-identical only on the same kind of CPU),
    accelerator, torch version."""
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
            f"({torch.backends.cpu.get_cpu_capability()} kernels), {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def describe_cost(stage: str, cfg: StrictConfig) -> str:
    """A rough size of a stage's work for ``--plan`` (epochs, optimisation steps, images)."""
    if stage in ("train_classifier", "train_oracle"):
        return f"{cfg.train.epochs} epochs x batch {cfg.train.batch_size}"
    if stage == "train_diffusion":
        d = cfg.diffusion
        return "none (pretrained SD)" if d.backend == "sd" else f"{d.base.steps} steps x batch {d.base.batch_size}"
    if stage == "adapt_lora":
        return f"{cfg.diffusion.lora.train.steps} steps x batch {cfg.diffusion.lora.train.batch_size}"
    if stage == "synthesize":
        s = cfg.synthesis
        return f"{s.n_per_class} images/tail class x {s.num_steps} DDIM steps ({cfg.method})"
    return "small"


def run_experiment(cfg: ExperimentConfig, runs_dir: str | Path, *, force: set[str] | None = None,
                   plan_only: bool = False, log: Callable[[str], None] = print,
                   command: str = "") -> ExperimentResult:
    started = time.time()
    runner = Runner(ArtifactStore(runs_dir), force=set(force or ()), log=log)
    chain = _Chain(runner, plan_only)
    bench = load_benchmark_config(cfg.benchmark, _flatten("", cfg.benchmark_overrides))
    split_cfg = SplitStageConfig(benchmark=bench, seed=cfg.split_seed,
                                 source_fingerprint=index_source(bench.source).fingerprint)
    split = chain(SPLIT, split_cfg, {}, cfg.split_seed, bench.name)
    eval_cfg = EvalStageConfig(data=cfg.data, scores=all_scores(cfg.scores), primary_score=cfg.primary_score,
                               device=cfg.device)
    result = ExperimentResult()
    for method in list(cfg.methods) + list(cfg.method_params) + list(cfg.synthetic_sweep):
        METHODS.get(method)
    for method in cfg.synthetic_sweep:
        if METHODS.get(method).synthesis is None:
            raise TailsynthError(f"synthetic_sweep: {method!r} uses no synthetic images")
    # a sweep adds rows to a method that runs: `methods=[ce]` on a config with a logex sweep runs CE only
    cfg = cfg.model_copy(update={"synthetic_sweep": {m: n for m, n in cfg.synthetic_sweep.items() if m in cfg.methods}})
    synth_cache: dict[str, Artifact] = {}
    rows = [(method, seed, None) for method in cfg.methods for seed in cfg.seeds]
    rows += [(method, seed, n) for method, counts in cfg.synthetic_sweep.items()
             for n in counts for seed in (cfg.sweep_seeds if cfg.sweep_seeds is not None else cfg.seeds)]
    for method, seed, per_class in rows:
        classifier = _train(chain, cfg, method, seed, split, synth_cache, per_class)
        label = row_label(method, per_class, _n_per_class(cfg))
        result.evaluations.append(chain(EVALUATE, eval_cfg, {"split": split, "classifier": classifier},
                                        seed, f"{label} seed {seed}"))
    quality = _quality(chain, cfg, split, synth_cache) if synth_cache and cfg.oracle is not None else None
    result.plan = chain.plan
    result.wall_time_s = time.time() - started
    if not plan_only:
        from ..report import write_report
        report_dir = Path(runs_dir) / "reports" / cfg.name
        meta = {"command": command, "experiment": cfg.name, "profile": cfg.profile,
                "machine": machine_description(),
                "package_version": __version__, "seeds": list(cfg.seeds), "methods": list(cfg.methods),
                "report_method": cfg.report_method, "config": to_dict(cfg),
                "timings": runner.timings,
                # compute time of every stage of the experiment, whether it ran now or earlier (cached)
                "wall_time_s": round(sum({(t["stage"], t["fingerprint"]): t["wall_time_s"] or 0.0
                                          for t in runner.timings}.values()), 1),
                "this_invocation_s": round(result.wall_time_s, 1)}
        sections = _quality_sections(quality) if quality is not None else []
        sweep = _sweep(cfg, result.evaluations)
        if sweep:
            from .sweep_report import sweep_sections
            sections += sweep_sections(sweep)
        md_path, _, _ = write_report([a.path for a in result.evaluations], report_dir, command=command, meta=meta,
                                     extra_sections=sections)
        appendix = [_quality_markdown(quality)] if quality is not None else []
        if sweep:
            from .sweep_report import sweep_markdown
            appendix.append(sweep_markdown(sweep))
        if appendix:
            with open(md_path, "a") as fh:
                fh.write("".join("\n" + part for part in appendix))
        result.report_dir = report_dir
    return result


def _train(chain: _Chain, cfg: ExperimentConfig, method: str, seed: int, split: Artifact,
           synth_cache: dict[str, Artifact], per_class: int | None = None) -> Artifact:
    """The classifier artifact of ``method``; cRT first trains (or reuses) its base method's model;
    a synthesis method first builds (or reuses) its synthetic tail set and trains on ``per_class`` of its
    images per tail class (None: ``synthesis.n_per_class``; a sweep row otherwise)."""
    spec = METHODS.get(method)
    inputs = {"split": split}
    train_cfg = cfg.classifier
    extra: dict = {}
    label = method
    if spec.synthesis is not None:
        if spec.synthesis not in synth_cache:
            synth_cache[spec.synthesis] = _synthesize(chain, cfg, spec.synthesis, split, synth_cache)
        inputs["synthetic"] = synth_cache[spec.synthesis]
        label = row_label(method, per_class, _n_per_class(cfg))
        extra = {"synthetic_per_class": per_class or _n_per_class(cfg)}
        if label != method:
            extra["label"] = label
    if spec.crt_from is not None:
        inputs["base"] = _train(chain, cfg, spec.crt_from, seed, split, synth_cache)
        train_cfg = train_cfg.model_copy(update={"epochs": cfg.crt_epochs})
    stage_cfg = TrainStageConfig(method=method, criterion_params=cfg.method_params.get(method, {}), seed=seed,
                                 data=cfg.data, train=train_cfg, device=cfg.device, **extra)
    return chain(TRAIN, stage_cfg, inputs, seed, f"{label} seed {seed}")


def _sweep(cfg: ExperimentConfig, evaluations: list[Artifact]) -> dict:
    if not cfg.synthetic_sweep:
        return {}
    from .sweep_report import sweep_points
    seeds = cfg.sweep_seeds if cfg.sweep_seeds is not None else cfg.seeds
    return sweep_points(cfg.synthetic_sweep, _n_per_class(cfg), list(seeds), [a.path for a in evaluations])


def _n_per_class(cfg: ExperimentConfig) -> int:
    """Synthetic images per tail class of a synthesis method's main row (``synthesis.n_per_class``)."""
    return _diffusion_cfgs(cfg)[1].n_per_class


def synthesis_count(cfg: ExperimentConfig, synthesis_name: str, n_per_class: int) -> int:
    """Images per tail class a synthesis method must produce: its n_per_class or the largest sweep count
    of a method that uses it."""
    counts = [n for method, ns in cfg.synthetic_sweep.items() if METHODS.get(method).synthesis == synthesis_name
              for n in ns]
    return max([n_per_class] + counts)


def _diffusion_cfgs(cfg: ExperimentConfig):
    from ..config import build_config
    from .diffusion_stages import DiffusionConfig, DiffusionStageConfig
    from .synthesis_methods import SynthesisConfig
    diffusion = build_config(DiffusionConfig, cfg.diffusion, "experiment key 'diffusion'")
    synthesis = build_config(SynthesisConfig, cfg.synthesis, "experiment key 'synthesis'")
    return DiffusionStageConfig(diffusion=diffusion, data=cfg.data, device=cfg.device), synthesis


def _synthesize(chain: _Chain, cfg: ExperimentConfig, name: str, split: Artifact,
                synth_cache: dict[str, Artifact]) -> Artifact:
    """base diffusion (head only) -> LoRA (tail only) -> auxiliary classifier -> synthetic tail images.

    ``synthesis.params.<name>.aux_method`` overrides ``synthesis.aux_method`` for one synthesis method."""
    from .diffusion_stages import ADAPT_LORA, SYNTHESIZE, TRAIN_DIFFUSION, SynthStageConfig
    from .synthesis_methods import SYNTHESIS
    SYNTHESIS.get(name)
    stage_cfg, synthesis = _diffusion_cfgs(cfg)
    base = chain(TRAIN_DIFFUSION, stage_cfg, {"split": split}, stage_cfg.diffusion.seed, "base diffusion")
    lora = chain(ADAPT_LORA, stage_cfg, {"split": split, "base": base}, stage_cfg.diffusion.seed, "LoRA on tail")
    params = dict(synthesis.params.get(name, {}))
    aux_method = params.pop("aux_method", synthesis.aux_method)
    aux = _train(chain, cfg, aux_method, synthesis.aux_seed, split, synth_cache)
    n = synthesis_count(cfg, name, synthesis.n_per_class)
    synth_cfg = SynthStageConfig(
        method=name, synthesis=synthesis.model_copy(update={"params": {name: params}, "n_per_class": n,
                                                            "aux_method": aux_method}),
        diffusion=stage_cfg.diffusion, data=cfg.data, device=cfg.device)
    return chain(SYNTHESIZE, synth_cfg, {"split": split, "base": base, "lora": lora, "aux": aux},
                 synthesis.seed, f"synthesis {name}")


def _quality(chain: _Chain, cfg: ExperimentConfig, split: Artifact, synth_cache: dict[str, Artifact]) -> Artifact:
    """Oracle on the full pool (report only) and its verdict on every synthetic set (LoGex §4.4)."""
    from ..config import build_config
    from ..training import TrainConfig
    from .quality_stages import QUALITY, TRAIN_ORACLE, OracleStageConfig, QualityStageConfig
    train = build_config(TrainConfig, {**cfg.classifier.model_dump(), **(cfg.oracle or {})}, "experiment key 'oracle'")
    oracle = chain(TRAIN_ORACLE, OracleStageConfig(data=cfg.data, train=train, device=cfg.device),
                   {"split": split}, 0, "oracle")
    inputs = {"split": split, "oracle": oracle, **{f"synthetic:{k}": v for k, v in synth_cache.items()}}
    return chain(QUALITY, QualityStageConfig(data=cfg.data, device=cfg.device), inputs, None, "synthetic quality")


def _quality_rows(quality: Artifact) -> tuple[list[str], list[list[str]]]:
    from ..utils import read_json
    data = read_json(quality.file("quality.json"))
    classes = list(data["real_tail_test"]["per_class"])
    header = ["images", "oracle acc."] + classes
    rows = []
    for name, entry in data.items():
        label = "real tail (test)" if name == "real_tail_test" else f"synthetic: {name}"
        cells = [f"{100 * entry['per_class'][c]:.1f}" if c in entry["per_class"] else "-" for c in classes]
        rows.append([label, f"{100 * entry['overall']:.1f}" if entry["overall"] is not None else "-"] + cells)
    return header, rows


def _quality_markdown(quality: Artifact) -> str:
    header, rows = _quality_rows(quality)
    lines = ["## Synthetic image quality (oracle accuracy, %, LoGex §4.4)", "",
             "The oracle is trained on every non-test image of every class; it is used for this table only.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _quality_sections(quality: Artifact) -> list[tuple[str, Any]]:
    import html
    header, rows = _quality_rows(quality)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    return [("Synthetic image quality: oracle accuracy (%)", table),
            ("Samples: train images | synthetic images (oracle prediction below each)",
             quality.file("samples.png").read_bytes())]
