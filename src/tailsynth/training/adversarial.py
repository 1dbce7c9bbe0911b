"""Adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"):
each training batch is replaced by its projected-gradient-descent (PGD) attack inside an L2 or L-inf ball,

    x_adv = argmax_{||x' - x|| <= eps} CE(f(x'), y),   approximated by `steps` steps of
    x' <- Proj_ball(x' + alpha * g / ||g||_2)   (L2)   or   x' <- Proj_ball(x' + alpha * sign(g))   (L-inf),

starting at x (no random start) and clipped to the valid pixel range. Its use here: an adversarially robust
classifier has perceptually aligned input gradients (Santurkar et al. 2019, "Image Synthesis with a Single
(Robust) Classifier"; Augustin et al. 2022 guide diffusion counterfactuals with one for this reason), so an
auxiliary classifier trained this way steers DiG-IN toward images that look like the class instead of
adversarial images that only it calls the class (``synthesis.aux_train: {adversarial: {eps: 0.5}}``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..config import StrictConfig

# the classifier sees pixels in [-1, 1] (augment.to_float); eps is given in [0, 1] pixel units as in the literature
INPUT_SCALE = 2.0


class AdversarialConfig(StrictConfig):
    """PGD adversarial training; ``eps`` 0 = off. ``eps`` and ``step_size`` are in [0, 1] pixel units (CIFAR's
    robust L2 models: eps 0.5, 32 x 32 x 3). ``step_size`` None: 2.5 * eps / steps (Madry et al.'s rule)."""

    eps: float = Field(0.0, ge=0.0)
    norm: Literal["l2", "linf"] = "l2"
    steps: int = Field(3, ge=1)
    step_size: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> "AdversarialConfig":
        if self.norm == "linf" and self.eps > 1.0:
            raise ValueError(f"an L-inf radius eps = {self.eps} > 1 covers the whole [0, 1] pixel range")
        return self

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module):
    """BatchNorm keeps normalising with the batch statistics (train mode) but its running statistics are not
    updated (momentum 0), so the attack's forward passes leave the model exactly as they found it."""
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [(m, m.num_batches_tracked.clone()) for m, _ in saved if m.num_batches_tracked is not None]
    try:
        for m, _ in saved:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m, count in tracked:
            m.num_batches_tracked.copy_(count)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig,
               low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """The PGD adversarial example of ``x`` (model-input units, values in [low, high]) for labels ``y``: the
    cross-entropy of ``model(x')`` is increased by ``cfg.steps`` projected steps. Only the input gradient is
    taken (parameter gradients untouched); the model's mode is left as it is, BatchNorm running statistics
    are not updated. Returns a detached tensor."""
    eps, alpha = cfg.eps * INPUT_SCALE, cfg.alpha * INPUT_SCALE
    x0 = x.detach()
    x_adv = x0.clone()
    with frozen_batchnorm_statistics(model):
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                if cfg.norm == "l2":
                    x_adv = x_adv + alpha * grad / _per_sample_norm(grad)
                    delta = x_adv - x0
                    delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
                else:
                    x_adv = x_adv + alpha * grad.sign()
                    delta = (x_adv - x0).clamp(-eps, eps)
                x_adv = (x0 + delta).clamp(low, high)
    return x_adv.detach()
