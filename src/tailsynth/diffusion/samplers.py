"""Samplers as explicit loops: DDIM (Song et al. 2021, eq. 12) and DDPM ancestral (Ho et al. 2020, Alg. 2).

Each sampler is a pure function of (eps_fn, x_T, cond, uncond, schedule, generator): no scheduler object,
no hidden state, so a guidance method (DiG-IN, LoGex §3 step 3) can backpropagate from the final sample
or from any step's x0-hat back to x_T and to the conditions. ``checkpoint=True`` wraps each step in
``torch.utils.checkpoint`` to trade compute for memory along the chain. Noise is drawn from the
``torch.Generator`` passed in (same seed -> same images); noise for a step is drawn outside the
checkpointed function so recomputation is exact.

Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + w (eps_c - eps_u), computed in one batched
forward pass; w = 1 or ``uncond=None`` uses the conditional prediction only.

Per-step hook (the seam for guidance terms, as k-diffusion's ``callback`` / diffusers'
``callback_on_step_end``): ``hook(step: SamplerStep) -> StepChange | None`` is called at every step after
the CFG noise prediction and the Tweedie x0-hat are computed and before the update. It may return a new
noise prediction (classifier / minority guidance: eps - w sqrt(1 - a_t) grad log p) with, in DDIM, the x0-hat
that goes with it (used as is: a clipped x0-hat would drop the guidance's part of the step and keep the rest), a
new x_t to step from (FG-Entropy's nudge), or, in ancestral sampling, a new posterior mean (Dhariwal & Nichol 2021
Alg. 1: mu + s Sigma grad log p). ``step.eps_at(x)`` is the CFG prediction at another x (same t and conditions).
``hook=None`` runs the plain loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ..errors import TailsynthError
from .schedule import alpha_at, ddim_timesteps, predict_x0

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleOutput:
    sample: torch.Tensor  # x_0 in diffusion space (B, C, h, w)
    x0_hats: list[torch.Tensor] = field(default_factory=list)  # Tweedie x0-hat per step, if requested
    timesteps: list[int] = field(default_factory=list)


def guided_eps(eps_fn: EpsFn, x_t: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None,
               guidance_scale: float) -> torch.Tensor:
    """CFG noise prediction eps_u + w (eps_c - eps_u) at integer timestep ``t`` for a batch x_t (B, C, h, w)."""
    b = x_t.shape[0]
    if uncond is None or guidance_scale == 1.0:
        return eps_fn(x_t, torch.full((b,), t, dtype=torch.long, device=x_t.device), cond)
    tt = torch.full((2 * b,), t, dtype=torch.long, device=x_t.device)
    eps_u, eps_c = eps_fn(torch.cat([x_t, x_t]), tt, torch.cat([uncond, cond])).chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@dataclass
class SamplerStep:
    """What a per-step hook reads (all tensors (B, C, h, w) unless noted; ``alpha_*`` are 0-d)."""

    index: int  # 0 = first (noisiest) step
    t: int
    x_t: torch.Tensor
    eps: torch.Tensor  # CFG noise prediction at x_t
    x0_hat: torch.Tensor  # Tweedie estimate (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped as the sampler clips
    alpha_t: torch.Tensor  # abar_t
    alpha_prev: torch.Tensor  # abar of the next (less noisy) timestep
    eps_at: Callable[[torch.Tensor], torch.Tensor]  # CFG noise prediction at another x, same t and conditions
    mean: torch.Tensor | None = None  # ancestral sampling: posterior mean of x_{t'}
    variance: torch.Tensor | None = None  # ancestral sampling: posterior variance (0-d)


@dataclass
class StepChange:
    """A hook's answer; fields left None keep the sampler's own value."""

    eps: torch.Tensor | None = None  # the noise prediction the update uses
    x_t: torch.Tensor | None = None  # DDIM: step from this x_t instead
    x0: torch.Tensor | None = None  # DDIM: the x0-hat of the update, used as is (not clipped again)
    mean: torch.Tensor | None = None  # ancestral sampling: this posterior mean (applied after ``eps``)


StepHook = Callable[[SamplerStep], "StepChange | None"]

ClipX0 = bool | tuple[torch.Tensor, torch.Tensor] | None


def clip_x0_hat(x0: torch.Tensor, clip_x0: ClipX0) -> torch.Tensor:
    """Clip the Tweedie x0-hat to the data range: ``True`` -> [-1, 1]; a (lo, hi) pair of tensors broadcastable to
    x0 -> per-channel bounds (a centred pixel backend); ``False``/``None`` -> unchanged (latent space)."""
    if clip_x0 is None or clip_x0 is False:
        return x0
    if clip_x0 is True:
        return x0.clamp(-1.0, 1.0)
    lo, hi = clip_x0
    return torch.clamp(x0, lo.to(x0.device, x0.dtype), hi.to(x0.device, x0.dtype))


def ddim_update(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor, eta: float = 0.0,
                noise: torch.Tensor | None = None, clip_x0: ClipX0 = False,
                x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step (eq. 12) from x_t to x_{t'}; returns (x_prev, x0_hat).

    sigma_t = eta sqrt((1-a_prev)/(1-a_t)) sqrt(1 - a_t/a_prev) (eq. 16);
    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma * noise, with x0_hat the (clipped)
    Tweedie estimate from ``eps``, or ``x0`` as given (a hook's, :class:`StepChange`).
    """
    x0 = clip_x0_hat(predict_x0(x_t, eps, a_t), clip_x0) if x0 is None else x0
    sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise TailsynthError("ddim_update with eta > 0 needs a noise tensor")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def _at_step(cond, i: int):
    return cond[i] if isinstance(cond, (list, tuple)) else cond


