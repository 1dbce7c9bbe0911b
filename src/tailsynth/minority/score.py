"""Minority score (Um et al. 2024, "Don't play favorites: minority guidance for diffusion models", §3.2).

l(x0) = E_{x_t ~ q(x_t | x0)} [ d(x0, x0_hat(x_t)) ]                                   (Eq. 7)

with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at one fixed timestep t and x0_hat the Tweedie estimate
(x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t) (Eq. 6). A sample the model reconstructs badly from
a heavily noised version is one whose features the model finds unusual: the higher l, the rarer. The
class-conditional version (App. B, Eq. 16) denoises with the sample's own class condition; the
unconditional one with the null (CFG) condition.

Distances d, all computed in one pass over the same noise draws:

- ``l2``: squared Euclidean distance in the diffusion space (pixels, or SD latents). Without clipping of
  x0_hat, Corollary 1 gives l = (1 - abar_t)/abar_t E||eps_theta - eps||^2.
- ``l1``: absolute distance in the diffusion space.
- ``perceptual``: LPIPS-style (Zhang et al. 2018, without its learned layer weights): the decoded images go
  through a classifier; each stage's feature map is unit-normalised over channels, the squared difference
  is averaged over positions and summed over stages. The official code uses LPIPS-VGG; any tailsynth
  classifier (the experiment's CE classifier by default) stands in for VGG here.

The timestep follows the paper's rule (App. C, D.6): t = 0.6 T for a linear schedule, 0.9 T for cosine (T = the
training timesteps). Both are one noise level, abar_t ~ 0.025 (DDPM's linear schedule at t = 600 of 1000: 0.0256;
cosine at 900 of 1000: 0.0236), so on any other schedule (Stable Diffusion's ``scaled_linear``, where 0.6 T would be
abar = 0.16) t is the step whose abar is nearest that of the linear schedule at 0.6 T (``scaled_linear``: t = 840).
The official code draws 5 noise samples and clips x0_hat, as here by default.

Two settings, never mixed (App. B): the unconditional score (Eq. 7, null condition) with levels over all images and
the classifier p(l~ | x_t) of Eq. 8, or the class-conditional score (Eq. 16) with levels within each class and
p(l~ | x_t, c) of Eq. 17. ``conditional`` here is set by the method's ``mode``
(:class:`tailsynth.methods.minority.MinoritySettings`), which sets the classifier's to the same value.
"""
from __future__ import annotations


import numpy as np
import torch
from pydantic import field_validator

from ..config import StrictConfig
from ..diffusion.schedule import make_alphas_cumprod
from ..errors import TailsynthError
from ..utils import derive_seed
from .perceptual import PerceptualDistance

DISTANCES = ("l2", "l1", "perceptual")
# the paper's rule: the fraction of T for the schedules it names (App. C)
RULE_FRACTIONS = {"linear": 0.6, "cosine": 0.9}


