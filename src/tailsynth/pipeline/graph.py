"""The stage graph of one experiment, built from the methods' requests (see ``tailsynth.methods.base``).

:class:`StageGraph` answers a method's requests -- a split, another method's classifier, a synthetic set,
its own training stage -- with fingerprinted stages. Each distinct stage runs (or, in plan mode, is only
fingerprinted) once per experiment, however many methods ask for it. :func:`check_experiment` validates
every method's own settings before anything runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import StrictConfig, build_config
from ..data import index_source, load_benchmark_config
from ..diffusion import BACKENDS, LoraAdaptConfig
from ..errors import TailsynthError
from ..methods import METHODS, Method, SynthesisConfig, SyntheticGenerator, generator_named
from ..report.sweep import row_label
from ..training import TrainConfig
from .diffusion_stages import (ADAPT_LORA, SYNTHESIZE, TRAIN_DIFFUSION, DiffusionConfig, DiffusionStageConfig,
                               SynthStageConfig)
from .experiment import ExperimentConfig
from .parallel import PlannedStage
from .quality_stages import QUALITY, TRAIN_ORACLE, OracleStageConfig, QualityStageConfig
from .runner import Runner, Stage
from .stages import SPLIT, TRAIN, SplitStageConfig, TrainStageConfig
from .store import Artifact


def _flatten(prefix: str, data: dict[str, Any]) -> list[str]:
    items = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(name + ".", value)
        else:
            items.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return items


def diffusion_configs(cfg: ExperimentConfig) -> tuple[DiffusionConfig, SynthesisConfig]:
    return (build_config(DiffusionConfig, cfg.diffusion, "experiment key 'diffusion'"),
            build_config(SynthesisConfig, cfg.synthesis, "experiment key 'synthesis'"))


def check_experiment(cfg: ExperimentConfig) -> None:
    """Every method named anywhere exists and its settings validate; the generator configs validate; a
    sweep names a method with synthetic images. Raises before any stage runs."""
    for name in list(cfg.methods) + list(cfg.method_params) + list(cfg.synthetic_sweep):
        METHODS.get(name).check_config(cfg)
    for name in cfg.synthetic_sweep:
        if METHODS.get(name).generator is None:
            raise TailsynthError(f"synthetic_sweep: {name!r} uses no synthetic images")
    diffusion, synthesis = diffusion_configs(cfg)
    BACKENDS.get(diffusion.backend).check_options(diffusion.pixel, "experiment key 'diffusion.pixel'",
                                                  cfg.data.image_size, cfg.data.channels)
    for name in list(synthesis.params):
        generator = generator_named(name)
        generator.params(synthesis)
        aux = METHODS.get(generator.aux_method(synthesis))
        if aux.generator is not None:
            raise TailsynthError(f"synthesis.params.{name}.aux_method: {aux.name!r} trains on synthetic images "
                                 f"itself; the auxiliary classifier must be trained on real images")
    if synthesis.aux_train:
        aux_train_config(cfg, synthesis)
    if cfg.classifier.pretrained:
        check_pretrained(cfg)
    for name in cfg.methods:
        generator = METHODS.get(name).generator
        if generator is not None:
            generator.params(synthesis)
            METHODS.get(generator.aux_method(synthesis))


def aux_train_config(cfg: ExperimentConfig, synthesis: SynthesisConfig) -> TrainConfig:
    """The experiment's classifier settings with ``synthesis.aux_train`` over them."""
    return build_config(TrainConfig, {**cfg.classifier.model_dump(), **synthesis.aux_train},
                        "experiment key 'synthesis.aux_train'")


def check_pretrained(cfg: ExperimentConfig) -> None:
    """The weights file fits the configured network (names and shapes), before any stage runs."""
    from ..models import create_model
    from ..models.pretrained import load_backbone
    c = cfg.classifier
    small = c.small_input if c.small_input is not None else cfg.data.image_size <= 64
    model = create_model(c.model, num_classes=2, in_channels=cfg.data.channels, width=c.width, small_input=small)
    try:
        load_backbone(model, c.pretrained)
    except TailsynthError as err:
        raise TailsynthError(f"classifier.pretrained: {err}" + (" (small_input is on because image_size <= 64: "
                                                                "set classifier.small_input=false)" if small else "")
                             ) from None


