"""An LPIPS-style perceptual distance on a tailsynth classifier's feature maps (Zhang et al. 2018, Eq. 1
without the learned per-channel weights, the "baseline" variant):

d(x, y) = sum_l  mean_{h,w} || n(f_l(x))_{hw} - n(f_l(y))_{hw} ||^2,   n(f)_{hw} = f_{hw} / (||f_{hw}|| + 1e-10)

over the outputs f_l of the network's residual stages (``layer1`` .. ``layer4``). The minority-guidance code
uses LPIPS-VGG; users without those weights (offline, or a domain where ImageNet features mean little) get
the same construction on a network of the benchmark (a trained classifier, or a randomly initialised one as
the paper does for brain MRI).
"""
from __future__ import annotations

import torch
from torch import nn

from ..diffusion.guidance.classifier_guide import ClassifierGuide
from ..errors import TailsynthError

STAGES = ("layer1", "layer2", "layer3", "layer4")


def unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each position's channel vector divided by its Euclidean norm (LPIPS's normalisation)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualDistance(nn.Module):
    """``distance(x, y)`` -> (B,) for images (B, C, H, W) in [0, 1]; the network is frozen and in eval mode."""

    def __init__(self, model: nn.Module, image_size: int, channels: int):
        super().__init__()
        self.guide = ClassifierGuide(model, image_size, channels)
        self.stages = [getattr(model, name) for name in STAGES if hasattr(model, name)]
        if not self.stages:
            raise TailsynthError(f"{type(model).__name__} has no residual stages {STAGES} for a perceptual distance")

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps: list[torch.Tensor] = []
        hooks = [stage.register_forward_hook(lambda _m, _i, out: maps.append(out)) for stage in self.stages]
        try:
            self.guide.model.forward_features(self.guide.preprocess(images))
        finally:
            for hook in hooks:
                hook.remove()
        return maps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(x), device=x.device)
        for fx, fy in zip(self.feature_maps(x), self.feature_maps(y)):
            total = total + (unit_normalize(fx.float()) - unit_normalize(fy.float())).pow(2).sum(1).mean(dim=(1, 2))
        return total
