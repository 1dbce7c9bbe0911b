"""BOOD (Liao et al., ICML 2025, "BOOD: Boundary-based Out-Of-Distribution Data Generation").

The same text-conditioned latent space (``vmf-encoder``), decoder (``decode_outliers``) and outlier-regularised
training as Dream-OOD (``method.py``); only stage 2 differs: instead of sampling around the
low-density boundary points, BOOD takes the ID features that the fewest adversarial steps push into another
class, and perturbs them across the decision boundary and a few steps beyond (:mod:`tailsynth.outliers.bood`).
"""
from __future__ import annotations

from ...errors import TailsynthError
from ...outliers import BoodConfig
from ..registry import register
from .method import DreamOod, OutlierExposureConfig


class BoodMethodConfig(OutlierExposureConfig):
    """``method_params.bood``."""

    outliers: BoodConfig = BoodConfig()


@register
class Bood(DreamOod):
    name = "bood"
    reference = "BOOD (Liao et al. 2025): boundary-crossing outlier features, decoded, energy regulariser"
    kind = "bood"
    Config = BoodMethodConfig

    def stage2_settings(self, cfg):
        return {"bood": cfg.outliers}

    def check_class_sizes(self, cfg, sizes):
        """BOOD keeps ``n_per_class`` boundary features of each head class: at most the class's training images."""
        smallest, name = min((n, c) for c, n in sizes.items())
        if cfg.outliers.n_per_class > smallest:
            raise TailsynthError(
                f"key 'method_params.{self.name}.outliers.n_per_class' = {cfg.outliers.n_per_class}: BOOD keeps that "
                f"many boundary features of every head class, but class {name!r} has {smallest} training images; "
                f"allowed: 1..{smallest}")
