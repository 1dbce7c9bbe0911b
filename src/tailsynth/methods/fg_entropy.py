"""FG-Entropy (Hemmat et al. 2023, "Feedback-guided data synthesis from diffusion models"; a LoGex Table 2
baseline): LoRA-adapted DDIM sampling whose x_t is nudged along the auxiliary classifier's entropy gradient
every 5th step (the sampler hook :class:`~tailsynth.diffusion.guidance.FgEntropyFeedback`); CE on real +
synthetic images."""
from __future__ import annotations

import torch

from ..diffusion.guidance import FgEntropyConfig, fg_entropy_sample
from .base import Method, SyntheticGenerator
from .registry import register


class FgEntropySampling(SyntheticGenerator):
    name = "fg-entropy"
    Config = FgEntropyConfig
    shares_schedule = False  # its own 30 DDIM steps and CFG 5 (official) unless synthesis.params sets them

    def generate(self, backend, guide, targets, cond, uncond, x_T, synthesis, params, generator, prepared=None):
        result = fg_entropy_sample(backend, guide, cond, uncond, x_T, params, generator, target_classes=targets)
        images = result.images.clamp(0, 1)
        with torch.no_grad():
            return images, guide.target_prob(images, targets)


@register
class FgEntropy(Method):
    name = "fg-entropy"
    reference = "Hemmat et al. 2023: CE on real + samples with classifier-entropy feedback"
    generator = FgEntropySampling()
