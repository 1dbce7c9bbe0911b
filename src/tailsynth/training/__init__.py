"""The one classifier trainer, its configs, objectives, batch sources, samplers and model selection."""
from .batches import FeatureBatches, ImageBatches
from .config import AugmentConfig, TrainConfig
from .objectives import CriterionObjective, Objective
from .trainer import ArrayData, FeatureData, fit, learning_rate, predict, validation_logits

__all__ = ["AugmentConfig", "ArrayData", "CriterionObjective", "FeatureBatches", "FeatureData", "ImageBatches", "Objective",
           "TrainConfig", "fit", "learning_rate", "predict", "validation_logits"]
