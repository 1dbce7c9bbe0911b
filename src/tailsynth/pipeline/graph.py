"""The stage graph of one experiment, built from the methods' requests (see ``tailsynth.methods.base``).

:class:`StageGraph` answers a method's requests -- a split, another method's classifier, a synthetic set,
its own training stage, or any stage of the method's own package through :meth:`StageGraph.run` -- with
fingerprinted stages. Each distinct stage runs (or, in plan mode, is only fingerprinted) once per experiment,
however many methods ask for it; every stage requested is recorded (:meth:`StageGraph.built`), which is what
the report walk and the stages that summarise others (the oracle's verdict on every synthetic set) read.
The graph knows the shared stages only; :func:`check_experiment` validates every method's own settings
before anything runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import StrictConfig, flatten_mapping
from ..data import index_source, load_benchmark_config
from ..data.content_hash import file_sha256
from ..diffusion import BACKENDS, LoraAdaptConfig
from ..engine import Artifact, Built, Runner, Stage
from ..engine.parallel import PlannedStage
from ..errors import TailsynthError
from ..methods import METHODS, Method, SyntheticGenerator, generator_named
from ..report.sweep import row_label
from ..training import TrainConfig
from .diffusion_stages import ADAPT_LORA, SYNTHESIZE, TRAIN_DIFFUSION, DiffusionStageConfig, SynthStageConfig
from .experiment import ExperimentConfig
from .quality_stages import QUALITY, TRAIN_ORACLE, OracleStageConfig, QualityStageConfig
from .stages import SPLIT, TRAIN, SplitStageConfig, TrainStageConfig


def check_experiment(cfg: ExperimentConfig) -> None:
    """Every method named anywhere exists and its settings parse and check; the generator configs validate; a
    sweep names a method with synthetic images. Raises before any stage runs."""
    for name in list(cfg.methods) + list(cfg.method_params) + list(cfg.synthetic_sweep):
        METHODS.get(name).check_config(cfg)
    for name in cfg.synthetic_sweep:
        if METHODS.get(name).generator is None:
            raise TailsynthError(f"synthetic_sweep: {name!r} uses no synthetic images")
    synthesis = cfg.synthesis
    backend = BACKENDS.get(cfg.diffusion.backend)
    backend.check_options(cfg.diffusion.pixel, "experiment key 'diffusion.pixel'", cfg.data.image_size,
                          cfg.data.channels)
    if not backend.trains_base:  # a pretrained folder on disk: complete and of a supported structure
        backend.check_folder(cfg.diffusion.sd_path, "diffusion.sd_path")
    for name in list(synthesis.params):
        generator = generator_named(name)
        generator.params(synthesis)
        aux = METHODS.get(generator.aux_method(synthesis))
        if aux.generator is not None:
            raise TailsynthError(f"synthesis.params.{name}.aux_method: {aux.name!r} trains on synthetic images "
                                 f"itself; the auxiliary classifier must be trained on real images")
    if synthesis.aux_train:
        aux_train_config(cfg)
    if cfg.classifier.pretrained:
        check_pretrained(cfg)
    for name in cfg.methods:
        generator = METHODS.get(name).generator
        if generator is not None:
            generator.params(synthesis)
            METHODS.get(generator.aux_method(synthesis))
    if cfg.far_ood:  # a user's far set that is missing is an error now; an absent built-in one is skipped later
        from .far_ood import check_far
        check_far(cfg)


def aux_train_config(cfg: ExperimentConfig) -> TrainConfig:
    """The experiment's classifier settings with ``synthesis.aux_train`` over them."""
    return cfg.classifier.with_settings(cfg.synthesis.aux_train, "experiment key 'synthesis.aux_train'")


def check_pretrained(cfg: ExperimentConfig) -> None:
    """The weights file fits the configured network (names and shapes), before any stage runs."""
    from ..models import create_model
    from ..models.pretrained import WeightsMismatchError, load_backbone
    c = cfg.classifier
    small = c.small_input if c.small_input is not None else cfg.data.image_size <= 64
    model = create_model(c.model, num_classes=2, in_channels=cfg.data.channels, width=c.width, small_input=small)
    try:
        load_backbone(model, c.pretrained)
    except TailsynthError as err:  # the small_input hint only where the tensors do not fit
        hint = small and isinstance(err, WeightsMismatchError)
        raise TailsynthError(f"classifier.pretrained: {err}" + (" (small_input is on because image_size <= 64: "
                                                                "set classifier.small_input=false)" if hint else "")
                             ) from None


