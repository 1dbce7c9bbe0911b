"""Batch augmentation on tensors with an explicit ``torch.Generator`` (flips + rotation, LoGex §4; CIFAR crop)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,C) -> float (B,C,H,W) normalised to [-1, 1] (the classifier's preprocessing)."""
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips and a rotation in [-rotation_deg, rotation_deg] per sample (reflection padding).

    All random draws come from ``generator`` on the CPU, so a seeded epoch is reproducible exactly.
    """
    b = x.shape[0]
    draws = torch.rand(b, 3, generator=generator)
    if cfg.crop_padding > 0:
        x = random_crop(x, cfg.crop_padding, generator)
    if cfg.hflip:
        flip = (draws[:, 0] < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg.vflip:
        flip = (draws[:, 1] < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if cfg.rotation_deg > 0:
        angle = (draws[:, 2] * 2 - 1) * math.radians(cfg.rotation_deg)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by ``padding`` px of black (-1 in the [-1, 1] input range) and crop it back to its size at
    an offset drawn uniformly from {0..2 padding}^2 per sample (torchvision ``RandomCrop(size, padding)``)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(h)[None]).to(x.device)  # (B, H)
    cols = (offsets[:, 1, None] + torch.arange(w)[None]).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
