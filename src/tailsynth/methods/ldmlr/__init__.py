"""LDMLR (Han et al. 2024) and label shift (Tian et al. 2020): the ``ldmlr``, ``la`` and ``la-ldmlr`` methods
(``method``, ``label_shift``) and LDMLR's feature-space stages (``stages``: encode, feature diffusion,
pseudo-features, with their report section)."""
from . import label_shift, method  # noqa: F401  (registers the methods)
from .label_shift import LABEL_SHIFT, LabelShiftConfig
from .method import LdmlrConfig, LdmlrHeadConfig, LdmlrObjective
from .stages import ENCODE, SAMPLE_PSEUDO, TRAIN_FEATURE_DIFFUSION, PseudoFeatureConfig, chosen_classes, pseudo_counts

__all__ = ["ENCODE", "LABEL_SHIFT", "SAMPLE_PSEUDO", "TRAIN_FEATURE_DIFFUSION", "LabelShiftConfig", "LdmlrConfig",
           "LdmlrHeadConfig", "LdmlrObjective", "PseudoFeatureConfig", "chosen_classes", "pseudo_counts"]
