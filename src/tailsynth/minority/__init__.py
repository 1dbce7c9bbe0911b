"""Minority guidance (Um et al., ICLR 2024): minority score, ordinal levels, the noise-conditioned minority
classifier and its guidance of the sampler."""
from .classifier import MinorityClassifier, MinorityClassifierConfig, encoder_features, train_minority_classifier
from .guidance import MinorityGuidanceConfig, minority_hook, resolve_target
from .labels import level_means, quantile_labels
from .perceptual import PerceptualDistance
from .score import DISTANCES, MinorityScoreConfig, minority_scores, reference_alpha_bar, score_timestep

__all__ = ["DISTANCES", "MinorityClassifier", "MinorityClassifierConfig", "MinorityGuidanceConfig",
           "MinorityScoreConfig", "PerceptualDistance", "encoder_features", "level_means", "minority_hook",
           "minority_scores", "quantile_labels", "reference_alpha_bar", "resolve_target", "score_timestep",
           "train_minority_classifier"]
