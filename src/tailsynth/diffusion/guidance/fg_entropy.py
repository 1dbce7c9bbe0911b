"""FG-Entropy: feedback-guided synthesis with the classifier's entropy (Hemmat et al. 2023, "Feedback-guided
data synthesis from diffusion models"; the baseline "FG-entropy" of LoGex §2.2 / Table 2).

DDIM (Song et al. 2021 eq. 12, CFG w) with a per-step hook (:class:`FgEntropyFeedback`): every ``every``-th
step first moves x_t along the gradient of the classifier's predictive entropy, as the official code does
(facebookresearch/Feedback-guided-Data-Synthesis; see notes/methods-as-implemented.md):

    x0_hat = (x_t - sqrt(1 - a_t) eps_theta(x_t, t, c)) / sqrt(a_t)         (one conditional UNet call)
    s      = sqrt(1 - a_t) x0_hat + (1 - sqrt(1 - a_t)) x_t                 (blend, official code)
    H      = - sum_k p_k log p_k,  p = softmax(f(minmax(D(s))))              (entropy of the classifier)
    g      = dH/dx_t,  x_t <- x_t + sign * g * (scale ||x_t|| / ||g||)      (per sample, scale 0.03)

``sign = +1`` is entropy ASCENT, as the official code does (``latents += g``: samples the classifier is
uncertain about, i.e. informative ones); LoGex §2.2 describes FG-entropy as "enforcing low entropy", which is
``sign = -1`` (descent). The default follows the official code.

Two more details follow the official ``fg_pipe.py`` by default, each with the other choice as an option:

- ``order = "official"``: the CFG noise prediction is computed at x_t BEFORE the nudge and the DDIM update
  steps with it from the nudged x_t; ``"nudge_then_predict"`` calls the UNet again at the nudged x_t.
- ``normalization = "official"``: min-max normalisation of the UNCLAMPED decode with min and max detached
  (the gradient reaches saturated pixels and does not flow through min/max); ``"clamped"`` clamps the
  decode to [0, 1] first and back-propagates through min and max.
``every = 0`` disables the feedback (plain DDIM, identical to :func:`~tailsynth.diffusion.ddim_sample`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import model_validator

from ...config import StrictConfig
from ...errors import TailsynthError
from ..samplers import SamplerStep, StepChange, ddim_sample
from ..schedule import predict_x0
from .classifier_guide import ClassifierGuide
from .common import as_batch, autocast_for, frozen


class FgEntropyConfig(StrictConfig):
    num_steps: int = 30  # DDIM steps (official: 30)
    guidance_scale: float = 5.0  # CFG w (official: 5)
    eta: float = 0.0
    every: int = 5  # feedback every 5th step (steps 0, 5, 10, ...); 0 = no feedback
    step_scale: float = 0.03  # ||step|| = step_scale * ||x_t||
    sign: float = 1.0  # +1 entropy ascent (official code), -1 descent
    minmax_normalize: bool = True  # per-image min-max to [0, 1] before the classifier (official)
    normalization: Literal["official", "clamped"] = "official"  # see the module docstring
    order: Literal["official", "nudge_then_predict"] = "official"  # see the module docstring
    bf16: bool = True  # bf16 autocast, CUDA only

    @model_validator(mode="after")
    def _check(self) -> "FgEntropyConfig":
        if self.num_steps < 1 or self.every < 0 or self.step_scale < 0:
            raise ValueError(f"need num_steps >= 1, every >= 0, step_scale >= 0; got "
                             f"{self.num_steps}, {self.every}, {self.step_scale}")
        return self


@dataclass
class FgResult:
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    confidence: torch.Tensor  # (B,) softmax of the target class (or the max softmax without targets)
    entropy: torch.Tensor  # (B,) classifier entropy of the final images


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per row, in nats."""
    logp = logits.float().log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def _minmax(img: torch.Tensor, detach: bool) -> torch.Tensor:
    """Per-image (img - min) / (max - min); ``detach``: min and max are constants for the gradient."""
    flat = img.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    if detach:
        lo, hi = lo.detach(), hi.detach()
    shape = (-1,) + (1,) * (img.dim() - 1)
    return (img - lo.view(shape)) / (hi - lo).clamp_min(1e-8).view(shape)