class StageGraph:
    """Runs (or, in plan mode, only fingerprints) each requested stage once; see the module docstring."""

    def __init__(self, cfg: ExperimentConfig, runner: Runner, plan_only: bool = False):
        self.config, self.runner, self.plan_only = cfg, runner, plan_only
        self.planned: list[PlannedStage] = []  # plan mode: each stage with its config and inputs (engine.parallel)
        self.diffusion, self.synthesis = cfg.diffusion, cfg.synthesis
        self._built: dict[tuple[str, str], Built] = {}  # every stage requested, in request order
        self._split: Artifact | None = None
        self._weights_sha: dict[str, str] = {}

    @property
    def plan(self) -> list[dict[str, Any]]:
        """The plan-mode rows for ``--plan``: stage, fingerprint, label, state and the stage's own cost line."""
        return [{"stage": p.stage.name, "fingerprint": p.fingerprint, "label": p.label, "state": p.state,
                 "cost": p.stage.cost(p.config)} for p in self.planned]

    def built(self, stage: str | None = None) -> list[Built]:
        """Every stage requested so far (in request order), or those of the stage named ``stage``."""
        return [b for b in self._built.values() if stage is None or b.stage.name == stage]

    def method_config(self, method: Method | str) -> StrictConfig:
        """A method's typed settings (``method_params.<name>``, parsed once by the experiment)."""
        return self.config.method_config(method if isinstance(method, str) else method.name)

    def run(self, stage: Stage, cfg: StrictConfig, inputs: dict[str, Artifact], seed: int | None,
            label: str) -> Artifact:
        """The artifact of ``stage`` with ``cfg`` over ``inputs`` (built now, cached, or planned)."""
        fp = self.runner.fingerprint(stage, cfg, inputs)
        if (stage.name, fp) in self._built:
            return self._built[(stage.name, fp)].artifact
        if self.plan_only:
            fp, state = self.runner.plan(stage, cfg, inputs)
            self.planned.append(PlannedStage(stage, cfg, dict(inputs), seed, label, fp, state))
            artifact = Artifact(stage.name, fp, self.runner.store.final_dir(stage.name, fp))
        else:
            artifact = self.runner.run(stage, cfg, inputs, seed=seed, label=label)
        self._built[(stage.name, fp)] = Built(stage, cfg, dict(inputs), label, artifact)
        return artifact

    # --- the shared stages --------------------------------------------------------------------------------
    def split(self) -> Artifact:
        if self._split is None:
            cfg = self.config
            bench = load_benchmark_config(cfg.benchmark, flatten_mapping(cfg.benchmark_overrides))
            split_cfg = SplitStageConfig(benchmark=bench, seed=cfg.split_seed,
                                         source_fingerprint=index_source(bench.source).fingerprint)
            self._split = self.run(SPLIT, split_cfg, {}, cfg.split_seed, bench.name)
        return self._split

    def classifier(self, name: str, seed: int, per_class: int | None = None) -> Artifact:
        """The trained classifier of method ``name`` (and everything it needs first)."""
        return METHODS.get(name).classifier(self, seed, per_class)

    def train(self, method: Method, seed: int, inputs: dict[str, Artifact], *, per_class: int | None = None,
              epochs: int | None = None, train: TrainConfig | None = None, prefix: str = "") -> Artifact:
        """``method``'s classifier-training stage on the split plus ``inputs``; ``per_class`` synthetic images
        per tail class (a sweep row), ``epochs`` instead of the experiment's (cRT), ``train`` instead of the
        experiment's classifier config (LDMLR's head fine-tune, the guidance's auxiliary classifier), ``prefix``
        in front of the stage's label."""
        cfg = self.config
        train_cfg = train if train is not None else cfg.classifier
        train_cfg = train_cfg if epochs is None else train_cfg.model_copy(update={"epochs": epochs})
        extra: dict[str, Any] = {}
        label = method.name
        if "synthetic" in inputs:
            n_default = self.synthesis.n_per_class
            label = row_label(method.name, per_class, n_default)
            extra = {"synthetic_per_class": per_class or n_default}
            if label != method.name:
                extra["label"] = label
        stage_cfg = TrainStageConfig(method=method.name, method_config=self.method_config(method), seed=seed,
                                     data=cfg.data, train=train_cfg, device=cfg.device,
                                     weights_sha256=self.weights_sha256(train_cfg), **extra)
        return self.run(TRAIN, stage_cfg, {"split": self.split(), **inputs}, seed, f"{prefix}{label} seed {seed}")

    def weights_sha256(self, train: TrainConfig) -> str | None:
        """SHA-256 of the pretrained weights file (memoised), so new weights at the same path retrain."""
        if not train.pretrained:
            return None
        if train.pretrained not in self._weights_sha:
            self._weights_sha[train.pretrained] = file_sha256(Path(train.pretrained))
        return self._weights_sha[train.pretrained]

    def diffusion_stage_config(self) -> DiffusionStageConfig:
        return DiffusionStageConfig(diffusion=self.diffusion, data=self.config.data, device=self.config.device)

    def base_diffusion(self) -> Artifact:
        """The base denoiser on the head classes (or the pretrained SD folder it names). Its fingerprint leaves
        out the LoRA settings, which it does not use: a new LoRA setting reuses the trained base."""
        cfg = self.diffusion_stage_config()
        cfg = cfg.model_copy(update={"diffusion": cfg.diffusion.model_copy(update={"lora": LoraAdaptConfig()})})
        return self.run(TRAIN_DIFFUSION, cfg, {"split": self.split()}, self.diffusion.seed, "base diffusion")

    def lora(self) -> Artifact:
        """LoRA (+ tail tokens) on the tail images, over the base diffusion model."""
        return self.run(ADAPT_LORA, self.diffusion_stage_config(), {"split": self.split(), "base": self.base_diffusion()},
                        self.diffusion.seed, "LoRA on tail")

    def auxiliary(self, name: str) -> dict[str, Artifact]:
        """The auxiliary classifier(s) of the guidance, as synthesis inputs ``aux``, ``aux_1``, ...: method
        ``name`` trained on real images with seeds ``aux_seed + i`` (i < ``aux_ensemble``) and
        ``synthesis.aux_train`` over the experiment's classifier settings (none: the table row's classifier)."""
        s = self.synthesis
        return {("aux" if i == 0 else f"aux_{i}"): self.aux_classifier(name, s.aux_seed + i)
                for i in range(s.aux_ensemble)}

    def aux_classifier(self, name: str, seed: int, over: dict[str, Any] | None = None, where: str = "") -> Artifact:
        """Method ``name`` trained on real images with ``seed`` under the auxiliary's recipe: the table row's
        classifier, or with ``synthesis.aux_train`` over the experiment's classifier settings when set (an
        ensemble member of the guidance, or a judge of its images of another seed). ``over``: settings over that
        recipe, key by key as ``aux_train`` (a judge of another architecture or augmentation; ``where`` names the
        key in errors)."""
        if not self.synthesis.aux_train and not over:
            return self.classifier(name, seed)
        train = aux_train_config(self.config).with_settings(over or {}, where or "aux classifier settings")
        return self.train(METHODS.get(name), seed, {}, train=train, prefix="judge " if over else "aux ")

    def synthetic(self, generator: SyntheticGenerator) -> Artifact:
        """base diffusion (head) -> LoRA (tail) -> auxiliary classifier -> the generator's synthetic tail set,
        with as many images per class as the largest sweep count of a method using it needs."""
        s = self.synthesis
        base, lora = self.base_diffusion(), self.lora()
        params = {k: v for k, v in s.params.get(generator.name, {}).items()
                  if k != "aux_method" and k not in generator.report_params}
        aux_method = generator.aux_method(s)
        aux = self.auxiliary(aux_method)
        n = max([s.n_per_class] + [n for name, counts in self.config.synthetic_sweep.items()
                                   if METHODS.get(name).generator is generator for n in counts])
        synth_cfg = SynthStageConfig(
            method=generator.name, synthesis=s.model_copy(update={"params": {generator.name: params}, "n_per_class": n,
                                                                   "aux_method": aux_method}),
            diffusion=self.diffusion, data=self.config.data, device=self.config.device,
            generator_version=generator.version)
        inputs = {"split": self.split(), "base": base, "lora": lora, **aux, **generator.inputs(self, s)}
        return self.run(SYNTHESIZE, synth_cfg, inputs, s.seed, f"synthesis {generator.name}")

    def oracle(self) -> Artifact:
        """The oracle classifier on every non-test image (report only, never used for a choice)."""
        cfg = self.config
        if cfg.oracle is None:
            raise TailsynthError("this experiment has no oracle (experiment key 'oracle')")
        return self.run(TRAIN_ORACLE, OracleStageConfig(data=cfg.data, train=cfg.oracle, device=cfg.device,
                                                        weights_sha256=self.weights_sha256(cfg.oracle)),
                        {"split": self.split()}, 0, "oracle")

    def quality(self) -> Artifact:
        """Oracle on the full pool (report only) and its verdict on every synthetic set made so far (LoGex §4.4)."""
        cfg = self.config
        inputs = {"split": self.split(), "oracle": self.oracle(),
                  **{f"synthetic:{b.config.method}": b.artifact for b in self.built() if b.stage.synthetic_set}}
        return self.run(QUALITY, QualityStageConfig(data=cfg.data, device=cfg.device), inputs, None, "synthetic quality")