def describe_cost(stage: str, cfg: StrictConfig) -> str:
    """A rough size of a stage's work for ``--plan`` (epochs, optimisation steps, images)."""
    if stage == "train_feature_diffusion":
        return f"{cfg.diffusion.steps} steps x batch {cfg.diffusion.batch_size} (feature vectors)"
    if stage == "sample_pseudo_features":
        return f"ratio {cfg.pseudo.ratio} ({cfg.pseudo.classes}), {cfg.pseudo.sampling.sampler} {cfg.pseudo.sampling.num_steps} steps"
    if stage in ("train_classifier", "train_oracle"):
        return f"{cfg.train.epochs} epochs x batch {cfg.train.batch_size}"
    if stage == "train_diffusion":
        d = cfg.diffusion
        return (f"{d.base.steps} steps x batch {d.base.batch_size}" if BACKENDS.get(d.backend).trains_base
                else f"none (pretrained {d.backend})")
    if stage == "adapt_lora":
        return f"{cfg.diffusion.lora.train.steps} steps x batch {cfg.diffusion.lora.train.batch_size}"
    if stage == "minority_score":
        return f"{cfg.score.num_draws} denoiser calls per image ({'+'.join(cfg.splits)})"
    if stage == "train_minority_classifier":
        return f"{cfg.classifier.steps} steps x batch {cfg.classifier.batch_size} ({cfg.classifier.encoder} UNet encoder + head)"
    if stage == "minority_figures":
        f = cfg.minority.figures
        n = cfg.n_per_class if f.n_per_class is None else f.n_per_class
        return (f"{2 * n if f.ancestral else 0} ancestral images/tail class + {f.grid_classes} level grids x "
                f"{cfg.minority.num_steps} steps")
    if stage == "synthesize":
        steps = generator_named(cfg.method).settings(cfg.synthesis)["DDIM steps"]
        return f"{cfg.synthesis.n_per_class} images/tail class x {steps} DDIM steps ({cfg.method})"
    return "small"


