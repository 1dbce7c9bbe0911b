"""A tailsynth classifier as a differentiable guidance function images [0, 1] -> logits.

Guidance methods (DiG-IN, LoGex §2.1 / §3 step 3; FG-Entropy, Hemmat et al. 2023) feed decoded diffusion
samples to the auxiliary classifier and backpropagate its output. The classifier was trained on uint8 images
mapped to [-1, 1] (x01 * 2 - 1) at its own resolution and channel count, so the guide

1. resizes (B, C, H, W) to ``image_size`` (differentiable): by default bicubic with antialiasing, the
   resize with which a saved synthetic image is read back for training (PIL bicubic, ``data/decode.py``),
   so guidance optimises the image the classifier later trains on (LoGex's copy of DiG-IN resizes
   bicubically too); ``mode="bilinear"`` is bilinear without antialiasing,
2. converts channels: RGB -> gray by ITU-R BT.601 luma weights (0.299, 0.587, 0.114), gray -> RGB by repeat,
3. maps [0, 1] -> [-1, 1].

The model is put in eval mode and its parameters are frozen (``requires_grad=False``): gradients flow to the
images only. Given several models (an ensemble of auxiliary classifiers, e.g. seeds), the guide's logits are
log of the mean of their softmaxes, so ``softmax(guide(x))`` is the ensemble's mean probability: an image must
convince every member, which an adversarial perturbation of one member's decision does less often.

Augmented views (DiG-IN's expectation over transformations; Augustin et al. 2024, official code: 16 cutouts and
Gaussian noise 0.005 on every view; LoGex's copy drops them): :meth:`augmented_target_prob` scores ``cutouts``
random square crops of every image (after the resize above; side a fraction U[``min_scale``, 1] of the image,
position uniform, resampled bilinearly back to the classifier's resolution by one ``grid_sample``) with N(0, ``noise``^2) added to
each view in [0, 1], and returns the mean target softmax over the views. A perturbation that fools the
classifier on one exact image rarely survives every crop and noise draw, which is why DiG-IN uses them. The
views of image b are drawn from a generator seeded by ``seeds[b]``, so a sample's views depend only on its own
seed (the batched and the batch-1 loops see the same views, and a recomputation under gradient checkpointing
reproduces them).

Class prototypes (the DiG-IN realism term, :class:`~tailsynth.diffusion.guidance.dig_in.DigInConfig`
``realism_weight``): :meth:`prototypes` is, per member and class, the mean of the L2-normalised pooled features of
real images; :meth:`prototype_distance` is 1 - cos(features(x), prototype of the target class), averaged over the
members. Confidence alone can be reached by a perturbation that moves the logits; a small cosine distance asks the
image to look, to the same network, like the real images of its class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import TailsynthError

LUMA = (0.299, 0.587, 0.114)


class ClassifierGuide(nn.Module):
    """``guide(images)`` -> logits (B, K) for images (B, C, H, W) in [0, 1]; differentiable w.r.t. images."""

    def __init__(self, model: nn.Module | list[nn.Module], image_size: int, channels: int, mode: str = "bicubic"):
        super().__init__()
        members = list(model) if isinstance(model, (list, tuple)) else [model]
        if not members:
            raise TailsynthError("ClassifierGuide: needs at least one classifier")
        classes = {getattr(m, "num_classes", None) for m in members}
        if len(classes) > 1:
            raise TailsynthError(f"ClassifierGuide: the ensemble's classifiers have different class counts {classes}")
        if channels not in (1, 3):
            raise TailsynthError(f"ClassifierGuide: channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise TailsynthError(f"ClassifierGuide: image_size must be >= 1, got {image_size}")
        if mode not in ("bilinear", "bicubic"):
            raise TailsynthError(f"ClassifierGuide: mode must be 'bilinear' or 'bicubic', got {mode!r}")
        self.members = nn.ModuleList(members).eval()
        self.members.requires_grad_(False)
        self.image_size, self.channels, self.mode = int(image_size), int(channels), mode
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def model(self) -> nn.Module:
        """The first member (its class count and device stand for the ensemble's)."""
        return self.members[0]

    def train(self, mode: bool = True) -> "ClassifierGuide":
        """The wrapped classifier always stays in eval mode (BatchNorm running statistics)."""
        super().train(mode)
        self.members.eval()
        return self

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, image_size, image_size) with the guide's resize (identity at that size)."""
        if images.shape[-2:] == (self.image_size, self.image_size):
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode=self.mode, align_corners=False,
                             antialias=self.mode == "bicubic")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, channels, image_size, image_size) in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise TailsynthError(f"ClassifierGuide expects images (B, 1|3, H, W), got {tuple(images.shape)}")
        x = self.resize(images)
        if x.shape[1] == 3 and self.channels == 1:
            x = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)
        elif x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return x * 2.0 - 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if len(self.members) == 1:
            return self.model.forward_head(self.model.forward_features(x)).float()
        probs = torch.stack([m.forward_head(m.forward_features(x)).float().softmax(dim=1) for m in self.members])
        return probs.mean(dim=0).clamp_min(1e-30).log()

    def target_prob(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """softmax(logits)[b, targets[b]], shape (B,)."""
        return self(images).softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)

    def member_features(self, images: torch.Tensor) -> torch.Tensor:
        """(M, B, D) L2-normalised pooled features of every member for images (B, C, H, W) in [0, 1]."""
        x = self.preprocess(images)
        return torch.stack([F.normalize(m.forward_features(x).float(), dim=1) for m in self.members])

    @torch.no_grad()
    def prototypes(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   batch_size: int = 64) -> torch.Tensor:
        """(M, K, D): per member, the mean normalised features of the images of each class (images (N, C, H, W)
        in [0, 1], labels (N,) in [0, K)); a class without images gets a zero row (it has no prototype)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if images.shape[0] != labels.numel() or images.shape[0] == 0:
            raise TailsynthError(f"ClassifierGuide.prototypes: {images.shape[0]} images for {labels.numel()} labels")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise TailsynthError(f"ClassifierGuide.prototypes: labels must lie in [0, {num_classes}), got "
                                 f"{int(labels.min())}..{int(labels.max())}")
        dev = self.luma.device
        feats = torch.cat([self.member_features(images[i:i + batch_size].to(dev))
                           for i in range(0, images.shape[0], batch_size)], dim=1)
        onehot = F.one_hot(labels.to(dev), num_classes).float()  # (N, K)
        counts = onehot.sum(dim=0).clamp_min(1.0)
        return torch.einsum("mnd,nk->mkd", feats, onehot) / counts.view(1, -1, 1)

    def prototype_distance(self, images: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """(B,) 1 - cos(member features of image b, its member's prototype of class targets[b]), mean over members
        (differentiable w.r.t. the images)."""
        feats = self.member_features(images)  # (M, B, D)
        proto = F.normalize(prototypes[:, targets].to(feats.dtype), dim=2)  # (M, B, D)
        return (1.0 - (feats * proto).sum(dim=2)).mean(dim=0)

    def views(self, images: torch.Tensor, seeds: torch.Tensor, cutouts: int, min_scale: float,
              noise: float) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B * cutouts, C, image_size, image_size): random crops + Gaussian noise."""
        check_augmentation(cutouts, min_scale, noise)
        B, dev = images.shape[0], images.device
        if seeds.numel() != B:
            raise TailsynthError(f"ClassifierGuide.views: {seeds.numel()} seeds for {B} images")
        scale, shift, eps = [], [], []
        size = (cutouts, images.shape[1], self.image_size, self.image_size)
        for seed in seeds.tolist():
            g = torch.Generator().manual_seed(int(seed))
            s = min_scale + (1.0 - min_scale) * torch.rand(cutouts, generator=g)
            scale.append(s)
            shift.append((2.0 * torch.rand(cutouts, 2, generator=g) - 1.0) * (1.0 - s).unsqueeze(1))
            eps.append(torch.randn(size, generator=g) if noise > 0 else torch.zeros(0))
        scale, shift = torch.cat(scale).to(dev), torch.cat(shift).to(dev)
        theta = torch.zeros(B * cutouts, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale, scale, shift
        x = self.resize(images.float()).repeat_interleave(cutouts, dim=0)
        grid = F.affine_grid(theta, [B * cutouts, x.shape[1], self.image_size, self.image_size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if noise > 0:
            x = x + noise * torch.cat(eps).to(dev)
        return x

    def augmented_target_prob(self, images: torch.Tensor, targets: torch.Tensor, seeds: torch.Tensor,
                              cutouts: int, min_scale: float = 0.75, noise: float = 0.0) -> torch.Tensor:
        """Mean over ``cutouts`` augmented views of softmax(logits)[b, targets[b]], shape (B,)."""
        x = self.views(images, seeds, cutouts, min_scale, noise)
        p = self(x).softmax(dim=1).gather(1, targets.repeat_interleave(cutouts).view(-1, 1))
        return p.view(images.shape[0], cutouts).mean(dim=1)


def check_augmentation(cutouts: int, min_scale: float, noise: float) -> None:
    """Clear errors for impossible augmentation settings."""
    if cutouts < 1:
        raise TailsynthError(f"ClassifierGuide: cutouts must be >= 1, got {cutouts}")
    if not 0.0 < min_scale <= 1.0:
        raise TailsynthError(f"ClassifierGuide: cutout min_scale must be in (0, 1], got {min_scale}")
    if noise < 0:
        raise TailsynthError(f"ClassifierGuide: cutout noise must be >= 0, got {noise}")
