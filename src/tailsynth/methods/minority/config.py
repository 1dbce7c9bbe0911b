"""The settings of the ``minority`` method (``synthesis.params.minority``), their checks against the rest of the
experiment, and the guidance hook of one batch.

``mode`` picks one of the paper's two consistent settings (Um et al. 2024), never a mix of them:

- ``conditional`` (default): the class-conditional score (Eq. 16, each image denoised with its own class
  condition), L levels cut within each class (App. B.2, "intra-class"), the classifier p(l~ | x_t, c) (Eq. 17).
  The paper's setting for class-conditional models (App. B; its class-conditional ImageNet runs, App. C Table 2:
  a class-conditioned classifier, L = 25).
- ``unconditional``: the score with the null condition (Eq. 7), L levels over all training images, the classifier
  p(l~ | x_t) (Eq. 8); sampling still draws each tail class with its class condition and CFG.

``score.conditional`` and ``classifier.conditional`` follow ``mode``; giving either a value other than ``mode``'s
is an error at load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator, model_validator

from ...config import StrictConfig, flatten_mapping
from ...errors import TailsynthError
from ...minority import (MinorityClassifierConfig, MinorityGuidanceConfig, MinorityScoreConfig, minority_hook,
                         score_timestep)

MODES = ("conditional", "unconditional")


class MinorityFiguresConfig(StrictConfig):
    """``synthesis.params.minority.figures``: the paper's figures in the experiment report (``minority_figures``
    stage, :mod:`tailsynth.methods.minority.figures`; needs the oracle). Not part of the synthesis stage: changing
    it redraws the figures only."""

    enabled: bool = True
    ancestral: bool = True  # Figs. 3 / 6: ancestral sampling with and without minority guidance
    n_per_class: int | None = None  # ancestral images per tail class and setting (None: synthesis.n_per_class)
    grid_scales: list[float] = [0.0, 1.0, 5.0]  # Figs. 15-16: rows l~ in {0, L/2, L-1} x these scales
    grid_classes: int = 2  # the first tail classes get a level x scale grid
    per_cell: int = 6
    batch_size: int = 50
    seed: int = 0


class MinoritySettings(StrictConfig):
    """``synthesis.params.minority``: which of the paper's two settings (``mode``, module docstring), sampler,
    guidance, and the scoring / classifier stages before it."""

    # added after runs were made with the conditional pair: left out of fingerprints while it holds the default
    fingerprint_neutral: ClassVar[tuple[str, ...]] = ("mode",)

    mode: Literal["conditional", "unconditional"] = "conditional"  # Eq. 16/17 (paper, class-conditional) or Eq. 7/8
    num_steps: int = 20
    guidance_scale: float = 3.0  # CFG of the class condition
    sampler: Literal["ddim", "ddpm"] = "ddim"
    guidance: MinorityGuidanceConfig = MinorityGuidanceConfig()
    score: MinorityScoreConfig = MinorityScoreConfig()
    score_splits: list[Literal["train", "val"]] = ["train", "val"]  # scored; the classifier learns from train only
    distance: Literal["l2", "l1", "perceptual"] = "perceptual"  # the score the levels are cut from (paper: LPIPS)
    perceptual: Literal["classifier", "random", "none"] = "classifier"
    perceptual_method: str = "ce"  # whose trained classifier (seed 0) gives the perceptual feature maps
    classifier: MinorityClassifierConfig = MinorityClassifierConfig()
    figures: MinorityFiguresConfig = MinorityFiguresConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_pair(cls, data: Any) -> Any:
        """``score.conditional`` and ``classifier.conditional`` take ``mode``'s value; another value is the mix of
        the paper's two settings (e.g. class-conditional scores with an unconditional classifier): an error."""
        if not isinstance(data, dict) or data.get("mode", "conditional") not in MODES:
            return data  # not a mapping, or a bad mode: the field validation names it
        want = data.get("mode", "conditional") == "conditional"
        data = dict(data)
        for key in ("score", "classifier"):
            part = data.get(key, {})
            if isinstance(part, StrictConfig):  # a typed part: only a value set on it explicitly counts
                part = {k: getattr(part, k) for k in part.model_fields_set}
            if not isinstance(part, dict):
                continue  # the field validation names it
            given = part.get("conditional", want)
            if given != want:
                raise ValueError(f"{key}.conditional = {given!r} mixes the paper's two settings with mode = "
                                 f"{data.get('mode', 'conditional')!r}; allowed: {want} (or leave it out). Choose the "
                                 f"pair with 'mode': conditional (Eq. 16/17) or unconditional (Eq. 7/8)")
            data[key] = {**part, "conditional": want}
        return data

    @model_validator(mode="after")
    def _distance_is_computed(self) -> "MinoritySettings":
        if self.distance == "perceptual" and self.perceptual == "none":
            raise ValueError("distance 'perceptual' needs a perceptual network (perceptual: classifier or random)")
        return self

    @field_validator("perceptual_method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from ..registry import METHODS
        method = METHODS.get(name)  # an unknown name lists the registered methods
        if method.generator is not None:
            raise ValueError(f"{name!r} trains on synthetic images; the perceptual network must be trained on real ones")
        return name


def diffusion_schedule(diffusion) -> tuple[str, torch.Tensor] | None:
    """(name, abar) of the generator's training noise schedule, without building the generator: the pixel backend's
    ``schedule`` / ``num_train_timesteps`` (``diffusion.pixel``), a Stable Diffusion folder's scheduler config (SD-1.x's
    scaled_linear over 1000 steps where the folder is not on this machine); None for another backend."""
    from ...diffusion.schedule import make_alphas_cumprod
    if diffusion.backend == "pixel":
        from ...diffusion.pixel import PixelBackendConfig
        fields = PixelBackendConfig.model_fields
        kind = diffusion.pixel.get("schedule", fields["schedule"].default)
        return kind, make_alphas_cumprod(kind, int(diffusion.pixel.get("num_train_timesteps",
                                                                       fields["num_train_timesteps"].default)))
    if diffusion.backend == "sd":
        from ...diffusion.sd import _schedule_from_folder
        return _schedule_from_folder(Path(diffusion.sd_path or "-"))
    return None


def score_config(score: MinorityScoreConfig, diffusion) -> MinorityScoreConfig:
    """``score`` as the score stage gets it: with ``t`` unset on a schedule other than linear / cosine, ``t`` is the
    step of the paper's noise level (:func:`tailsynth.minority.score_timestep`), written into the stage config so
    that scores made under another rule are never reused; on linear and cosine schedules ``t`` stays unset (the
    rule there is 0.6 T / 0.9 T, unchanged)."""
    from ...minority.score import RULE_FRACTIONS
    schedule = diffusion_schedule(diffusion)
    if score.t is not None or schedule is None or schedule[0] in RULE_FRACTIONS:
        return score
    kind, acp = schedule
    return score.model_copy(update={"t": score_timestep(kind, len(acp), None, acp)})


def training_counts(exp) -> tuple[dict[str, int], bool]:
    """({class: training images}, complete) of the experiment's split, from the data index (no pixels read). Where
    the data is not on this machine: the benchmark file's tail count for each tail class, complete = False."""
    from ...data import build_split, load_benchmark_config
    bench = load_benchmark_config(exp.benchmark, flatten_mapping(exp.benchmark_overrides))
    try:
        split = build_split(bench, seed=exp.split_seed)
    except TailsynthError:  # no data here (the split stage will say so); its file still bounds the tail
        return ({name: bench.n_tail for name in bench.tail or []} if bench.n_tail is not None else {}), False
    return {name: n["train"] for name, n in split.counts().items()}, True


def check_settings(exp, where: str = "synthesis.params.minority") -> MinoritySettings:
    """``synthesis.params.minority`` against the rest of the experiment, before any stage runs (load and
    ``--plan``): ``score.t`` inside 1..T-1 of the generator's schedule, and ``classifier.num_levels`` (L) at most the
    number of training images cut into levels -- all of them (``mode: unconditional``) or each class's
    (``conditional``, App. B.2: every class gets the same L). Returns the typed settings."""
    from ..registry import generator_named
    settings = generator_named("minority").params(exp.synthesis, where)
    schedule = diffusion_schedule(exp.diffusion)
    t = settings.score.t
    if schedule is not None and t is not None and not 1 <= t <= len(schedule[1]) - 1:
        T = len(schedule[1])
        raise TailsynthError(f"{where}.score.t = {t} is outside the allowed range 1..{T - 1} (the generator's "
                             f"{schedule[0]} schedule has T = {T} training timesteps)")
    L = settings.classifier.num_levels
    counts, complete = training_counts(exp)
    if settings.mode == "conditional" and counts:
        name = min(counts, key=counts.get)
        if L > counts[name]:
            raise TailsynthError(f"{where}.classifier.num_levels = {L}: mode conditional cuts L levels within each "
                                 f"class, and class {name!r} has {counts[name]} training images; allowed range "
                                 f"2..{counts[name]}")
    elif settings.mode == "unconditional" and complete and L > sum(counts.values()):
        n = sum(counts.values())
        raise TailsynthError(f"{where}.classifier.num_levels = {L} is more than the {n} training images the levels "
                             f"are cut from (mode unconditional); allowed range 2..{n}")
    return settings


def class_hook(classifier, levels: dict, class_names: list[str] | None, backend, cond: torch.Tensor,
               targets: torch.Tensor, guidance: MinorityGuidanceConfig):
    """The minority hook for a batch of one or more classes (``targets``: class indices of the split, ``cond``:
    their condition embeddings): the class condition for the conditional classifier (Eq. 17), the null condition
    for an unconditional one, and the level values tau of each image's class for ``mode: mixture`` (Eq. 18)."""
    c_cond = cond if classifier.cfg.conditional else backend.null_condition(len(cond)).to(cond.device)
    taus = None
    if guidance.mode == "mixture":
        key = (lambda c: class_names[int(c)]) if classifier.cfg.conditional else (lambda c: "all")
        taus = torch.tensor([levels["taus"][key(c)] for c in targets.tolist()], dtype=torch.float32)
    return minority_hook(classifier, c_cond, guidance, taus)
