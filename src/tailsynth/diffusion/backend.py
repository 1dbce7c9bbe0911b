"""The denoiser protocol every diffusion backend implements, and the backend registry.

A backend bundles a noise-prediction network :math:`\\varepsilon_\\theta(x_t, t, c)`, its conditioning
encoder, the map between images and the diffusion space (identity for pixel models, the VAE for latent
models such as Stable Diffusion; Rombach et al. 2022) and the training noise schedule
``alphas_cumprod`` (:math:`\\bar\\alpha_t`, shape (T,), T = 1000).

Shapes: images (B, 3, H, W) in [0, 1]; diffusion space z (B, C, h, w) = ``latent_shape(H)``;
conditions (B, L, D) -- a sequence of L embedding vectors of width D that the UNet attends to by
cross-attention. ``null_condition(B)`` is the unconditional condition used for classifier-free guidance
(Ho & Salimans 2022).

Besides these methods, a backend declares what backends differ in as plain attributes (class attributes or
properties): ``prediction``, ``clip_x0``, ``trains_base``, ``extra_tokens`` and ``schedule``; callers read them
directly instead of probing with defaults.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..registry import Registry
from .samplers import ClipX0


@runtime_checkable
class DiffusionBackend(Protocol):
    """What samplers, trainers and guidance methods may rely on."""

    alphas_cumprod: torch.Tensor  # (T,) float32, on CPU
    class_names: list[str]  # index = condition id
    prediction: str
    """What the denoiser outputs and is trained against: ``"epsilon"`` (the noise) or ``"v"`` (Salimans & Ho 2022;
    ``eps`` still returns the noise, ``model_output`` the raw v)."""
    clip_x0: ClipX0
    """How samplers clip the Tweedie x0-hat: ``False`` (latent space, unbounded), ``True`` ([-1, 1]) or a (low, high)
    pair of tensors broadcastable to z (per-channel bounds of a centred pixel backend)."""
    trains_base: bool
    """``True``: the base denoiser is trained here (stage train_diffusion); ``False``: a pretrained folder on disk,
    which the backend's classmethod ``check_folder(path, where)`` checks before any stage runs."""
    extra_tokens: torch.nn.Parameter | None
    """The learned condition-token table (K_new, T, D) of classes added by :meth:`add_classes`, which LoRA
    adaptation trains and saves with the adapter; ``None`` when there is none (no classes added yet, or a backend
    whose new classes need no learned tokens, e.g. Stable Diffusion's prompt words)."""
    schedule: str
    """The name of the training noise schedule behind ``alphas_cumprod``: ``"linear"``, ``"scaled_linear"`` or
    ``"cosine"`` (the minority score picks its perturbation timestep by it)."""

    def encode_condition(self, class_ids: torch.Tensor | None = None,
                         prompts: list[str] | None = None) -> torch.Tensor:
        """Condition embeddings (B, L, D) for class ids (B,) or free-text prompts (B strings)."""

    def null_condition(self, batch: int) -> torch.Tensor:
        """The unconditional embedding (batch, L, D) used for CFG and condition dropout."""

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction (B, C, h, w), float32, for x_t (B, C, h, w), timesteps t (B,) and cond (B, L, D)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> diffusion-space z (B, C, h, w)."""

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Diffusion-space z -> images (B, 3, H, W) in [0, 1] (differentiable); ``clamp=False``: unclamped."""

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, h, w) of z for square images of side ``image_size``."""

    def add_classes(self, names: list[str]) -> list[int]:
        """Register new classes (e.g. the tail for LoRA adaptation); returns their condition ids."""

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet (the module LoRA adapters attach to)."""


BACKENDS: Registry = Registry("diffusion backend")
