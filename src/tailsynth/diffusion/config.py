"""The generator of an experiment (the experiment key ``diffusion``): backend, base training, LoRA, seed."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from ..config import StrictConfig
from .backend import BACKENDS
from .lora import LoraAdaptConfig
from .train import DenoiserTrainConfig


class DiffusionConfig(StrictConfig):
    """The generator: a registered backend -- ``pixel`` (offline, trained here) or ``sd`` (a local Stable
    Diffusion 1.x folder)."""

    backend: str = "pixel"
    # PixelBackendConfig fields (size/channels/classes come from the data); data_mean: auto centres the data
    # on the per-channel mean of the base model's training images (see diffusion/pixel.py)
    pixel: dict[str, Any] = {}
    sd_path: str | None = None
    sd_resolution: int = 512  # SD generates (and LoRA trains) at this size; images are resized to the classifier's
    prompt_template: str = "A histopathological slide from a patient with {class_name}"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    base: DenoiserTrainConfig = DenoiserTrainConfig()
    lora: LoraAdaptConfig = LoraAdaptConfig()
    seed: int = 0

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        BACKENDS.get(name)  # an unknown name lists the registered backends
        return name

    def working_size(self, image_size: int) -> int:
        """Side of the images the backend generates and adapts on."""
        return BACKENDS.get(self.backend).working_size(image_size, self.sd_resolution)
