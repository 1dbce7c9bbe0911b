"""Stage 3 settings of Dream-OOD and BOOD (the stage itself: :mod:`tailsynth.methods.dream_ood.stages`)."""
from __future__ import annotations

from pydantic import Field

from ..config import StrictConfig


class DecodeConfig(StrictConfig):
    """Stage 3 sampler: DDIM with classifier-free guidance through the base model (Dream-OOD's code: PLMS 50 steps,
    CFG 7.5 on Stable Diffusion; the project's pixel generator samples with DDIM 20 / CFG 3, as its LoRA rows)."""

    num_steps: int = Field(20, ge=1)
    guidance_scale: float = 3.0
    shard_size: int = Field(25, ge=1)
    seed: int = 99
