"""Pixel-space class-conditional diffusion backend: a small diffusers UNet at the data resolution.

The UNet (``UNet2DConditionModel``; Rombach et al. 2022's architecture without the VAE) attends by
cross-attention to ``tokens_per_class`` learned embedding vectors per class: a table
``class_tokens`` of shape (K+1, T, D) whose row 0 is the learned null condition used for classifier-free
guidance (Ho & Salimans 2022) and row k+1 is class k. New (tail) classes added for LoRA adaptation
(LoGex step 2) live in a separate table ``extra_tokens`` (K_new, T, D) initialised from the mean of the
class rows, so the base weights stay untouched. Images are mapped [0, 1] -> [-1, 1]; the noise schedule
defaults to DDPM's linear betas (cosine optional).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from pydantic import model_validator
from safetensors.torch import load_file, save_file

from ..config import StrictConfig, build_config, to_dict
from ..errors import TailsynthError
from .backend import BACKENDS
from .schedule import make_alphas_cumprod


class PixelBackendConfig(StrictConfig):
    num_classes: int
    class_names: list[str] | None = None
    image_size: int = 32
    in_channels: int = 3
    tokens_per_class: int = 4
    cross_attention_dim: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, True, True)  # cross-attention per resolution level
    layers_per_block: int = 1
    attention_head_dim: int = 32  # channels per head; heads per level = channels // attention_head_dim
    norm_num_groups: int = 32
    schedule: Literal["linear", "cosine"] = "linear"
    num_train_timesteps: int = 1000
    token_init_std: float = 1.0
    data_mean: tuple[float, ...] | None = None  # per-channel image mean in [0, 1]; None: no centring
    # what the UNet outputs: the noise (DDPM) or v = sqrt(acp) eps - sqrt(1 - acp) x0 (Salimans & Ho 2022, §4)
    prediction: Literal["epsilon", "v"] = "epsilon"

    @model_validator(mode="after")
    def _check(self) -> "PixelBackendConfig":
        levels = len(self.block_out_channels)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, block_out_channels {levels}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes {self.num_classes}")
        if self.data_mean is not None and (len(self.data_mean) != self.in_channels
                                           or not all(0.0 < m < 1.0 for m in self.data_mean)):
            raise ValueError(f"data_mean needs {self.in_channels} values in (0, 1), got {list(self.data_mean)}")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{levels - 1}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} not divisible by norm_num_groups {self.norm_num_groups}")
        return self


def _unet(cfg: PixelBackendConfig) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    heads = tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=down, up_block_types=up, block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
        # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the NUMBER of heads (a known
        # naming quirk), so we pass heads per level computed from the wanted channels per head.
        attention_head_dim=heads, norm_num_groups=cfg.norm_num_groups,
    )


def _per_sample(t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
    """Timestep(s) as a (B,) tensor on x_t's device."""
    return torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])


