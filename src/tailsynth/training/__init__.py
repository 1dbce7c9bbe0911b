"""The one classifier trainer, its configs, samplers, methods and model selection."""
from .config import AugmentConfig, TrainConfig
from .methods import METHODS, TABLE2_METHODS, MethodSpec
from .trainer import ArrayData, fit, learning_rate, predict

__all__ = ["AugmentConfig", "ArrayData", "METHODS", "MethodSpec", "TABLE2_METHODS", "TrainConfig",
           "fit", "learning_rate", "predict"]
