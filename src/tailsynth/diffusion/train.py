"""The one training loop for denoisers: base training (pixel backend) and LoRA adaptation share it.

Objective (DDPM eq. 14, "simple" loss): E_{x0, c, t, eps} || eps - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps, t, c) ||^2
with t ~ U{0..T-1}, eps ~ N(0, I), and the condition c replaced by the null condition with probability
``cond_dropout`` (10 % by default) so the model also learns the unconditional score for classifier-free
guidance (Ho & Salimans 2022). AdamW, optional warmup + cosine learning rate, optional EMA of the trained
weights (decay min(ema_decay, (1+step)/(10+step))), random flips. Which parameters train is an argument
(all for base training; LoRA adapters and new class tokens for adaptation, see :mod:`tailsynth.diffusion.lora`).

With several processes (``tailsynth.distributed``: torchrun / accelerate launch) training is data-parallel:
every rank draws the same seeded global batch and the same t, noise, dropout and flips, trains on its
contiguous slice, and the gradients are summed over ranks with each rank's loss weighted by its share of the
batch -- the single-process step on the global batch up to float summation order (the denoisers use
GroupNorm, no batch statistics). Gradient clipping, AdamW and the EMA then run identically on every rank;
rank 0 alone writes checkpoints, and every rank resumes from them.

The steps run in the step loop (:class:`tailsynth.training.steps.StepLoop`): gradient clipping, the learning
rate schedule, the EMA, the gradient sum over ranks and a checkpoint every ``checkpoint_every`` steps (trained
parameters, EMA, AdamW state, noise generator state, ``train_state.json`` last). A resumed run reproduces the
uninterrupted run exactly: batch order is a function of (seed, epoch) and all other randomness comes from the
saved generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..config import StrictConfig, to_dict
from ..errors import TailsynthError
from ..training.steps import LossFn, StepLoop, batch_indices
from ..utils import stable_hash
from .schedule import add_noise


class DenoiserTrainConfig(StrictConfig):
    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    cond_dropout: float = 0.1
    ema_decay: float = 0.9999  # 0 disables EMA
    hflip: bool = True
    vflip: bool = False
    checkpoint_every: int = 1000
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast on CUDA only
    progress: bool = True  # and TAILSYNTH_PROGRESS is not 0


@dataclass
class TrainResult:
    workdir: Path
    step: int  # steps done in total
    finished: bool
    losses: list[float] = field(default_factory=list)  # this call's per-step losses


def check_images(images, labels, num_ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, C) images (C = 1 or 3) and (N,) integer labels as tensors; clear errors otherwise."""
    x = torch.as_tensor(np.asarray(images))
    y = torch.as_tensor(np.asarray(labels)).long().view(-1)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] not in (1, 3):
        raise TailsynthError(f"images must be uint8 of shape (N, H, W, 1 or 3), got {x.dtype} {tuple(x.shape)}")
    if y.shape[0] != x.shape[0] or x.shape[0] == 0:
        raise TailsynthError(f"{x.shape[0]} images but {y.shape[0]} labels (need the same, > 0)")
    if num_ids is not None and (int(y.min()) < 0 or int(y.max()) >= num_ids):
        raise TailsynthError(f"labels must be in 0..{num_ids - 1}, got {int(y.min())}..{int(y.max())}")
    return x, y


