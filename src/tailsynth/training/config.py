"""Configs of the classifier trainer (one loop for every method)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config import StrictConfig, build_config
from .adversarial import AdversarialConfig


class AugmentConfig(StrictConfig):
    """LoGex retraining augmentation: random horizontal/vertical flips and a random rotation; ``crop_padding``
    > 0 adds the CIFAR random crop (pad with black by that many pixels, crop back at a random offset; He et
    al. 2016, as the LDMLR / LDAM code trains its CIFAR encoders)."""

    hflip: bool = True
    vflip: bool = True
    rotation_deg: float = 15.0
    crop_padding: int = Field(0, ge=0)


class CalibrationConfig(StrictConfig):
    """Which validation images calibrate the rare-case flag (split-conformal, ``ood/conformal.py``).

    ``shared``: every validation head image calibrates it, and the same split selects the epoch: the threshold
    depends on images that also chose the model, so its guarantee is approximate. ``split``: a seeded
    ``fraction`` of the validation head images (drawn by the row's seed) is held out of model selection and used
    only for calibration: the guarantee holds exactly, selection sees fewer head images."""

    mode: Literal["shared", "split"] = "shared"
    fraction: float = Field(0.5, gt=0.0, lt=1.0)


class TrainConfig(StrictConfig):
    """One classifier training run. Defaults follow the LoGex code (AdamW 1e-4 cosine to 1e-5, 60 epochs,
    batch 128, model selection by bAcc-head minus FPR@95 on the validation split)."""

    model: str = "resnet18"
    width: float = 1.0
    # torchvision-layout ResNet weights on disk (.pth / .safetensors; nothing is downloaded): the backbone
    # starts from them, the classifier layer is initialised for the benchmark's classes
    pretrained: str | None = None
    # input normalisation inside the network: auto = ImageNet mean/std when ``pretrained`` is set, else none
    input_norm: Literal["auto", "none", "imagenet"] = "auto"
    small_input: bool | None = None  # None: small stem when image_size <= 64
    epochs: int = Field(60, ge=1)
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-2
    momentum: float = 0.9
    warmup_epochs: int = 0
    # cosine from lr to min_lr, or constant lr; auto: constant when the criterion defers re-weighting (DRW),
    # as the LoGex code does (with --drw it never steps its cosine scheduler: constant lr, x0.1 at the DRW
    # epoch), cosine otherwise
    lr_schedule: Literal["auto", "cosine", "constant"] = "auto"
    augment: AugmentConfig = AugmentConfig()
    # val_bacc: mean per-class recall on val (a balanced-test-accuracy proxy when val is long-tailed, CIFAR-LT)
    selection: Literal["bacc_head_minus_fpr", "val_acc", "val_bacc", "last"] = "bacc_head_minus_fpr"
    amp: bool = True  # bf16 autocast, used only on CUDA
    # channels_last memory format for conv nets during training (faster CPU/GPU convolutions; results equal
    # up to float rounding)
    channels_last: bool = False
    # PGD adversarial training (training/adversarial.py; off at eps 0): a robust auxiliary classifier for DiG-IN
    adversarial: AdversarialConfig = AdversarialConfig()
    # the validation images that calibrate the rare-case flag (shared with model selection, or a held-out part)
    calibration: CalibrationConfig = CalibrationConfig()

    fingerprint_neutral = ("adversarial", "calibration")

    def with_settings(self, settings: dict[str, Any], where: str) -> TrainConfig:
        """These settings with ``settings`` over them, key by key (each key replaces this config's value), validated
        (``where`` names the key in errors): the auxiliary's ``synthesis.aux_train``, a judge's ``judge_train``."""
        return build_config(TrainConfig, {**self.model_dump(), **settings}, where) if settings else self