class MinorityScoreConfig(StrictConfig):
    """How minority scores are computed (defaults: the official code's)."""

    num_draws: int = 5  # noise draws per sample
    # the perturbation timestep (1..T-1); None: 0.6 T (linear) / 0.9 T (cosine) / the step of that noise level
    t: int | None = None
    conditional: bool = True  # Eq. 16 (the sample's class condition) vs Eq. 7 (null condition); set by ``mode``
    clip_x0: bool = True  # clip x0_hat to the data range as the sampler does (the official code clips)
    batch_size: int = 128
    chunk_size: int = 512  # samples per resumable chunk
    seed: int = 0

    @field_validator("num_draws", "batch_size", "chunk_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value


def reference_alpha_bar() -> float:
    """The noise level of the paper's rule: abar of DDPM's linear schedule (T = 1000) at t = 0.6 T (0.0256)."""
    return float(make_alphas_cumprod("linear", 1000)[round(RULE_FRACTIONS["linear"] * 1000)])


def score_timestep(schedule: str, num_train_timesteps: int, t: int | None = None,
                   alphas_cumprod: torch.Tensor | None = None) -> int:
    """The perturbation timestep: ``t`` if given (must lie in 1..T-1); else the paper's rule, 0.6 T on a linear
    schedule and 0.9 T on a cosine one (App. C), and on any other schedule the step in 1..T-1 whose abar
    (``alphas_cumprod``, or the named schedule's defaults) is nearest :func:`reference_alpha_bar`."""
    T = int(num_train_timesteps)
    if t is not None:
        if not 1 <= int(t) <= T - 1:
            raise TailsynthError(f"minority score timestep t = {t} is outside 1..{T - 1} (T = {T} training steps)")
        return int(t)
    if schedule in RULE_FRACTIONS:
        return int(round(RULE_FRACTIONS[schedule] * T))
    acp = make_alphas_cumprod(schedule, T) if alphas_cumprod is None else alphas_cumprod
    if len(acp) != T:
        raise TailsynthError(f"alphas_cumprod has {len(acp)} steps, the schedule {T}")
    gap = (acp[1:].double() - reference_alpha_bar()).abs()
    return 1 + int(torch.argmin(gap))


def backend_schedule(backend) -> str:
    """The schedule name of a backend (pixel: its config's ``schedule``; SD: its scheduler folder's, scaled_linear
    for SD-1.x)."""
    return backend.schedule


def draw_distances(backend, z0: torch.Tensor, cond: torch.Tensor, t: int, noise: torch.Tensor,
                   clip_x0: bool, perceptual: PerceptualDistance | None) -> dict[str, torch.Tensor]:
    """d(x0, x0_hat) for one noise draw: a dict distance name -> (B,) float64 tensor, plus ``eps_sq``, the squared
    noise-prediction error ||eps_theta - eps||^2 (Corollary 1's right-hand side)."""
    from ..diffusion.samplers import clip_x0_hat
    from ..diffusion.schedule import add_noise, predict_x0
    acp = backend.alphas_cumprod.to(z0.device)
    tt = torch.full((len(z0),), t, dtype=torch.long, device=z0.device)
    x_t = add_noise(z0, noise, tt, acp)
    eps = backend.eps(x_t, tt, cond)
    x0_hat = predict_x0(x_t, eps, acp[t])
    if clip_x0:
        x0_hat = clip_x0_hat(x0_hat, backend.clip_x0)
    diff = (x0_hat - z0).double().flatten(1)
    out = {"l2": diff.pow(2).sum(1), "l1": diff.abs().sum(1),
           "eps_sq": (eps - noise).double().flatten(1).pow(2).sum(1)}
    if perceptual is not None:
        out["perceptual"] = perceptual(backend.decode(z0), backend.decode(x0_hat)).double()
    return out


@torch.no_grad()
def minority_scores(backend, images01: torch.Tensor, cond_ids: torch.Tensor | None, cfg: MinorityScoreConfig,
                    perceptual: PerceptualDistance | None = None, chunk_index: int = 0) -> dict[str, np.ndarray]:
    """Minority scores of one chunk of images (B, C, H, W) in [0, 1] at the backend's working size.

    ``cond_ids``: each image's condition id (class-conditional score, Eq. 16) or None (null condition, Eq. 7).
    Noise comes from a generator seeded by (cfg.seed, chunk_index), so a chunk's scores do not depend on which
    other chunks were computed before (a resumed scoring run gives the same numbers). Returns name -> (B,)
    float64 arrays: the distances of :data:`DISTANCES` (``perceptual`` only with a network) averaged over the
    draws, and ``eps_sq``.
    """
    if cfg.conditional and cond_ids is None:
        raise TailsynthError("a class-conditional minority score (conditional: true) needs the condition ids")
    device = next(backend.denoiser.parameters()).device
    T = backend.alphas_cumprod.shape[0]
    t = score_timestep(backend_schedule(backend), T, cfg.t, backend.alphas_cumprod)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "minority-score", chunk_index))
    totals: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images01), cfg.batch_size):
        x = images01[start:start + cfg.batch_size].to(device)
        z0 = backend.encode(x)
        if cfg.conditional:
            cond = backend.encode_condition(class_ids=cond_ids[start:start + cfg.batch_size].to(device))
        else:
            cond = backend.null_condition(len(x)).to(device)
        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.num_draws):
            noise = torch.randn(z0.shape, generator=gen).to(device)
            for name, value in draw_distances(backend, z0, cond, t, noise, cfg.clip_x0, perceptual).items():
                sums[name] = sums.get(name, 0) + value.cpu()
        for name, value in sums.items():
            totals.setdefault(name, []).append(value / cfg.num_draws)
    return {name: torch.cat(parts).numpy() for name, parts in totals.items()}
