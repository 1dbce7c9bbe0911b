"""Class-conditional diffusion on feature vectors (LDMLR stage 2, Han et al. 2024, §3.3, Eq. 9-12).

The denoiser eps_theta(z_t, t, y) is a residual MLP on vectors: a sinusoidal time embedding and a label
embedding are added (LDMLR: "the condition embedding determined by the step t and label y") and injected
into every block. One extra label id (K) is the null label: labels are dropped to it with probability
``label_dropout`` during training, so classifier-free guidance (Ho & Salimans 2022) is available at sampling.

Features are standardised with the training features' per-dimension mean and std (``normalization:
standardize``; no fixed [-1, 1] bound, which the encoder's ReLU features exceed), or mapped per dimension from
the training [min, max] to [-1, 1] (``minmax_clip``; the official code maps an assumed [0, 1] to [-1, 1] instead,
so its clip cuts the real features above 1). Either way, at every sampling step the x0 estimate is clipped per
dimension to the training features' range ([(min - mean) / std, (max - mean) / std], or [-1, 1]); the last step
returns that clipped estimate (DDIM to a = 1; DDPM's t = 0 posterior mean is x0-hat, without noise), so every
pseudo-feature lies in the per-dimension [min, max] of the training features. Objective ``epsilon`` (LDMLR
Eq. 10) or ``sample`` (the code's pred_x0, plain MSE on x0, converted to the equivalent noise prediction for
the samplers). T = 1000 cosine schedule (Nichol & Dhariwal 2021).
Sampling goes through the project's samplers (:func:`tailsynth.diffusion.ddim_sample`, DDIM eq. 12 = LDMLR
Eq. 11 with sigma_t = eta * ..., or ancestral :func:`ddpm_sample`, the code's 1000-step sampler), with
the class label as condition, so the DDIM path uses the label (the official DDIM path ignores it).

Training runs in the step loop (:class:`tailsynth.training.steps.StepLoop`) with its batch order and checkpoint
files: a run killed at any step resumes to the same weights.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import StrictConfig, to_dict
from ..errors import TailsynthError
from ..training.steps import LossFn, StepLoop, batch_indices, copy_into, load_tensors
from ..utils import derive_seed, read_json, stable_hash
from .samplers import ddim_sample, ddpm_sample
from .schedule import add_noise, make_alphas_cumprod


class FeatureDiffusionConfig(StrictConfig):
    """The feature denoiser and its training. Size and length are a CPU-measured choice: hidden 256 x 3 blocks
    (0.96 M parameters) costs ~25 ms per step of 256 vectors on one core, so 2000 steps take about a minute
    (the official code: a 1-D UNet, 201 epochs of batch 256, SGD 1e-4 without momentum)."""

    hidden: int = Field(256, ge=8)
    blocks: int = Field(3, ge=1)
    prediction: Literal["epsilon", "sample"] = "epsilon"  # LDMLR Eq. 10; "sample": the code's pred_x0
    normalization: Literal["standardize", "minmax_clip"] = "standardize"
    schedule: Literal["cosine", "linear"] = "cosine"
    num_train_timesteps: int = Field(1000, ge=2)
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # batch composition: "instance" (every training feature equally likely, LDMLR) or "class_balanced"
    # (every class equally likely, then a feature of it: the rare classes' label embeddings get as many updates)
    sampler: Literal["instance", "class_balanced"] = "instance"
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)  # LDMLR: Adam 1e-3
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    seed: int = 0


class FeatureSamplingConfig(StrictConfig):
    """How pseudo-features are drawn: DDIM (eta 0, ``num_steps``) or ancestral DDPM; CFG scale 1 = the plain
    conditional prediction (LDMLR); the paper's 500 reverse steps of 1000 are ``num_steps: 500``."""

    sampler: Literal["ddim", "ddpm"] = "ddim"
    num_steps: int = Field(100, ge=1)
    eta: float = Field(0.0, ge=0.0)
    guidance_scale: float = 1.0
    batch_size: int = Field(4096, ge=1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017; DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb = nn.Linear(hidden, 2 * hidden)  # scale and shift from the (time + label) embedding
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.emb(emb).chunk(2, dim=1)
        x = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(F.silu(x))))