def lr_factor(step: int, cfg: DenoiserTrainConfig) -> float:
    """Linear warmup then constant or half-cosine decay to 0 (diffusers' get_cosine_schedule_with_warmup)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def fit_denoiser(backend, params: dict[str, torch.nn.Parameter], images, cond_ids, cfg: DenoiserTrainConfig,
                 workdir: str | Path, device: torch.device | str, seed: int,
                 max_new_steps: int | None = None, lr_by_param: dict[str, float] | None = None) -> TrainResult:
    """Train ``params`` (name -> Parameter of ``backend``) on uint8 images with condition ids ``cond_ids``.

    ``lr_by_param`` gives some parameters (by name) their own peak learning rate and no weight decay, e.g.
    the new class tokens of LoRA adaptation, which must move much further than the low-rank updates
    (textual inversion trains tokens at 5e-3). The schedule (warm-up, cosine) applies to every group.

    ``max_new_steps`` stops (after a checkpoint) once this call has done that many steps; a later call
    with the same workdir resumes. A finished workdir loads its final weights and returns at once.
    """
    workdir, device = Path(workdir), torch.device(device)
    x_all, y_all = check_images(images, cond_ids, len(backend.class_names))
    if x_all.shape[1] != x_all.shape[2]:
        raise TailsynthError(f"images must be square, got {x_all.shape[1]}x{x_all.shape[2]}")
    backend.latent_shape(int(x_all.shape[1]))  # raises if the backend cannot take this resolution
    lr_by_param = dict(lr_by_param or {})
    unknown = sorted(set(lr_by_param) - set(params))
    if unknown:
        raise TailsynthError(f"lr_by_param names parameters that are not trained: {unknown}")
    key = {"cfg": to_dict(cfg), "seed": seed, "params": sorted(params), "n": len(y_all)}
    if lr_by_param:
        key["lr_by_param"] = dict(sorted(lr_by_param.items()))
    backend.to(device)
    named = dict(sorted(params.items()))
    groups = [{"params": [p for k, p in named.items() if k not in lr_by_param], "peak_lr": cfg.lr}]
    groups += [{"params": [named[k]], "peak_lr": lr, "weight_decay": 0.0} for k, lr in sorted(lr_by_param.items())]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)  # t, noise, dropout and flips
    parallel = distributed.active()
    loop = StepLoop(named, opt, gen, workdir, cfg.steps, stable_hash(key), to_dict(cfg), cfg.checkpoint_every, device,
                    "a run with another config/seed/data; use a fresh workdir", ema_decay=cfg.ema_decay,
                    grad_clip=cfg.grad_clip,
                    lr_at=lambda step: [g["peak_lr"] * lr_factor(step, cfg) for g in opt.param_groups],
                    data_parallel=parallel, write=distributed.world()[0] == 0, module=backend.denoiser,
                    desc="denoiser", progress=cfg.progress)
    done = loop.run(denoiser_loss(backend, x_all, y_all, cfg, seed, gen, device, parallel), max_new_steps)
    return TrainResult(workdir, done.step, done.finished, done.losses)


def denoiser_loss(backend, x_all: torch.Tensor, y_all: torch.Tensor, cfg: DenoiserTrainConfig, seed: int,
                  gen: torch.Generator, device: torch.device, parallel: bool) -> LossFn:
    """The loss of step k: batch k of the seeded batch order, random flips, t, noise and condition dropout drawn
    from ``gen``. With ``parallel`` every rank draws the global batch's randomness, trains on its contiguous slice
    and weights its loss by its share of the batch (the step loop sums the gradients over the ranks)."""
    T = backend.alphas_cumprod.shape[0]
    acp = backend.alphas_cumprod.to(device)

    def loss_at(step: int) -> torch.Tensor:
        idx = batch_indices(step, cfg.batch_size, len(y_all), seed)
        n = len(idx)
        mine = distributed.batch_slice(n) if parallel else slice(None)  # this rank's share of the global batch
        x0 = x_all[idx].permute(0, 3, 1, 2).float().div(255.0)
        x0 = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1) & cfg.hflip, x0.flip(-1), x0)
        x0 = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1) & cfg.vflip, x0.flip(-2), x0)
        t = torch.randint(0, T, (n,), generator=gen)
        drop = (torch.rand(n, generator=gen) < cfg.cond_dropout).to(device).view(-1, 1, 1)
        with torch.no_grad():
            z0 = backend.encode(x0[mine].to(device))
        noise = torch.randn((n, *z0.shape[1:]), generator=gen)[mine].to(device)  # the global batch's draws
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=cfg.mixed_precision == "bf16" and device.type == "cuda"):
            cond = backend.encode_condition(y_all[idx][mine].to(device))
            cond = torch.where(drop[mine], backend.null_condition(len(cond)).to(cond.dtype), cond)
            pred, target = prediction_and_target(backend, z0, noise, t[mine].to(device), cond, acp)
        loss = F.mse_loss(pred.float(), target)
        return loss * (len(z0) / n) if parallel else loss

    return loss_at


def prediction_and_target(backend, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                          acp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoiser's output on x_t = sqrt(acp_t) z0 + sqrt(1 - acp_t) noise and its regression target: the noise
    (DDPM, Ho et al. 2020 eq. 14) or, for a backend with ``prediction == "v"``, v = sqrt(acp_t) noise -
    sqrt(1 - acp_t) z0 (Salimans & Ho 2022)."""
    x_t = add_noise(z0, noise, t, acp)
    if backend.prediction == "v":
        a = acp[t].view(-1, 1, 1, 1)
        return backend.model_output(x_t, t, cond), a.sqrt() * noise - (1.0 - a).sqrt() * z0
    return backend.eps(x_t, t, cond), noise


def train_denoiser(backend, images, labels, cfg: DenoiserTrainConfig, workdir: str | Path,
                   device: torch.device | str, generator_seed: int, max_new_steps: int | None = None) -> TrainResult:
    """Base training (e.g. the pixel backend on the head classes): every parameter of the backend trains.

    ``labels`` are condition ids 0..len(backend.class_names)-1. After training, the backend holds the EMA
    weights (when ``ema_decay`` > 0) and ``workdir/final.safetensors`` stores them.
    """
    params = {k: p for k, p in backend.named_parameters() if p.requires_grad}
    if not params:
        raise TailsynthError("train_denoiser: the backend has no trainable parameters")
    return fit_denoiser(backend, params, images, labels, cfg, workdir, device, generator_seed, max_new_steps)
