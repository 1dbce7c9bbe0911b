"""LDMLR (Han et al. 2024, "Latent-based Diffusion Model for Long-tailed Recognition"), Fig. 1 / Algorithm 1.

1. Encode: z = E(x), the penultimate features of the ``encoder`` method's trained classifier (CE in the
   paper's CE+LDMLR row), eval mode, no augmentation (``encode_augment: true``: the code's one augmented
   pass over the training images).
2. A class-conditional diffusion model on the training features (Eq. 10; :mod:`tailsynth.diffusion.feature_diffusion`),
   sampled per class (Eq. 11-12) -> max(round(ratio n_c), 5) pseudo-features for the chosen classes (or, with
   ``pseudo.allocation: uniform``, Eq. 12's p(y) uniform: the same total, an equal count per class).
3. Fine-tune the classifier layer G alone on cached features (the encoder stays bit-identical):
   L_FT = CE(real) + gamma CE(pseudo) (Eq. 13, gamma = 0.05); ``gamma: null`` is the code's plain CE over the
   concatenation; ``gamma: 0`` is the control (the same re-fit, the pseudo-features weighted 0);
   ``only_generated: true`` trains on pseudo-features only (Table 5). Model selection on the
   validation split's features, never the test split.
The final classifier is f(x) = G(E(x)): an ordinary classifier artifact, evaluated and scored (P(tail), ...)
as every other row. ``la-ldmlr`` adds label shift (``methods/ldmlr/label_shift.py``) on top, as the paper's
"Label shift + LDMLR" row. Paper vs code choices: docs/ldmlr.md.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch.nn.functional as F
from pydantic import Field

from ...config import StrictConfig, flatten_mapping
from ...data import load_benchmark_config
from ...data.features import FeatureSet
from ...diffusion.feature_diffusion import FeatureDiffusionConfig
from ...errors import TailsynthError
from ...training import FeatureBatches, FeatureData
from ...training.checkpoint import load_weights
from ...training.objectives import Objective
from ..base import Method
from ..registry import METHODS, register
from .stages import PseudoFeatureConfig, feature_diffusion, features, pseudo_features


class LdmlrHeadConfig(StrictConfig):
    """Stage 3 optimiser: the paper's lr 5e-4 and batch 128 (Adam; the code: Adam 1e-3, wd 1e-5, 400 epochs,
    batch 1024); epochs are a measured choice (features are cached: an epoch costs milliseconds)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(5e-4, gt=0)
    min_lr: float = 0.0
    batch_size: int = Field(128, ge=1)
    weight_decay: float = 1e-5
    lr_schedule: Literal["cosine", "constant"] = "cosine"


class LdmlrConfig(StrictConfig):
    """``method_params.ldmlr``: every LDMLR setting (the la-ldmlr row uses the same)."""

    encoder: str = "ce"
    encode_augment: bool = False
    diffusion: FeatureDiffusionConfig = FeatureDiffusionConfig()
    pseudo: PseudoFeatureConfig = PseudoFeatureConfig()
    gamma: float | None = Field(0.05, ge=0)
    only_generated: bool = False
    head: LdmlrHeadConfig = LdmlrHeadConfig()


class LdmlrObjective(Objective):
    """LDMLR Eq. 13 on a feature batch {"z", "y", "pseudo"}: mean CE over the real vectors + gamma x mean CE over
    the pseudo vectors (a batch without one kind contributes 0 for it); gamma None: mean CE over the batch."""

    def __init__(self, gamma: float | None):
        super().__init__()
        self.gamma = gamma

    def forward(self, model, batch):
        ce = F.cross_entropy(model.forward_head(batch["z"]).float(), batch["y"], reduction="none")
        pseudo = batch.get("pseudo")
        if self.gamma is None or pseudo is None:
            return ce.mean()
        zero = ce.sum() * 0.0
        real_part = ce[~pseudo].mean() if (~pseudo).any() else zero
        pseudo_part = ce[pseudo].mean() if pseudo.any() else zero
        return real_part + self.gamma * pseudo_part, {"ce_real": real_part.detach(), "ce_pseudo": pseudo_part.detach()}


@register
class Ldmlr(Method):
    name = "ldmlr"
    reference = "LDMLR (Han et al. 2024): CE encoder + classifier layer fine-tuned on real + diffusion pseudo-features"
    Config = LdmlrConfig

    def check_config(self, exp) -> None:
        cfg = exp.method_config(self.name)
        encoder = METHODS.get(cfg.encoder)
        if encoder.name in ("ldmlr", "la-ldmlr"):
            raise TailsynthError(f"method_params.ldmlr.encoder: {cfg.encoder!r} cannot encode for LDMLR itself")
        if cfg.only_generated and cfg.pseudo.classes != "all":
            raise TailsynthError("method_params.ldmlr: only_generated needs pseudo.classes = all (a class without "
                                 f"pseudo-features would have no training data), got {cfg.pseudo.classes!r}")
        bench = load_benchmark_config(exp.benchmark, flatten_mapping(exp.benchmark_overrides))
        valid = {"all", "head", "tail", *(bench.groups or {})}
        if cfg.pseudo.classes not in valid:
            raise TailsynthError(f"method_params.ldmlr.pseudo.classes: {cfg.pseudo.classes!r} is not one of "
                                 f"{sorted(valid)} (benchmark {bench.name})")

    def classifier(self, graph, seed, per_class=None):
        cfg = graph.method_config(self)
        base = graph.classifier(cfg.encoder, seed)
        augment = graph.config.classifier.augment if cfg.encode_augment else None
        feats = features(graph, base, train_augment=augment, seed=seed)
        diffusion = feature_diffusion(graph, feats, cfg.diffusion)
        pseudo = pseudo_features(graph, feats, diffusion, cfg.pseudo, self.name)
        h = cfg.head
        head = graph.config.classifier.model_copy(update={
            "epochs": h.epochs, "lr": h.lr, "min_lr": h.min_lr, "batch_size": h.batch_size, "optimizer": "adamw",
            "weight_decay": h.weight_decay, "lr_schedule": h.lr_schedule, "warmup_epochs": 0, "channels_last": False})
        return graph.train(self, seed, {"base": base, "features": feats, "pseudo": pseudo}, train=head)

    def training_data(self, split, real, inputs, data_cfg, per_class, params):
        cfg = params
        encoder = inputs["base"].fingerprint
        z, y = FeatureSet.read(inputs["features"].path, encoder=encoder).subset("train")
        pseudo = FeatureSet.read(inputs["pseudo"].path, encoder=encoder)
        if cfg.only_generated:
            return FeatureData(pseudo.features, pseudo.labels, np.ones(len(pseudo.labels), bool))
        return FeatureData(np.concatenate([z, pseudo.features]), np.concatenate([y, pseudo.labels]),
                           np.concatenate([np.zeros(len(y), bool), np.ones(len(pseudo.labels), bool)]))

    def validation_data(self, split, val, inputs):
        z, y = FeatureSet.read(inputs["features"].path, encoder=inputs["base"].fingerprint).subset("val")
        return FeatureData(z, y)

    def init_model(self, model, inputs, seed):
        load_weights(model, inputs["base"].file("model.safetensors"))  # fine-tune G from the encoder's head
        return "head"

    def objective(self, class_counts, split, params):
        return LdmlrObjective(None if params.only_generated else params.gamma)

    def batches(self, train, cfg):
        return FeatureBatches(train.features, train.labels, "instance", pseudo=train.pseudo)