class FeatureDenoiser(nn.Module):
    """eps_theta(z_t, t, y) (or x0_theta) for z in R^D, y in 0..K-1 and the null label K."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 512, blocks: int = 4):
        super().__init__()
        self.dim, self.num_classes, self.hidden = dim, num_classes, hidden
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden)
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time(timestep_embedding(t, self.hidden)) + self.label(y))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class FeatureDiffusion(nn.Module):
    """Denoiser + schedule + feature normalisation; ``eps(x_t, t, y)`` in the samplers' protocol."""

    def __init__(self, cfg: FeatureDiffusionConfig, dim: int, num_classes: int, stats: dict[str, np.ndarray]):
        super().__init__()
        self.cfg = cfg
        self.denoiser = FeatureDenoiser(dim, num_classes, cfg.hidden, cfg.blocks)
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(cfg.schedule, cfg.num_train_timesteps))
        self.register_buffer("center", torch.as_tensor(stats["center"], dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(stats["scale"], dtype=torch.float32))
        self.register_buffer("low", torch.as_tensor(stats["low"], dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(stats["high"], dtype=torch.float32))
        self.null_label = num_classes

    @staticmethod
    def statistics(features: np.ndarray, normalization: str) -> dict[str, np.ndarray]:
        """center / scale mapping training features to the diffusion space (std 1, or [-1, 1] for minmax)."""
        f = np.asarray(features, dtype=np.float64)
        if normalization == "standardize":
            center, scale = f.mean(0), f.std(0)
        else:
            lo, hi = f.min(0), f.max(0)
            center, scale = (hi + lo) / 2, (hi - lo) / 2
        scale = np.maximum(scale, 1e-6)
        # the x0 estimate is clipped to the training features' range (per dimension) at sampling: without it the
        # Tweedie x0-hat of the first, noisiest steps (a_t ~ 1e-9 on the cosine schedule) amplifies any error of
        # the noise prediction by 1 / sqrt(a_t)
        return {"center": center.astype(np.float32), "scale": scale.astype(np.float32),
                "low": ((f.min(0) - center) / scale).astype(np.float32),
                "high": ((f.max(0) - center) / scale).astype(np.float32)}

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.center) / self.scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.center

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x_t, t, y)
        if self.cfg.prediction == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1)  # x0-prediction -> the equivalent noise prediction
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()

    def training_loss(self, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """LDMLR Eq. 10 (epsilon) or MSE on x0 (sample), t ~ U{0..T-1}, labels dropped to the null label."""
        b = len(y)
        t = torch.randint(0, self.alphas_cumprod.shape[0], (b,), generator=generator)
        drop = torch.rand(b, generator=generator) < self.cfg.label_dropout
        noise = torch.randn(x0.shape, generator=generator)
        t, drop, noise = t.to(x0.device), drop.to(x0.device), noise.to(x0.device)
        y = torch.where(drop, torch.full_like(y, self.null_label), y)
        x_t = add_noise(x0, noise, t, self.alphas_cumprod)
        target = noise if self.cfg.prediction == "epsilon" else x0
        return F.mse_loss(self.denoiser(x_t, t, y), target)


def check_features(features, labels, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels)).long().view(-1)
    if z.dim() != 2 or len(z) == 0 or len(z) != len(y):
        raise TailsynthError(f"features must be (N, D) with N = len(labels) > 0; got {tuple(z.shape)} and {len(y)} labels")
    if not torch.isfinite(z).all():
        raise TailsynthError("features contain NaN or inf")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise TailsynthError(f"labels must be in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return z, y


def train_feature_diffusion(features, labels, num_classes: int, cfg: FeatureDiffusionConfig, workdir: str | Path,
                            device: torch.device | str = "cpu", max_new_steps: int | None = None
                            ) -> tuple[FeatureDiffusion, list[float]]:
    """Train the class-conditional feature denoiser; returns it (EMA weights) and this call's losses.

    Checkpoints every ``cfg.checkpoint_every`` steps to ``workdir``; a later call resumes (``max_new_steps``
    stops early, as an interruption would)."""
    workdir, device = Path(workdir), torch.device(device)
    workdir.mkdir(parents=True, exist_ok=True)
    z_all, y_all = check_features(features, labels, num_classes)
    stats = FeatureDiffusion.statistics(z_all.numpy(), cfg.normalization)
    model = FeatureDiffusion(cfg, z_all.shape[1], num_classes, stats).to(device)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():  # a seeded initialisation independent of the global RNG state before the call
        init = FeatureDiffusion(cfg, z_all.shape[1], num_classes, stats)
        model.denoiser.load_state_dict(init.denoiser.state_dict())
    x_all = model.encode(z_all.to(device))
    named = dict(sorted(model.denoiser.named_parameters()))
    opt = torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    fingerprint = stable_hash({"cfg": to_dict(cfg), "n": len(y_all), "dim": int(z_all.shape[1]), "k": num_classes})
    loop = StepLoop(named, opt, gen, workdir, cfg.steps, fingerprint, to_dict(cfg), cfg.checkpoint_every, device,
                    "a feature-diffusion run with another config or data", ema_decay=cfg.ema_decay,
                    grad_clip=cfg.grad_clip, lr_at=lambda step: [cfg.lr * _lr_factor(step, cfg)], module=model,
                    desc="feature diffusion")
    done = loop.run(feature_loss(model, x_all, y_all, cfg, gen), max_new_steps)
    return model.eval(), done.losses


def feature_loss(model: FeatureDiffusion, x_all: torch.Tensor, y_all: torch.Tensor, cfg: FeatureDiffusionConfig,
                 gen: torch.Generator) -> LossFn:
    """The loss of step k: :meth:`FeatureDiffusion.training_loss` on batch k (instance or class-balanced order)."""
    device = x_all.device

    def loss_at(step: int) -> torch.Tensor:
        if cfg.sampler == "class_balanced":
            idx = balanced_indices(step, cfg.batch_size, y_all, model.denoiser.num_classes, cfg.seed).to(device)
        else:
            idx = batch_indices(step, min(cfg.batch_size, len(y_all)), len(y_all), cfg.seed).to(device)
        return model.training_loss(x_all[idx], y_all.to(device)[idx], gen)

    return loss_at


def balanced_indices(step: int, batch: int, labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Batch ``step`` of class-balanced sampling: a class uniformly among those present, then one of its
    features uniformly, from a generator seeded by (seed, step) (so a resumed run draws the same batches)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "balanced", step))
    present = torch.unique(labels)
    members = [torch.nonzero(labels == c).view(-1) for c in present.tolist()]
    pick = torch.randint(0, len(present), (batch,), generator=gen)
    offset = torch.rand(batch, generator=gen)
    sizes = torch.tensor([len(m) for m in members])
    within = (offset * sizes[pick]).long().clamp(max=sizes[pick] - 1)
    return torch.stack([members[int(c)][int(i)] for c, i in zip(pick, within)])


