"""``MODELS`` registry and :func:`create_model` (timm style)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import TailsynthError
from ..registry import Registry
from .cifar_resnet import resnet32
from .resnet import resnet18, resnet34, resnet50

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("resnet18")(resnet18)
MODELS.register("resnet34")(resnet34)
MODELS.register("resnet50")(resnet50)
MODELS.register("resnet32")(resnet32)


def create_model(name: str, num_classes: int, in_channels: int = 3, width: float = 1.0,
                 small_input: bool | None = None) -> nn.Module:
    """Build a registered network with the ``forward_features`` / ``forward_head`` contract.

    ``small_input=None`` means False (ImageNet stem: 7x7/2 conv + max-pool); the caller decides True for
    images of <= 64 px (3x3/1 stem, no pooling). ResNet-32 always uses its CIFAR stem.
    """
    factory = MODELS.get(name)
    if int(num_classes) < 1:
        raise TailsynthError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    if int(in_channels) < 1:
        raise TailsynthError(f"model {name!r}: in_channels must be >= 1, got {in_channels}")
    if not width > 0:
        raise TailsynthError(f"model {name!r}: width must be > 0, got {width}")
    return factory(int(num_classes), in_channels=int(in_channels), width=float(width),
                   small_input=bool(small_input) if small_input is not None else False)
