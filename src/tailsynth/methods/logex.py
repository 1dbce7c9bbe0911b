"""LoGex (tail detection with LoRA-adapted, guided diffusion; see docs/guidance.md and the LoGex paper §3).

Step 1-2 (shared with every synthetic method): a base diffusion model on the head classes, LoRA + new
class tokens on the ~10 images per tail class. Step 3: synthetic tail images, either

- ``logex-lora`` ("only LoRA", LoGex Table 2): deterministic DDIM (eta 0) with classifier-free guidance;
- ``logex``: DiG-IN guidance (Augustin et al. 2024) -- optimise x_T and per-step embedding deltas through
  the whole DDIM chain with Adam until the auxiliary classifier's target softmax reaches the threshold
  (0.4), keeping the most confident iterate (no rejection).

Step 4: CE on real + synthetic images; the test score is P(tail) = sum over tail classes of the softmax.
"""
from __future__ import annotations

import numpy as np
import torch

from ..diffusion import sample_images
from ..diffusion.guidance import DigInConfig, dig_in
from ..engine.artifacts import images_of, read_split
from .base import Method, SyntheticGenerator
from .registry import register


class LoraSampling(SyntheticGenerator):
    """LoGex "only LoRA": DDIM eta 0, CFG ``synthesis.guidance_scale``, no classifier guidance."""

    name = "lora"

    def generate(self, backend, guide, targets, cond, uncond, x_T, synthesis, params, generator, prepared=None):
        images = sample_images(backend, x_T, cond, uncond, synthesis.num_steps, synthesis.guidance_scale)
        with torch.no_grad():
            return images, guide.target_prob(images, targets)


class DigInSampling(SyntheticGenerator):
    """Full LoGex: DiG-IN through the DDIM chain (:func:`tailsynth.diffusion.guidance.dig_in`). With
    ``realism_weight > 0`` the auxiliary's class prototypes of the real training images of the tail classes are
    computed once per synthesis stage (:meth:`ClassifierGuide.prototypes`)."""

    name = "logex"
    Config = DigInConfig

    def prepare(self, inputs, backend, device, params, guide=None, data=None):
        if params.realism_weight == 0:
            return None
        split = read_split(inputs["split"])
        tail = list(split.tail_classes)
        images, positions = images_of(split, data, tail)
        labels = torch.as_tensor(np.asarray(tail)[positions], dtype=torch.long)
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)
        return guide.prototypes(x, labels, len(split.class_names))

    def generate(self, backend, guide, targets, cond, uncond, x_T, synthesis, params, generator, prepared=None):
        result = dig_in(backend, guide, targets, cond, uncond, x_T, params, generator, prototypes=prepared)
        return result.images.clamp(0, 1), result.confidence


@register
class LogexLora(Method):
    name = "logex-lora"
    reference = "LoGex 'only LoRA': CE on real + LoRA-adapted diffusion samples (no guidance)"
    generator = LoraSampling()


@register
class Logex(Method):
    name = "logex"
    reference = "LoGex: CE on real + LoRA samples guided by DiG-IN through the DDIM chain"
    generator = DigInSampling()