def _check_per_step(cond, uncond, num_steps: int) -> None:
    for name, c in (("cond", cond), ("uncond", uncond)):
        if isinstance(c, (list, tuple)) and len(c) != num_steps:
            raise TailsynthError(f"{name} has {len(c)} per-step conditions for {num_steps} DDIM steps")


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``like``'s device."""
    gen_device = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T ~ N(0, I) from ``generator`` (drawn on its device so CPU seeds give the same x_T on any device)."""
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return z.to(device=device, dtype=dtype)


def ddim_sample(eps_fn: EpsFn, x_T: torch.Tensor, cond, uncond,
                alphas_cumprod: torch.Tensor, num_steps: int = 20, guidance_scale: float = 3.0, eta: float = 0.0,
                generator: torch.Generator | None = None, steps_offset: int = 1,
                final_alpha_cumprod: float | None = None, clip_x0: ClipX0 = False, checkpoint: bool = False,
                return_x0_hats: bool = False, hook: StepHook | None = None) -> SampleOutput:
    """DDIM sampling from x_T (B, C, h, w) with "leading" timesteps (:func:`ddim_timesteps`).

    eta = 0 is deterministic and differentiable end to end (used by DiG-IN / LoGex with 20 steps, CFG 3).
    ``cond`` / ``uncond`` are (B, L, D) tensors or lists of one tensor per step (DiG-IN optimises per-timestep
    deltas on the embeddings). ``return_x0_hats`` keeps each step's Tweedie x0-hat (in the autograd graph).
    ``final_alpha_cumprod`` None uses alphas_cumprod[0] for the last step (SD's set_alpha_to_one=False).
    ``hook`` (see the module docstring) is called at every step; steps with a hook are not checkpointed.
    """
    if eta > 0 and generator is None:
        raise TailsynthError("ddim_sample with eta > 0 needs a torch.Generator")
    T = alphas_cumprod.shape[0]
    acp = alphas_cumprod.to(x_T.device)
    timesteps = [int(t) for t in ddim_timesteps(num_steps, T, steps_offset)]
    _check_per_step(cond, uncond, num_steps)
    x, out = x_T, SampleOutput(sample=x_T, timesteps=timesteps)
    for i, t in enumerate(timesteps):
        c_i, u_i = _at_step(cond, i), _at_step(uncond, i)
        a_t, a_prev = acp[t], alpha_at(acp, t - T // num_steps, final_alpha_cumprod).to(x.device)
        noise = _noise(x, generator) if eta > 0 else None

        def step(x_in: torch.Tensor, cond_in: torch.Tensor, uncond_in: torch.Tensor | None,
                 t=t, a_t=a_t, a_prev=a_prev, noise=noise) -> tuple[torch.Tensor, torch.Tensor]:
            eps = guided_eps(eps_fn, x_in, t, cond_in, uncond_in, guidance_scale)
            return ddim_update(x_in, eps, a_t, a_prev, eta, noise, clip_x0)

        if hook is not None:
            x, x0 = _hooked_ddim_step(hook, eps_fn, x, i, t, c_i, u_i, guidance_scale, a_t, a_prev, eta, noise,
                                      clip_x0)
        elif checkpoint and torch.is_grad_enabled():
            x, x0 = torch_checkpoint(step, x, c_i, u_i, use_reentrant=False)
        else:
            x, x0 = step(x, c_i, u_i)
        if return_x0_hats:
            out.x0_hats.append(x0)
    out.sample = x
    return out


def _hooked_ddim_step(hook: StepHook, eps_fn: EpsFn, x: torch.Tensor, i: int, t: int, cond, uncond,
                      guidance_scale: float, a_t, a_prev, eta: float, noise, clip_x0: ClipX0):
    """One DDIM step whose noise prediction / starting point the hook may replace."""
    def eps_at(z: torch.Tensor) -> torch.Tensor:
        return guided_eps(eps_fn, z, t, cond, uncond, guidance_scale)

    eps = eps_at(x)
    x0 = clip_x0_hat(predict_x0(x, eps, a_t), clip_x0)
    change = hook(SamplerStep(i, t, x, eps, x0, a_t, a_prev, eps_at))
    if change is not None:
        x = change.x_t if change.x_t is not None else x
        eps = change.eps if change.eps is not None else eps
        if change.x0 is not None:
            return ddim_update(x, eps, a_t, a_prev, eta, noise, x0=change.x0)
    return ddim_update(x, eps, a_t, a_prev, eta, noise, clip_x0)


def posterior_mean(x_t: torch.Tensor, x0: torch.Tensor, a_t, a_prev) -> torch.Tensor:
    """Mean of q(x_{t'} | x_t, x0): sqrt(a_{t'}) beta_t/(1-a_t) x0 + sqrt(1-beta_t)(1-a_{t'})/(1-a_t) x_t."""
    beta = 1 - a_t / a_prev
    return (a_prev**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x_t


def ddpm_sample(eps_fn: EpsFn, x_T: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                alphas_cumprod: torch.Tensor, generator: torch.Generator, num_steps: int | None = None,
                guidance_scale: float = 1.0, clip_x0: ClipX0 = False, hook: StepHook | None = None) -> SampleOutput:
    """Ancestral sampling (DDPM Alg. 2) with the posterior q(x_{t'} | x_t, x0_hat) and variance beta~ ("fixed_small").

    With ``num_steps`` < T the chain is respaced to the "leading" timesteps (steps_offset 0), as diffusers'
    DDPMScheduler does: beta_t = 1 - a_t / a_{t'}; mean = sqrt(a_{t'}) beta_t/(1-a_t) x0_hat
    + sqrt(1-beta_t)(1-a_{t'})/(1-a_t) x_t; variance = (1-a_{t'})/(1-a_t) beta_t (clamped at 1e-20).
    ``hook`` (module docstring) sees the mean and variance and may replace eps (the mean is then recomputed)
    or the mean itself (classifier guidance's mean shift, Eq. 8 of minority guidance).
    """
    T = alphas_cumprod.shape[0]
    n = num_steps or T
    acp = alphas_cumprod.to(x_T.device)
    timesteps = [int(t) for t in ddim_timesteps(n, T, steps_offset=0)]
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = acp[t]
        a_prev = acp[t - T // n] if t - T // n >= 0 else torch.ones((), device=x.device)
        beta = 1 - a_t / a_prev
        var = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
        eps = guided_eps(eps_fn, x, t, cond, uncond, guidance_scale)
        x0 = clip_x0_hat(predict_x0(x, eps, a_t), clip_x0)
        mean = posterior_mean(x, x0, a_t, a_prev)
        if hook is not None:
            def eps_at(z: torch.Tensor, t=t) -> torch.Tensor:
                return guided_eps(eps_fn, z, t, cond, uncond, guidance_scale)

            change = hook(SamplerStep(i, t, x, eps, x0, a_t, a_prev, eps_at, mean, var))
            if change is not None and change.eps is not None:
                x0 = clip_x0_hat(predict_x0(x, change.eps, a_t), clip_x0)
                mean = posterior_mean(x, x0, a_t, a_prev)
            if change is not None and change.mean is not None:
                mean = change.mean
        if t > 0:
            mean = mean + var**0.5 * _noise(x, generator)
        x = mean
    return SampleOutput(sample=x, timesteps=timesteps)


@torch.no_grad()
def sample_images(backend, x_T: torch.Tensor, cond, uncond, num_steps: int = 20,
                  guidance_scale: float = 3.0) -> torch.Tensor:
    """Plain (unguided) generation through a backend: DDIM eta 0 with CFG from x_T, decoded to images in [0, 1]
    (LoGex "only LoRA"; Dream-OOD / BOOD's outlier decoding)."""
    out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=num_steps,
                      guidance_scale=guidance_scale, clip_x0=backend.clip_x0)
    return backend.decode(out.sample).clamp(0, 1)
