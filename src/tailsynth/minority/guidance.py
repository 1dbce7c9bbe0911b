"""Minority guidance as a sampler hook (Um et al. 2024, Eq. 8; class-conditional Eq. 17; mixture Eq. 18).

Classifier guidance adds w grad log p(l~ | x_t, c) to the score s = -eps / sqrt(1 - abar_t). In the two
samplers of :mod:`tailsynth.diffusion.samplers`:

- DDIM (deterministic, Song et al. 2021; Dhariwal & Nichol 2021 Alg. 2):
  eps~ = eps - w sqrt(1 - abar_t) grad log p(l~ | x_t, c), and with it the Tweedie estimate moves by
  x0~ = x0 + w (1 - abar_t) / sqrt(abar_t) grad log p (x_t = sqrt(abar_t) x0~ + sqrt(1 - abar_t) eps~ still holds).
  x0 is the sampler's own (clipped, on a pixel backend) estimate and x0~ is not clipped again, as guided-diffusion's
  ``condition_score`` (the official code's base) does: clipping x0~ again would cancel the guidance's push on
  every pixel at the data bound while keeping its -w sqrt(1 - abar_t) grad in the noise direction, a step *against*
  the gradient there (on a tiny pixel model it lowered p(target level) instead of raising it). The step moves
  x_{t'} by w sqrt(1 - abar_t) (sqrt(abar_t' (1 - abar_t) / abar_t) - sqrt(1 - abar_t')) grad log p, a positive
  multiple of the gradient;
- ancestral DDPM (Dhariwal & Nichol 2021 Alg. 1, the official code's sampler):
  mu~ = mu + w Sigma grad log p(l~ | x_t, c), Sigma the posterior variance.

The mixture sampler (App. D.5) replaces log p(l~ | x_t) by log sum_i tau_i p(i | x_t) with tau_i the score
level of bin i (here: the mean minority score of the bin). w = 0 returns no change, so the hook reproduces
the plain sampler bit for bit.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..config import StrictConfig
from ..diffusion.samplers import SamplerStep, StepChange
from ..errors import TailsynthError
from .classifier import MinorityClassifier


class MinorityGuidanceConfig(StrictConfig):
    """The knobs of minority guidance: target level (None = L - 1, the rarest) and scale w."""

    target: int | None = None
    scale: float = 3.5  # the official code's classifier scale
    mode: Literal["label", "mixture"] = "label"  # Eq. 8/17, or the mixture score of Eq. 18


def resolve_target(target: int | None, num_levels: int) -> int:
    level = num_levels - 1 if target is None else int(target)
    if not 0 <= level < num_levels:
        raise TailsynthError(f"minority target level {target} is outside 0..{num_levels - 1} (L = {num_levels})")
    return level


def minority_hook(classifier: MinorityClassifier, cond: torch.Tensor, cfg: MinorityGuidanceConfig,
                  taus: torch.Tensor | None = None):
    """A :data:`~tailsynth.diffusion.samplers.StepHook` for either sampler; ``cond``: the classifier's condition
    (B, L, D) (the class tokens for Eq. 17); ``taus``: level values for ``mode: mixture``."""
    target = resolve_target(cfg.target, classifier.cfg.num_levels)
    if cfg.mode == "mixture" and taus is None:
        raise TailsynthError("mixture minority guidance needs the level values tau (the bins' mean scores)")

    def hook(step: SamplerStep) -> StepChange | None:
        if cfg.scale == 0:
            return None
        if cfg.mode == "label":
            grad = classifier.log_prob_grad(step.x_t, step.t, cond, target)
        else:
            grad = classifier.log_mixture_grad(step.x_t, step.t, cond, taus)
        if step.mean is not None:  # ancestral: shift the posterior mean by w Sigma grad
            return StepChange(mean=step.mean + cfg.scale * step.variance * grad)
        a_t = step.alpha_t
        return StepChange(eps=step.eps - cfg.scale * (1 - a_t) ** 0.5 * grad,
                          x0=step.x0_hat + cfg.scale * (1 - a_t) / a_t ** 0.5 * grad)

    return hook


@torch.no_grad()
def guided_sample(backend, x_T: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, hook, sampler: str,
                  num_steps: int, guidance_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [0, 1] from x_T by DDIM (eta 0) or ancestral DDPM (``generator`` for its noise) with CFG and the
    minority ``hook`` (the hook computes its gradient with grad enabled itself)."""
    from ..diffusion.samplers import ddim_sample, ddpm_sample
    clip = backend.clip_x0
    if sampler == "ddim":
        out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=num_steps,
                          guidance_scale=guidance_scale, clip_x0=clip, hook=hook)
    elif sampler == "ddpm":
        if generator is None:
            raise TailsynthError("ancestral (ddpm) minority sampling needs a torch.Generator")
        out = ddpm_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, generator, num_steps=num_steps,
                          guidance_scale=guidance_scale, clip_x0=clip, hook=hook)
    else:
        raise TailsynthError(f"unknown sampler {sampler!r}; valid: ddim, ddpm")
    return backend.decode(out.sample).clamp(0, 1)