def _classifier_input(backend, s: torch.Tensor, cfg: FgEntropyConfig) -> torch.Tensor:
    """What the classifier sees of the blended estimate s: min-max of the raw decode (official) or of the
    clamped decode; without min-max, the clamped decode."""
    if not cfg.minmax_normalize:
        return backend.decode(s).float()
    if cfg.normalization == "official":
        return _minmax(backend.decode(s, clamp=False).float(), detach=True)
    return _minmax(backend.decode(s).float(), detach=False)


def feedback_entropy(backend, guide: ClassifierGuide, x: torch.Tensor, t: int, a_t: torch.Tensor,
                     cond: torch.Tensor, cfg: FgEntropyConfig) -> torch.Tensor:
    """H(x_t) per sample (B,): the classifier entropy of the blended Tweedie estimate (differentiable in x)."""
    eps = backend.eps(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), cond)
    x0 = predict_x0(x, eps, a_t)
    c = (1 - a_t) ** 0.5
    s = c * x0 + (1 - c) * x
    return entropy(guide(_classifier_input(backend, s, cfg)))


def feedback_step(backend, guide: ClassifierGuide, x_t: torch.Tensor, t: int, a_t: torch.Tensor,
                  cond: torch.Tensor, cfg: FgEntropyConfig) -> torch.Tensor:
    """x_t + sign * dH/dx_t rescaled to step_scale * ||x_t|| per sample (the official FG-entropy step)."""
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad(), autocast_for(x.device, cfg.bf16):
        h = feedback_entropy(backend, guide, x, t, a_t, cond, cfg)
        (g,) = torch.autograd.grad(h.sum(), [x])
    g = g.float()
    scale = cfg.step_scale * x_t.flatten(1).norm(dim=1) / g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (x_t + cfg.sign * g * scale.view(-1, *([1] * (x_t.dim() - 1)))).detach()


class FgEntropyFeedback:
    """The FG-Entropy term as a sampler hook (:class:`~tailsynth.diffusion.samplers.StepChange`): on every
    ``every``-th step it nudges x_t with :func:`feedback_step`; the DDIM update then steps from the nudged
    x_t with the CFG noise prediction made at the un-nudged x_t (``order="official"``) or recomputed at the
    nudged one (``"nudge_then_predict"``, ``step.eps_at``)."""

    def __init__(self, backend, guide: ClassifierGuide, cond: torch.Tensor, cfg: FgEntropyConfig):
        self.backend, self.guide, self.cond, self.cfg = backend, guide, cond, cfg

    def __call__(self, step: SamplerStep) -> StepChange | None:
        if not self.cfg.every or step.index % self.cfg.every:
            return None
        x_new = feedback_step(self.backend, self.guide, step.x_t, step.t, step.alpha_t, self.cond, self.cfg)
        if self.cfg.order == "official":
            return StepChange(x_t=x_new)
        return StepChange(x_t=x_new, eps=step.eps_at(x_new).float())


def fg_entropy_sample(backend, guide: ClassifierGuide, cond: torch.Tensor, uncond: torch.Tensor, x_T: torch.Tensor,
                      cfg: FgEntropyConfig, generator: torch.Generator | None = None,
                      target_classes: torch.Tensor | None = None) -> FgResult:
    """Sample N images from x_T (N, C, h, w) with cond/uncond (N, L, D): :func:`ddim_sample` with the
    :class:`FgEntropyFeedback` hook; ``generator`` feeds eta > 0 noise."""
    n = x_T.shape[0]
    cond, uncond = as_batch("cond", cond, n, "fg_entropy"), as_batch("uncond", uncond, n, "fg_entropy")
    if cfg.eta > 0 and generator is None:
        raise TailsynthError("fg_entropy_sample with eta > 0 needs a torch.Generator")
    with frozen(backend, guide):
        with torch.no_grad(), autocast_for(x_T.device, cfg.bf16):
            out = ddim_sample(backend.eps, x_T.detach(), cond, uncond, backend.alphas_cumprod, cfg.num_steps,
                              cfg.guidance_scale, cfg.eta, generator, clip_x0=backend.clip_x0,
                              hook=FgEntropyFeedback(backend, guide, cond, cfg))
        with torch.no_grad():
            images = backend.decode(out.sample.float()).float()
            logits = guide(images)
    probs = logits.softmax(dim=1)
    if target_classes is None:
        conf = probs.max(dim=1).values
    else:
        conf = probs.gather(1, torch.as_tensor(target_classes, device=probs.device).view(-1, 1)).squeeze(1)
    return FgResult(images, conf, entropy(logits))
