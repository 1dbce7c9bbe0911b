"""How images are decoded for the classifiers of an experiment (the experiment key ``data``)."""
from __future__ import annotations

from ..config import StrictConfig


class DataConfig(StrictConfig):
    """How images are decoded for the classifier: square ``image_size`` px, 1 or 3 channels."""

    image_size: int = 32
    channels: int = 3
    skip_corrupt: bool = False
