"""Noise schedules, DDIM timestep spacing and the Tweedie estimate of x0.

Notation follows DDPM (Ho et al. 2020) and DDIM (Song et al. 2021): ``alphas_cumprod[t]`` is
:math:`\\bar\\alpha_t`, the forward process is
:math:`x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon` (DDPM eq. 4) and the
noise-prediction parametrisation gives
:math:`\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\varepsilon)/\\sqrt{\\bar\\alpha_t}`
(DDIM eq. 9; Tweedie's formula for the posterior mean of x0).

Schedules (1000 training steps unless configured):

* ``scaled_linear`` -- Stable Diffusion 1.x: betas linear in sqrt space from 0.00085 to 0.012.
* ``linear`` -- DDPM: betas linear from 1e-4 to 0.02 (default of the pixel backend).
* ``cosine`` -- Nichol & Dhariwal 2021 eq. 17 (s = 0.008, betas capped at 0.999).

Computed in float32 exactly as diffusers' schedulers do, so samplers here match diffusers bit for bit.
"""
from __future__ import annotations

import math

import torch

from ..errors import TailsynthError

SCHEDULES = ("scaled_linear", "linear", "cosine")


def make_alphas_cumprod(kind: str, num_train_timesteps: int = 1000, beta_start: float | None = None,
                        beta_end: float | None = None) -> torch.Tensor:
    """:math:`\\bar\\alpha_t` for t = 0..T-1 as a float32 tensor of shape (T,)."""
    if num_train_timesteps < 2:
        raise TailsynthError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    T = num_train_timesteps
    if kind == "scaled_linear":
        b0, b1 = beta_start or 0.00085, beta_end or 0.012
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
    elif kind == "linear":
        b0, b1 = beta_start or 1e-4, beta_end or 0.02
        betas = torch.linspace(b0, b1, T, dtype=torch.float32)
    elif kind == "cosine":
        def alpha_bar(t: float) -> float:  # Nichol & Dhariwal eq. 17, s = 0.008
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                             dtype=torch.float32)
    else:
        raise TailsynthError(f"unknown noise schedule {kind!r}; valid schedules: {', '.join(SCHEDULES)}")
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> torch.Tensor:
    """Descending DDIM timesteps with diffusers' "leading" spacing (as Stable Diffusion uses it).

    ``t_i = i * (T // num_steps) + steps_offset`` for i = num_steps-1..0; e.g. 20 steps -> 951, 901, ..., 1.
    The step to the previous timestep is always ``T // num_steps`` (see :func:`prev_timestep`).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise TailsynthError(f"num_steps must be in 1..{num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    ts = torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * ratio + steps_offset
    if int(ts[0]) >= num_train_timesteps:
        raise TailsynthError(f"steps_offset {steps_offset} puts the first timestep {int(ts[0])} past "
                             f"num_train_timesteps {num_train_timesteps}")
    return ts


def prev_timestep(t: int, num_steps: int, num_train_timesteps: int = 1000) -> int:
    """The timestep a DDIM/DDPM step from ``t`` lands on (negative = the final step to x0)."""
    return int(t) - num_train_timesteps // num_steps


def alpha_at(alphas_cumprod: torch.Tensor, t: int, final_alpha_cumprod: float | torch.Tensor | None = None
             ) -> torch.Tensor:
    """:math:`\\bar\\alpha_t`; for t < 0 the final value (SD's set_alpha_to_one=False -> alphas_cumprod[0])."""
    if t >= 0:
        return alphas_cumprod[t]
    if final_alpha_cumprod is None:
        return alphas_cumprod[0]
    return torch.as_tensor(final_alpha_cumprod, dtype=alphas_cumprod.dtype)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor | float) -> torch.Tensor:
    """Tweedie / DDIM eq. 9:
    :math:`\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\varepsilon)/\\sqrt{\\bar\\alpha_t}`.

    ``alpha_bar_t`` is a scalar or a tensor broadcastable to x_t (e.g. shape (B, 1, 1, 1)).
    """
    a = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - a) ** 0.5 * eps) / a**0.5


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x0), DDPM eq. 4; ``t`` has shape (B,)."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise
