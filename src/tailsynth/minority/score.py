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

The timestep follows the paper's rule (App. C): t = 0.6 T for a linear schedule, 0.9 T for cosine (T = the
training timesteps); the official code draws 5 noise samples and clips x0_hat, as here by default.
"""
from __future__ import annotations


import numpy as np
import torch
from pydantic import field_validator

from ..config import StrictConfig
from ..errors import TailsynthError
from ..utils import derive_seed
from .perceptual import PerceptualDistance

DISTANCES = ("l2", "l1", "perceptual")


class MinorityScoreConfig(StrictConfig):
    """How minority scores are computed (defaults: the official code's)."""

    num_draws: int = 5  # noise draws per sample
    t: int | None = None  # the perturbation timestep; None: 0.6 T (linear schedule) / 0.9 T (cosine)
    conditional: bool = True  # Eq. 16 (denoise with the sample's class condition) vs Eq. 7 (null condition)
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


def score_timestep(schedule: str, num_train_timesteps: int, t: int | None = None) -> int:
    """The perturbation timestep: ``t`` if given (must lie in 1..T-1), else 0.6 T (linear / scaled_linear schedules)
    or 0.9 T (cosine), as the paper's App. C."""
    T = int(num_train_timesteps)
    if t is None:
        return int(round((0.9 if schedule == "cosine" else 0.6) * T))
    if not 1 <= int(t) <= T - 1:
        raise TailsynthError(f"minority score timestep t = {t} is outside 1..{T - 1} (T = {T} training steps)")
    return int(t)


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
    t = score_timestep(backend_schedule(backend), T, cfg.t)
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
