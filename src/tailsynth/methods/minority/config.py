"""The settings of the ``minority`` method (``synthesis.params.minority``) and the guidance hook of one batch."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import field_validator, model_validator

from ...config import StrictConfig
from ...minority import MinorityClassifierConfig, MinorityGuidanceConfig, MinorityScoreConfig, minority_hook


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
    """``synthesis.params.minority``: sampler, guidance, and the scoring / classifier stages before it."""

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