class StageGraph:
    """Runs (or, in plan mode, only fingerprints) each requested stage once; see the module docstring."""

    def __init__(self, cfg: ExperimentConfig, runner: Runner, plan_only: bool = False):
        self.config, self.runner, self.plan_only = cfg, runner, plan_only
        self.planned: list[PlannedStage] = []  # plan mode: each stage with its config and inputs (pipeline.parallel)
        self.diffusion, self.synthesis = diffusion_configs(cfg)
        self.synthetic_sets: dict[str, Artifact] = {}  # generator name -> its synthetic set
        self._done: dict[tuple[str, str], Artifact] = {}
        self._split: Artifact | None = None
        self._weights_sha: dict[str, str] = {}
        self.pseudo_sets: dict[str, Artifact] = {}  # report label -> its pseudo-feature set (LDMLR)
        self.outlier_sets: dict[str, tuple[Artifact, Artifact]] = {}  # dream-ood / bood -> (embeddings, images)

    @property
    def plan(self) -> list[dict[str, Any]]:
        """The plan-mode rows for ``--plan``: stage, fingerprint, label, state and a rough cost."""
        return [{"stage": p.stage.name, "fingerprint": p.fingerprint, "label": p.label, "state": p.state,
                 "cost": describe_cost(p.stage.name, p.config)} for p in self.planned]

    def run(self, stage: Stage, cfg: StrictConfig, inputs: dict[str, Artifact], seed: int | None,
            label: str) -> Artifact:
        fp = self.runner.fingerprint(stage, cfg, inputs)
        if (stage.name, fp) in self._done:
            return self._done[(stage.name, fp)]
        if self.plan_only:
            fp, state = self.runner.plan(stage, cfg, inputs)
            self.planned.append(PlannedStage(stage, cfg, dict(inputs), seed, label, fp, state))
            artifact = Artifact(stage.name, fp, self.runner.store.final_dir(stage.name, fp))
        else:
            artifact = self.runner.run(stage, cfg, inputs, seed=seed, label=label)
        self._done[(stage.name, fp)] = artifact
        return artifact

    # --- requests --------------------------------------------------------------------------------------------
    def split(self) -> Artifact:
        if self._split is None:
            cfg = self.config
            bench = load_benchmark_config(cfg.benchmark, _flatten("", cfg.benchmark_overrides))
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
        stage_cfg = TrainStageConfig(method=method.name, criterion_params=cfg.method_params.get(method.name, {}),
                                     seed=seed, data=cfg.data, train=train_cfg, device=cfg.device,
                                     weights_sha256=self.weights_sha256(train_cfg), **extra)
        return self.run(TRAIN, stage_cfg, {"split": self.split(), **inputs}, seed, f"{prefix}{label} seed {seed}")

    def weights_sha256(self, train: TrainConfig) -> str | None:
        """SHA-256 of the pretrained weights file (memoised), so new weights at the same path retrain."""
        if not train.pretrained:
            return None
        if train.pretrained not in self._weights_sha:
            from ..data.content_hash import file_sha256
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
        train = aux_train_config(self.config, s) if s.aux_train else None

        def member(seed: int) -> Artifact:
            if train is None:
                return self.classifier(name, seed)
            return self.train(METHODS.get(name), seed, {}, train=train, prefix="aux ")

        return {("aux" if i == 0 else f"aux_{i}"): member(s.aux_seed + i) for i in range(s.aux_ensemble)}

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
            diffusion=self.diffusion, data=self.config.data, device=self.config.device)
        inputs = {"split": self.split(), "base": base, "lora": lora, **aux, **generator.inputs(self, s)}
        artifact = self.run(SYNTHESIZE, synth_cfg, inputs, s.seed, f"synthesis {generator.name}")
        self.synthetic_sets[generator.name] = artifact
        return artifact

    # --- feature space (LDMLR, label shift; pipeline.feature_stages) -----------------------------------------------
    def features(self, classifier: Artifact, train_augment=None, seed: int = 0) -> Artifact:
        """Penultimate features of ``classifier`` on train / val / test."""
        from .feature_stages import ENCODE, EncodeStageConfig
        cfg = EncodeStageConfig(data=self.config.data, train_augment=train_augment, seed=seed, device=self.config.device)
        return self.run(ENCODE, cfg, {"split": self.split(), "classifier": classifier}, seed,
                        f"features of {classifier.fingerprint[:8]}")

    def feature_diffusion(self, features: Artifact, diffusion) -> Artifact:
        """A class-conditional diffusion model on the training features (``diffusion``: FeatureDiffusionConfig)."""
        from .feature_stages import TRAIN_FEATURE_DIFFUSION, FeatureDiffusionStageConfig
        cfg = FeatureDiffusionStageConfig(diffusion=diffusion, device=self.config.device)
        return self.run(TRAIN_FEATURE_DIFFUSION, cfg, {"split": self.split(), "features": features}, diffusion.seed,
                        f"feature diffusion on {features.fingerprint[:8]}")

    def pseudo_features(self, features: Artifact, diffusion: Artifact, pseudo, label: str) -> Artifact:
        """Pseudo-features per class from ``diffusion`` (``pseudo``: PseudoFeatureConfig); shown in the report."""
        from .feature_stages import SAMPLE_PSEUDO, PseudoStageConfig
        cfg = PseudoStageConfig(pseudo=pseudo, device=self.config.device)
        artifact = self.run(SAMPLE_PSEUDO, cfg, {"split": self.split(), "features": features, "diffusion": diffusion},
                            pseudo.seed, f"pseudo-features for {label}")
        self.pseudo_sets.setdefault(label, artifact)
        return artifact

    def label_shift(self, base: Artifact, method: str, seed: int, label_shift) -> Artifact:
        """``base`` re-calibrated by the training prior (``label_shift``: LabelShiftConfig); a classifier artifact."""
        from .feature_stages import LABEL_SHIFT, LabelShiftStageConfig
        cfg = LabelShiftStageConfig(label_shift=label_shift, method=method, data=self.config.data,
                                    device=self.config.device)
        return self.run(LABEL_SHIFT, cfg, {"split": self.split(), "base": base}, seed, f"{method} seed {seed}")

    # --- outliers in the conditioning space (Dream-OOD, BOOD; pipeline.outlier_stages) -------------------------
    def outlier_embeddings(self, kind: str, encoder: Artifact, settings: dict) -> Artifact:
        """Stage 2 of Dream-OOD / BOOD on ``encoder``'s embeddings (``settings``: dream_ood= or bood= configs)."""
        from .outlier_stages import IMAGINE_OUTLIERS, OutlierStageConfig
        cfg = OutlierStageConfig(kind=kind, data=self.config.data, device=self.config.device, **settings)
        return self.run(IMAGINE_OUTLIERS, cfg, {"split": self.split(), "encoder": encoder}, None,
                        f"{kind} outlier embeddings")

    def outlier_images(self, kind: str, embeddings: Artifact, decode) -> Artifact:
        """Stage 3: the outlier vectors decoded by the base diffusion model (``decode``: DecodeConfig)."""
        from .outlier_stages import DECODE_OUTLIERS, DecodeStageConfig
        cfg = DecodeStageConfig(kind=kind, decode=decode, diffusion=self.diffusion, data=self.config.data,
                                device=self.config.device)
        artifact = self.run(DECODE_OUTLIERS, cfg, {"split": self.split(), "base": self.base_diffusion(),
                                                   "outliers": embeddings}, decode.seed, f"{kind} outlier images")
        self.outlier_sets[kind] = (embeddings, artifact)
        return artifact

    # --- minority guidance (pipeline.minority_stages) ---------------------------------------------------------
    def minority_scores(self, settings, splits: list[str] | None = None) -> Artifact:
        """Minority scores of the real images of ``splits`` (default ``settings.score_splits``) under the
        LoRA-adapted model (``settings``: methods.minority.MinoritySettings)."""
        from .minority_stages import MINORITY_SCORE, MinorityScoreStageConfig
        inputs = {"split": self.split(), "base": self.base_diffusion(), "lora": self.lora()}
        if settings.perceptual == "classifier":
            inputs["perceptual"] = self.classifier(settings.perceptual_method, 0)
        cfg = MinorityScoreStageConfig(
            score=settings.score, splits=list(splits or settings.score_splits), perceptual=settings.perceptual,
            classifier=self.config.classifier.model_dump() if settings.perceptual == "random" else {},
            diffusion=self.diffusion, data=self.config.data, device=self.config.device)
        return self.run(MINORITY_SCORE, cfg, inputs, settings.score.seed, "minority scores")

    def minority_classifier(self, settings) -> Artifact:
        """The noise-conditioned minority classifier on the training images' minority levels."""
        from .minority_stages import TRAIN_MINORITY, MinorityTrainStageConfig
        cfg = MinorityTrainStageConfig(classifier=settings.classifier, distance=settings.distance,
                                       diffusion=self.diffusion, data=self.config.data, device=self.config.device)
        inputs = {"split": self.split(), "base": self.base_diffusion(), "lora": self.lora(),
                  "scores": self.minority_scores(settings)}
        return self.run(TRAIN_MINORITY, cfg, inputs, settings.classifier.seed, "minority classifier")

    def minority_figures(self) -> Artifact | None:
        """The minority-guidance report figures (``pipeline.minority_figures``), when the experiment has the
        ``minority`` method, an oracle and ``figures.enabled``; else None."""
        from .minority_figures import MINORITY_FIGURES, MinorityFiguresStageConfig
        if "minority" not in self.config.methods or self.config.oracle is None:
            return None
        generator = generator_named("minority")
        settings = generator.params(self.synthesis)
        if not settings.figures.enabled:
            return None
        inputs = {"split": self.split(), "base": self.base_diffusion(), "lora": self.lora(),
                  "scores": self.minority_scores(settings), "minority": self.minority_classifier(settings),
                  "oracle": self.oracle(), "synthetic:lora": self.synthetic(generator_named("lora")),
                  "synthetic:minority": self.synthetic(generator)}
        cfg = MinorityFiguresStageConfig(minority=settings, n_per_class=self.synthesis.n_per_class,
                                         diffusion=self.diffusion, data=self.config.data, device=self.config.device)
        return self.run(MINORITY_FIGURES, cfg, inputs, settings.figures.seed, "minority figures")

    def oracle(self) -> Artifact:
        """The oracle classifier on every non-test image (report only, never used for a choice)."""
        cfg = self.config
        train = build_config(TrainConfig, {**cfg.classifier.model_dump(), **(cfg.oracle or {})}, "experiment key 'oracle'")
        return self.run(TRAIN_ORACLE, OracleStageConfig(data=cfg.data, train=train, device=cfg.device,
                                                        weights_sha256=self.weights_sha256(train)),
                        {"split": self.split()}, 0, "oracle")

    def quality(self) -> Artifact:
        """Oracle on the full pool (report only) and its verdict on every synthetic set (LoGex §4.4)."""
        cfg = self.config
        oracle = self.oracle()
        inputs = {"split": self.split(), "oracle": oracle,
                  **{f"synthetic:{k}": v for k, v in self.synthetic_sets.items()}}
        return self.run(QUALITY, QualityStageConfig(data=cfg.data, device=cfg.device), inputs, None, "synthetic quality")
