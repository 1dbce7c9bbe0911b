"""Classifier networks (own code; torchvision is not used) with one contract:
``forward_features(x) -> z (B, D)``, ``forward_head(z) -> logits``, ``num_features``, ``head``, ``reset_head()``."""
from .base import FeatureClassifier, kaiming_init, scaled_channels
from .cifar_resnet import CifarResNet, resnet32
from .registry import MODELS, create_model
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50

__all__ = ["MODELS", "BasicBlock", "Bottleneck", "CifarResNet", "FeatureClassifier", "ResNet", "create_model",
           "kaiming_init", "resnet18", "resnet32", "resnet34", "resnet50", "scaled_channels"]
