"""What a method is, and what it may ask the pipeline for.

A :class:`Method` is one row family of the results table (LoGex Table 2): how its classifier is trained
(objective, batch source, which parameters train) and which artifacts it needs first. It asks for them
through the *graph* the pipeline hands it (:class:`tailsynth.pipeline.graph.StageGraph`; a method never
imports the pipeline); each request is a cached, fingerprinted stage, so an artifact two methods share (the
base diffusion model, the LoRA, an auxiliary classifier) is built once:

- ``graph.classifier(name, seed)``      -- the trained classifier of another method (cRT's base, an aux);
- ``graph.synthetic(generator)``       -- synthetic tail images of a :class:`SyntheticGenerator` made by
  the LoRA-adapted diffusion model (base diffusion -> LoRA -> auxiliary classifier -> synthesis);
- ``graph.train(method, seed, inputs)`` -- the method's own classifier-training stage over those inputs;
- ``graph.split()``, ``graph.base_diffusion()``, ``graph.lora()``, ``graph.oracle()`` -- shared stages;
- ``graph.run(stage, cfg, inputs, seed, label)`` -- a stage of the method's own (an :class:`~tailsynth.engine.Stage`
  defined in its package, with its own ``--plan`` cost and report section).

A method's settings (``method_params.<name>``) are parsed once into its ``Config`` when the experiment loads
(``parse_config``), cross-checked against the rest of the experiment (``check_config``), and handed to its
stages and training hooks as that typed object.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from ..config import StrictConfig, build_config
from ..errors import TailsynthError
from ..losses import build_criterion, criterion_parameters
from ..training import ArrayData, TrainConfig
from ..training.batches import ImageBatches
from ..training.objectives import CriterionObjective, Objective


class SynthesisConfig(StrictConfig):
    """Shared by every synthetic generator (LoGex: 100 images per tail class, DDIM 20 steps, CFG 3.0, seed 99).

    ``params.<generator>`` holds one generator's own settings (its typed ``Config``) and optionally
    ``aux_method``, the auxiliary classifier of that generator (default ``aux_method``)."""

    n_per_class: int = Field(100, ge=1)
    shard_size: int = 25
    seed: int = 99
    num_steps: int = 20
    guidance_scale: float = 3.0
    aux_method: str = "ldam-rw-drw"  # the auxiliary classifier (LoGex code: LDAM + DRW)
    aux_seed: int = 0
    # the auxiliary classifier's own training settings, over the experiment's ``classifier`` (e.g. more epochs
    # or a wider network than the table's rows); empty: the aux IS the ``aux_method`` row's classifier
    aux_train: dict[str, Any] = {}
    # an ensemble of this many auxiliary classifiers (seeds aux_seed, aux_seed + 1, ...): the guidance follows
    # their mean softmax (tailsynth.diffusion.guidance.ClassifierGuide), which one member's adversarial
    # direction moves less
    aux_ensemble: int = Field(1, ge=1)
    # how the guide resizes generated images to the auxiliary classifier's size (SD: 512 px -> 32 px);
    # bicubic (antialiased) is how the saved images are read back for training, so DiG-IN optimises that image
    guide_resize: Literal["bicubic", "bilinear"] = "bicubic"
    params: dict[str, dict[str, Any]] = {}


class NoParams(StrictConfig):
    """A generator without settings of its own."""


class SyntheticGenerator:
    """How the LoRA-adapted diffusion model turns seeded noise into tail images for one method.

    ``Config`` is the generator's own typed settings (``synthesis.params.<name>``). ``shares_schedule``: the
    experiment's ``synthesis.num_steps`` / ``guidance_scale`` are passed into it (LoGex's generators sample
    the same DDIM chain); otherwise the Config's own defaults stand unless ``synthesis.params.<name>`` sets
    them (FG-Entropy: 30 steps, CFG 5, as its official code). ``generate`` returns images in [0, 1]
    (B, C, H, W) and a per-image score (the auxiliary classifier's confidence in the target class).
    ``report_params``: keys of the Config that only a report stage reads (left out of the synthesis stage, so
    changing them does not remake the images)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrictConfig]] = NoParams
    shares_schedule: ClassVar[bool] = True
    report_params: ClassVar[tuple[str, ...]] = ()
    # bumped when the generator's code changes its images: it joins the synthesis stage's fingerprint ("" = none)
    version: ClassVar[str] = ""

    def params(self, synthesis: SynthesisConfig, where: str = "") -> StrictConfig:
        """This generator's typed config from ``synthesis.params.<name>`` (minus ``aux_method``)."""
        own = dict(synthesis.params.get(self.name, {}))
        own.pop("aux_method", None)
        shared = {k: getattr(synthesis, k) for k in ("num_steps", "guidance_scale")
                  if k in self.Config.model_fields and self.shares_schedule}
        return build_config(self.Config, {**shared, **own}, where or f"synthesis.params.{self.name}")

    def settings(self, synthesis: SynthesisConfig) -> dict[str, Any]:
        """The settings a synthetic set was made with, for the report: DDIM steps, CFG, aux and own params."""
        own = self.params(synthesis).model_dump()
        return {"DDIM steps": own.pop("num_steps", synthesis.num_steps),
                "CFG": own.pop("guidance_scale", synthesis.guidance_scale),
                "aux classifier": self.aux_method(synthesis), "images / class": synthesis.n_per_class, **own}

    def aux_method(self, synthesis: SynthesisConfig) -> str:
        return synthesis.params.get(self.name, {}).get("aux_method", synthesis.aux_method)

    def inputs(self, graph, synthesis: SynthesisConfig) -> dict:
        """Further artifacts the synthesis stage needs for this generator (minority guidance: its minority
        classifier), requested from the stage graph; they join the stage's inputs (and fingerprint)."""
        return {}

    def prepare(self, inputs: dict, backend, device: torch.device, params: StrictConfig, guide=None, data=None):
        """Load what :meth:`inputs` asked for, once per synthesis stage; handed to every :meth:`generate` call.
        ``guide``: the auxiliary classifier(s) as a guide; ``data``: the experiment's data settings."""
        return None

    def generate(self, backend, guide, targets: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 x_T: torch.Tensor, synthesis: SynthesisConfig, params: StrictConfig,
                 generator: torch.Generator, prepared=None) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class CriterionParams(StrictConfig):
    """``method_params.<name>`` of a method defined by its loss: keyword arguments of its criterion (LDAM's
    ``max_m``, DRW's ``drw_epoch``, ...), checked against the criterion's signature by :meth:`Method.parse_config`;
    only the keys given are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Method:
    """A classifier-training recipe: criterion + batch source + trainable parameters (+ artifacts it needs).

    The defaults train every parameter of a fresh network on the real training split (plus the synthetic
    images of ``generator``, when it has one) with ``criterion`` and instance-balanced batches. ``Config``: the
    method's typed settings (``method_params.<name>``); the default holds its criterion's keyword arguments."""

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Config: ClassVar[type[StrictConfig]] = CriterionParams
    criterion: ClassVar[str] = "ce"
    criterion_params: ClassVar[dict[str, Any]] = {}
    sampler: ClassVar[str] = "instance"
    generator: ClassVar[SyntheticGenerator | None] = None
    # the test score of this row's FPR@95 / AUROC; None: the experiment's ``primary_score`` (LoGex: P(tail))
    primary_score: ClassVar[str | None] = None

    # --- configuration, parsed and checked when the experiment loads ---------------------------------------
    def parse_config(self, params: dict[str, Any], where: str) -> StrictConfig:
        """``method_params.<name>`` as this method's typed ``Config`` (an error names each bad key)."""
        if self.Config is CriterionParams:
            accepted = criterion_parameters(self.criterion)
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise TailsynthError(f"{where}: unknown parameters {unknown} for loss {self.criterion!r}; "
                                     f"valid: {sorted(accepted)}")
        return build_config(self.Config, dict(params), where)

    def check_config(self, exp) -> None:
        """Check this method's settings against the rest of the experiment (another method it names, the
        benchmark's class groups, ...), before any stage runs; ``exp.method_config(name)`` is the typed config."""
        exp.method_config(self.name)

    def extra_stages(self, graph) -> None:
        """Request stages the method adds once per experiment, after every row's classifier and evaluation
        (report-only figures, say); called for each method of the experiment."""

    # --- the stage graph ------------------------------------------------------------------------------------
    def classifier(self, graph, seed: int, per_class: int | None = None):
        """The artifact of this method's trained classifier; ``per_class`` synthetic images per tail class
        (a sweep row; None: ``synthesis.n_per_class``)."""
        inputs = {"synthetic": graph.synthetic(self.generator)} if self.generator is not None else {}
        return graph.train(self, seed, inputs, per_class=per_class)

    # --- training (inside the train stage) ------------------------------------------------------------------
    def training_data(self, split, real: ArrayData, inputs: dict, data_cfg, per_class: int | None,
                      params: StrictConfig) -> ArrayData:
        """Real training images, plus the synthetic ones (training split only, never val or test); ``params``:
        the method's typed ``Config``."""
        if "synthetic" not in inputs:
            return real
        from ..data.synthetic import SyntheticSet
        syn = self.synthetic_rows(SyntheticSet.read(inputs["synthetic"].path), per_class, params)
        images, labels = syn.load_images(split.class_names, data_cfg.image_size, data_cfg.channels)
        return ArrayData(np.concatenate([real.images, images]), np.concatenate([real.labels, labels]))

    def synthetic_rows(self, synthetic, per_class: int | None, params: StrictConfig):
        """The synthetic images this row trains on: the first ``per_class`` of each tail class (None: all)."""
        return synthetic.select(per_class)

    def validation_data(self, split, val: ArrayData, inputs: dict):
        """What model selection scores each epoch: the validation images (default) or, for a method that
        trains on cached features, the validation features (:class:`~tailsynth.training.FeatureData`)."""
        return val

    def trained_classes(self, split) -> list[int]:
        """The classes the classifier learns (each needs training images): all of them, or only the
        in-distribution head for a method that treats the tail as out-of-distribution (Dream-OOD, BOOD)."""
        return list(range(len(split.class_names)))

    def head_spec(self, split, inputs: dict, params: StrictConfig) -> dict[str, Any] | None:
        """A classifier head other than the plain linear layer (:func:`tailsynth.models.heads.install_head`),
        stored in the model card; None: the plain linear layer."""
        return None

    def selector(self, split, train: TrainConfig):
        """Model selection on the validation split: the experiment's ``classifier.selection``, with this row's own
        score where it has one (``bacc_head_minus_fpr`` of the head energy for Dream-OOD)."""
        from ..training.selection import make_selector
        return make_selector(train.selection, split.head_classes, split.tail_classes, self.primary_score or "p_tail")

    def init_model(self, model: torch.nn.Module, inputs: dict, seed: int) -> str:
        """Prepare the fresh network; returns which parameters train: "all" or "head"."""
        return "all"

    def objective(self, class_counts: list[int], split, params: StrictConfig) -> Objective:
        own = params.model_dump() if isinstance(params, CriterionParams) else {}  # a typed Config is not the loss's
        crit = build_criterion(self.criterion, class_counts, tail_classes=split.tail_classes,
                               **{**self.criterion_params, **own})
        return CriterionObjective(crit)

    def batches(self, train: ArrayData, cfg: TrainConfig):
        return ImageBatches(train, cfg.augment, self.sampler)
