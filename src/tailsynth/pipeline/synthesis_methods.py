"""Synthesis methods by name: how the adapted diffusion model turns seeded noise into tail images.

Each method is ``fn(backend, guide, targets, cond, uncond, x_T, cfg, params, generator) ->
(images in [0, 1] (B, C, H, W), aux-classifier confidence of the target class (B,))``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..config import StrictConfig
from ..diffusion import ddim_sample
from ..registry import Registry

SYNTHESIS: Registry = Registry("synthesis method")


class SynthesisConfig(StrictConfig):
    """Shared by every synthesis method (LoGex: 100 images per tail class, DDIM 20 steps, CFG 3.0, seed 99)."""

    n_per_class: int = 100
    shard_size: int = 25
    seed: int = 99
    num_steps: int = 20
    guidance_scale: float = 3.0
    aux_method: str = "ldam-rw-drw"  # the auxiliary classifier (LoGex code: LDAM + DRW)
    aux_seed: int = 0
    params: dict[str, dict[str, Any]] = {}  # per synthesis method, e.g. {"logex": {"threshold": 0.4}}


class ConfidenceGuide(torch.nn.Module):
    """A classifier as a differentiable function of images in [0, 1]: the classifier's own preprocessing
    (resize to its input size, channel conversion, [0,1] -> [-1,1]) then logits. Parameters frozen."""

    def __init__(self, model: torch.nn.Module, image_size: int, channels: int):
        super().__init__()
        self.model, self.image_size, self.channels = model.eval(), image_size, channels
        self.model.requires_grad_(False)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = images01
        if x.shape[1] != self.channels:
            if self.channels == 1:
                weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                x = (x * weights).sum(1, keepdim=True)
            else:
                x = x.repeat(1, self.channels, 1, 1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model(x * 2 - 1)

    @torch.no_grad()
    def confidence(self, images01: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(images01).float().softmax(1).gather(1, targets[:, None])[:, 0]


@SYNTHESIS.register("lora")
def sample_lora(backend, guide, targets, cond, uncond, x_T, cfg: SynthesisConfig, params, generator):
    """LoGex "only LoRA": deterministic DDIM (eta 0) with classifier-free guidance, no classifier guidance."""
    with torch.no_grad():
        out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=cfg.num_steps,
                          guidance_scale=cfg.guidance_scale)
        images = backend.decode(out.sample).clamp(0, 1)
        return images, guide.confidence(images, targets)