@BACKENDS.register("pixel")
class PixelBackend(torch.nn.Module):
    """Class-token conditioned pixel UNet; implements :class:`~tailsynth.diffusion.backend.DiffusionBackend`."""

    def __init__(self, cfg: PixelBackendConfig | dict, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, PixelBackendConfig):
            cfg = build_config(PixelBackendConfig, cfg, "pixel backend")
        self.cfg = cfg
        c = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = _unet(c)
            tokens = torch.randn(c.num_classes + 1, c.tokens_per_class, c.cross_attention_dim) * c.token_init_std
        self.class_tokens = torch.nn.Parameter(tokens)  # (K+1, T, D); row 0 = null condition
        # protocol attribute extra_tokens: None until add_classes, then the (K_new, T, D) table LoRA trains
        self.register_parameter("extra_tokens", None)
        self.class_names = list(c.class_names or [f"class_{k}" for k in range(c.num_classes)])
        self.alphas_cumprod = make_alphas_cumprod(c.schedule, c.num_train_timesteps)
        mean = torch.tensor(c.data_mean if c.data_mean is not None else [0.5] * c.in_channels, dtype=torch.float32)
        self.register_buffer("data_mean", mean.view(1, -1, 1, 1), persistent=False)
        self._clip_override: bool | None = None

    @property
    def clip_x0(self) -> bool | tuple[torch.Tensor, torch.Tensor]:
        """Pixel-space samplers clip the Tweedie x0-hat to the image range (Ho et al. 2020; ADM): [-1, 1]
        (``True``) without centring, per channel (lo, hi) = (-2 mean, 2 (1 - mean)) with it."""
        if self._clip_override is not None:
            return self._clip_override
        if self.cfg.data_mean is None:
            return True
        return -2.0 * self.data_mean, 2.0 * (1.0 - self.data_mean)

    @clip_x0.setter
    def clip_x0(self, value: bool) -> None:
        self._clip_override = value

    # -- protocol -------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def token_table(self) -> torch.Tensor:
        """(1 + K + K_new, T, D): null row, base classes, added classes."""
        if self.extra_tokens is None:
            return self.class_tokens
        return torch.cat([self.class_tokens, self.extra_tokens], dim=0)

    def encode_condition(self, class_ids: torch.Tensor | None = None, prompts: list[str] | None = None) -> torch.Tensor:
        if prompts is not None:
            raise TailsynthError("the pixel backend is conditioned on class ids, not text prompts")
        if class_ids is None:
            raise TailsynthError("encode_condition needs class_ids for the pixel backend")
        ids = torch.as_tensor(class_ids, dtype=torch.long, device=self.class_tokens.device).view(-1)
        n = len(self.class_names)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise TailsynthError(f"class id out of range 0..{n - 1}: min {int(ids.min())}, max {int(ids.max())}")
        return self.token_table()[ids + 1]

    def null_condition(self, batch: int) -> torch.Tensor:
        return self.class_tokens[:1].expand(batch, -1, -1)

    @property
    def prediction(self) -> str:
        """``epsilon`` or ``v``: what :meth:`model_output` predicts (and the denoiser is trained against)."""
        return self.cfg.prediction

    @property
    def schedule(self) -> str:
        """The training noise schedule's name (``linear`` or ``cosine``), from the config."""
        return self.cfg.schedule

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (float32): the noise, or v with ``prediction: v``."""
        t = _per_sample(t, x_t)
        return self.unet(x_t, t, encoder_hidden_states=cond.to(x_t.dtype)).sample.float()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction. A v-model's output is converted: eps = sqrt(acp_t) v + sqrt(1 - acp_t) x_t
        (Salimans & Ho 2022, from x_t = sqrt(acp) x0 + sqrt(1 - acp) eps and v's definition), so every sampler
        and guidance loop stays in eps form while x0-hat = sqrt(acp) x_t - sqrt(1 - acp) v no longer
        multiplies the model's error by 1/sqrt(acp_t) (about 100 at the first DDIM step)."""
        t = _per_sample(t, x_t)
        out = self.model_output(x_t, t, cond)
        if self.cfg.prediction == "epsilon":
            return out
        a = self.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * out + (1.0 - a).sqrt() * x_t.float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> [-1, 1], or 2 (x - data_mean) with centring."""
        if self.cfg.data_mean is None:
            return images * 2.0 - 1.0  # the original arithmetic, so uncentred runs stay bit-identical
        return (images - self.data_mean.to(images.device, images.dtype)) * 2.0

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Diffusion space -> images in [0, 1]; ``clamp=False`` keeps values outside (FG-Entropy's raw decode)."""
        if self.cfg.data_mean is None:
            images = (z + 1.0) / 2.0
        else:
            images = z / 2.0 + self.data_mean.to(z.device, z.dtype)
        return images.clamp(0.0, 1.0) if clamp else images

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size != self.cfg.image_size:
            raise TailsynthError(f"pixel backend was built for {self.cfg.image_size} px, asked for {image_size} px")
        return (self.cfg.in_channels, image_size, image_size)

    def add_classes(self, names: list[str]) -> list[int]:
        """New class tokens initialised from the mean of the base class rows (the base has no words for them)."""
        if not names:
            raise TailsynthError("add_classes needs at least one class name")
        start = len(self.class_names)
        mean = self.class_tokens[1:].detach().mean(dim=0, keepdim=True)
        new = mean.repeat(len(names), 1, 1).clone()
        if self.extra_tokens is not None:
            new = torch.cat([self.extra_tokens.detach(), new], dim=0)
        self.extra_tokens = torch.nn.Parameter(new)
        self.class_names.extend(names)
        return list(range(start, start + len(names)))

    # -- conditioning-space anchors (Dream-OOD / BOOD) -------------------------------------------
    def anchor_embeddings(self, class_ids: torch.Tensor) -> torch.Tensor:
        """One anchor vector per class (n, T * D): the class's T learned tokens concatenated. Dream-OOD's anchor is
        the class-name token embedding that the prompt puts in front of the UNet; here the whole condition is the
        class's token sequence, so its flattening is that embedding, and :meth:`condition_from_anchor` is its
        exact inverse (an outlier vector replaces all T tokens of the class)."""
        return self.encode_condition(class_ids=class_ids).flatten(1)

    def condition_from_anchor(self, vectors: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Condition (n, T, D) from anchor-space vectors (n, T * D) (``class_ids`` unused: the vector is the
        whole condition)."""
        t, d = self.cfg.tokens_per_class, self.cfg.cross_attention_dim
        if vectors.ndim != 2 or vectors.shape[1] != t * d:
            raise TailsynthError(f"anchor vectors of shape {tuple(vectors.shape)}; the pixel backend's anchor "
                                 f"dimension is tokens_per_class x cross_attention_dim = {t} x {d} = {t * d}")
        return vectors.to(self.class_tokens.dtype).view(-1, t, d)

    # -- persistence ----------------------------------------------------------------------------
    trains_base = True  # the base model is trained here, on the head images (pipeline stage train_diffusion)

    @classmethod
    def working_size(cls, image_size: int, resolution: int) -> int:
        """Side of the images this backend generates and adapts on: the classifier's own size."""
        return image_size

    @classmethod
    def check_options(cls, options: dict, where: str, image_size: int, channels: int) -> None:
        """Validate the user's ``diffusion.pixel`` options before any stage runs (the class count, size and
        channels come from the data later; ``data_mean: auto`` is resolved from the data)."""
        trial = {**options, "num_classes": 1, "image_size": image_size, "in_channels": channels}
        if trial.get("data_mean") == "auto":
            trial["data_mean"] = None
        trial.pop("class_names", None)
        build_config(PixelBackendConfig, trial, where)

    @classmethod
    def load_base(cls, folder: Path, record: dict, options: dict) -> "PixelBackend":
        """The base model a ``train_diffusion`` artifact holds (``record`` = its base.json)."""
        return cls.from_pretrained(Path(folder) / record["path"])

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors (UNet, class tokens and any added tokens)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"backend": "pixel", "config": to_dict(self.cfg), "class_names": self.class_names}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PixelBackend":
        directory = Path(directory)
        if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
            raise TailsynthError(f"{directory} holds no pixel backend (config.json + model.safetensors)")
        meta = json.loads((directory / "config.json").read_text())
        backend = cls(meta["config"])
        extra = meta["class_names"][backend.cfg.num_classes:]
        if extra:
            backend.add_classes(extra)
        state = load_file(str(directory / "model.safetensors"))
        missing, unexpected = backend.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TailsynthError(f"{directory}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return backend
