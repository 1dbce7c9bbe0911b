"""Guided samples for a grid of target levels x scales (Um et al. 2024, Figs. 15-16): the same x_T in every cell,
so rows differ only by the guidance; used by ``tailsynth minority sample`` and the figures stage."""
from __future__ import annotations

import numpy as np
import torch

from ...minority import MinorityGuidanceConfig, minority_hook
from ...minority.guidance import guided_sample


def level_scale_rows(backend, classifier, cond: torch.Tensor, uncond: torch.Tensor, x_T: torch.Tensor,
                     levels: list[int], scales: list[float], sampler: str, num_steps: int, guidance_scale: float,
                     noise_seed: int) -> list[tuple[str, np.ndarray]]:
    """Figs. 15-16 of the paper: one row of uint8 images (n, H, W, C) per (target level, scale w), all from the
    same x_T (and, for ancestral sampling, the same noise), so rows differ only by the guidance."""
    c_cond = cond if classifier.cfg.conditional else uncond
    rows = []
    for level in levels:
        for w in scales:
            hook = minority_hook(classifier, c_cond, MinorityGuidanceConfig(target=level, scale=w))
            images = guided_sample(backend, x_T, cond, uncond, hook, sampler, num_steps, guidance_scale,
                                   torch.Generator().manual_seed(noise_seed))
            rows.append((f"l~={level}, w={w:g}", to_uint8(images)))
    return rows


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8."""
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
