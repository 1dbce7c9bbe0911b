"""The one classifier trainer, the one step loop, their configs, objectives, batch sources, samplers and model
selection."""
from .batches import FeatureBatches, ImageBatches
from .config import AugmentConfig, TrainConfig
from .objectives import CriterionObjective, Objective
from .steps import StepLoop, StepResult
from .trainer import ArrayData, FeatureData, fit, learning_rate, predict, validation_logits

__all__ = ["AugmentConfig", "ArrayData", "CriterionObjective", "FeatureBatches", "FeatureData", "ImageBatches", "Objective",
           "StepLoop", "StepResult", "TrainConfig", "fit", "learning_rate", "predict", "validation_logits"]