def _lr_factor(step: int, cfg: FeatureDiffusionConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))


@torch.no_grad()
def sample_features(model: FeatureDiffusion, labels, sampling: FeatureSamplingConfig, seed: int) -> np.ndarray:
    """Pseudo-features (N, D) for ``labels`` (N,), in the encoder's feature space; x_T and the ancestral
    noise come from a generator seeded by ``seed`` (the same labels and seed give the same features)."""
    y_all = torch.as_tensor(np.asarray(labels)).long().view(-1)
    device = model.alphas_cumprod.device
    gen = torch.Generator().manual_seed(seed)
    minmax = model.cfg.normalization == "minmax_clip"
    clip = True if minmax else (model.low, model.high)  # the code's [-1, 1], or the training range
    out = []
    for start in range(0, len(y_all), sampling.batch_size):
        y = y_all[start:start + sampling.batch_size].to(device)
        x_T = torch.randn((len(y), model.denoiser.dim), generator=gen).to(device)
        uncond = torch.full_like(y, model.null_label)
        if sampling.sampler == "ddim":
            res = ddim_sample(model.eps, x_T, y, uncond, model.alphas_cumprod, num_steps=sampling.num_steps,
                              guidance_scale=sampling.guidance_scale, eta=sampling.eta,
                              generator=gen if sampling.eta > 0 else None, clip_x0=clip,
                              final_alpha_cumprod=1.0)
        else:
            res = ddpm_sample(model.eps, x_T, y, uncond, model.alphas_cumprod, gen, num_steps=sampling.num_steps,
                              guidance_scale=sampling.guidance_scale, clip_x0=clip)
        x0 = res.sample.clamp(-1, 1) if minmax else res.sample
        out.append(model.decode(x0).cpu())
    dim = model.denoiser.dim
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def load_feature_diffusion(folder: str | Path, device: torch.device | str = "cpu") -> FeatureDiffusion:
    """The trained model of a ``train_feature_diffusion`` stage (``feature_diffusion.json`` + final weights)."""
    folder = Path(folder)
    record = read_json(folder / "feature_diffusion.json")
    cfg = FeatureDiffusionConfig(**record["config"])
    stats = {k: np.asarray(record[k], dtype=np.float32) for k in ("center", "scale", "low", "high")}
    model = FeatureDiffusion(cfg, record["dim"], record["num_classes"], stats)
    named = dict(sorted(model.denoiser.named_parameters()))
    copy_into(named, load_tensors(folder / "train" / "final.safetensors"), folder)
    return model.to(device).eval()
