"""Synthesis methods by name: how the adapted diffusion model turns seeded noise into tail images.

Each method is ``fn(backend, guide, targets, cond, uncond, x_T, cfg, params, generator) ->
(images in [0, 1] (B, C, H, W), aux-classifier confidence of the target class (B,))``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..config import StrictConfig, build_config
from ..diffusion import ddim_sample
from ..diffusion.guidance import DigInConfig, FgEntropyConfig, dig_in, fg_entropy_sample
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


@torch.no_grad()
def target_confidence(guide, images01: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The auxiliary classifier's softmax of the target class on final images."""
    return guide(images01).float().softmax(1).gather(1, targets[:, None])[:, 0]


@SYNTHESIS.register("lora")
def sample_lora(backend, guide, targets, cond, uncond, x_T, cfg: SynthesisConfig, params, generator):
    """LoGex "only LoRA": deterministic DDIM (eta 0) with classifier-free guidance, no classifier guidance."""
    with torch.no_grad():
        out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=cfg.num_steps,
                          guidance_scale=cfg.guidance_scale, clip_x0=getattr(backend, "clip_x0", False))
        images = backend.decode(out.sample).clamp(0, 1)
        return images, target_confidence(guide, images, targets)


@SYNTHESIS.register("logex")
def sample_logex(backend, guide, targets, cond, uncond, x_T, cfg: SynthesisConfig, params, generator):
    """Full LoGex: DiG-IN guidance (optimise x_T and per-step embedding deltas through the DDIM chain until
    the auxiliary classifier is confident); keeps the most confident iterate (no rejection)."""
    dig_cfg = build_config(DigInConfig, {"num_steps": cfg.num_steps, "guidance_scale": cfg.guidance_scale,
                                         **params}, "synthesis.params.logex")
    result = dig_in(backend, guide, targets, cond, uncond, x_T, dig_cfg)
    return result.images.clamp(0, 1), result.confidence


@SYNTHESIS.register("fg-entropy")
def sample_fg_entropy(backend, guide, targets, cond, uncond, x_T, cfg: SynthesisConfig, params, generator):
    """FG-Entropy (Hemmat et al. 2023): every 5th DDIM step, a step on x_t along the classifier-entropy
    gradient of the blended x0-hat, rescaled to 0.03 ||x_t|| (entropy ascent, as the official code)."""
    fg_cfg = build_config(FgEntropyConfig, {"num_steps": cfg.num_steps, "guidance_scale": cfg.guidance_scale,
                                            **params}, "synthesis.params.fg-entropy")
    result = fg_entropy_sample(backend, guide, cond, uncond, x_T, fg_cfg, generator, target_classes=targets)
    return result.images.clamp(0, 1), target_confidence(guide, result.images.clamp(0, 1), targets)
