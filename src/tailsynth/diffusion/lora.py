"""LoRA adaptation of a diffusion backend on the tail classes only (LoGex §3 step 2, App. Table 4).

LoRA (Hu et al. 2022): each targeted linear map W gets a trainable low-rank update W + (alpha/r) B A with
A (r x d_in) Gaussian-initialised and B (d_out x r) zero-initialised, so the adapted model starts equal to
the base. Targets are the attention projections ``to_q, to_k, to_v, to_out.0`` of the UNet's
cross-attention layers (``attn2``; LoGex) or of all attention layers (``attn1`` + ``attn2``), or those plus
the two 3x3 convolutions of every ResNet block (``attention_and_conv``; LoCon: a Conv2d k x k gets
B (d_out x r x 1 x 1) after A (r x d_in x k x k)).
LoGex settings: rank 4, lr 1e-4, cosine schedule, random flips, trained only on the tail images with the
prompt "A histopathological slide from a patient with <class>". For the pixel backend the base has no
condition for the tail, so new class tokens (initialised from the mean of the base class tokens) are
learned jointly with the adapters. Training reuses :func:`tailsynth.diffusion.train.fit_denoiser`.

Saved as ``adapter.safetensors`` (peft's adapter state dict + ``tailsynth.extra_tokens``) and
``lora_config.json``; :func:`load_lora` re-attaches, :func:`merge_and_unload` folds the update into W.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from .. import distributed
from ..config import StrictConfig, build_config, to_dict
from ..errors import TailsynthError
from .train import DenoiserTrainConfig, TrainResult, fit_denoiser

TOKENS_KEY = "tailsynth.extra_tokens"
TARGETS = {
    "cross_attention": r".*attn2\.(to_q|to_k|to_v|to_out\.0)",
    "all_attention": r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    # + both 3x3 convolutions of every ResNet block (LoCon, as in LyCORIS): a small base that never saw the
    # tail's shapes (a pixel UNet trained on the head classes) cannot draw them through attention alone
    "attention_and_conv": r".*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|resnets\.\d+\.conv[12])",
}


class LoraTrainConfig(DenoiserTrainConfig):
    """The training loop's settings with LoGex App. Table 4 defaults (rank 4 lives in LoraAdaptConfig):
    lr 1e-4, 15k steps, cosine schedule, random flips; AdamW weight decay 1e-2 as diffusers' LoRA script;
    no condition dropout (the null condition stays the base's) and no EMA."""

    steps: int = 15000
    batch_size: int = 8
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 1e-2
    cond_dropout: float = 0.0
    ema_decay: float = 0.0


class LoraAdaptConfig(StrictConfig):
    rank: int = 4
    alpha: float | None = None  # None = rank (scale 1, as diffusers' LoRA training script)
    target: Literal["cross_attention", "all_attention", "attention_and_conv"] = "cross_attention"
    train_tokens: bool = True  # learn new class tokens (pixel backend only)
    token_lr: float = 5e-3  # their own peak lr, no weight decay (textual inversion's 5e-3; 1e-4 barely moves them)
    train: LoraTrainConfig = LoraTrainConfig()


@dataclass
class LoraResult:
    class_ids: list[int]  # condition ids of the adapted (tail) classes, in the order of class_names
    train: TrainResult


def attach_lora(backend, cfg: LoraAdaptConfig, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """Freeze the backend, inject LoRA into the UNet and return the adapter parameters (float32) by name."""
    if cfg.rank < 1:
        raise TailsynthError(f"LoRA rank must be >= 1, got {cfg.rank}")
    backend.requires_grad_(False)
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, init_lora_weights="gaussian",
                          target_modules=TARGETS[cfg.target])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            backend.denoiser.add_adapter(peft_cfg)
        except ValueError as err:
            raise TailsynthError(f"cannot attach LoRA ({cfg.target}): {err}") from None
    params = {k: p for k, p in backend.named_parameters() if "lora_" in k}
    if not params:
        raise TailsynthError(f"LoRA target {cfg.target!r} matched no attention layer of the UNet")
    for p in params.values():
        p.data = p.data.float()  # trainable weights in fp32 even under an fp16/bf16 base
        p.requires_grad_(True)
    return params


def adapter_parameters(backend, cfg: LoraAdaptConfig) -> dict[str, torch.nn.Parameter]:
    """LoRA A/B matrices plus, for the pixel backend, the new class tokens."""
    params = {k: p for k, p in backend.named_parameters() if "lora_" in k}
    tokens = backend.extra_tokens
    if cfg.train_tokens and tokens is not None:
        tokens.requires_grad_(True)
        params["extra_tokens"] = tokens
    return params


def adapt_lora(backend, images, labels, class_names: list[str], cfg: LoraAdaptConfig, workdir: str | Path,
               device: torch.device | str, generator_seed: int, max_new_steps: int | None = None) -> LoraResult:
    """LoGex step 2: LoRA (+ new class tokens) trained on tail images only.

    ``labels`` (N,) index ``class_names`` (the tail classes); they become new condition ids of the backend.
    When training finishes the adapter is saved to ``workdir/lora`` (see :func:`save_lora`).
    """
    workdir = Path(workdir)
    labels_t = torch.as_tensor(np.asarray(labels)).long().view(-1)
    if labels_t.numel() and (int(labels_t.min()) < 0 or int(labels_t.max()) >= len(class_names)):
        raise TailsynthError(f"adapt_lora: labels must index the {len(class_names)} class_names")
    counts = torch.bincount(labels_t, minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts.tolist()) if n == 0]
    if empty:
        raise TailsynthError(f"LoRA adaptation asked for classes with no training images: {empty}")
    ids = backend.add_classes(list(class_names))
    attach_lora(backend, cfg, seed=generator_seed)
    params = adapter_parameters(backend, cfg)
    cond_ids = torch.tensor(ids)[labels_t]
    token_lr = {"extra_tokens": cfg.token_lr} if "extra_tokens" in params else None
    result = fit_denoiser(backend, params, images, cond_ids, cfg.train, workdir, device, generator_seed,
                          max_new_steps, lr_by_param=token_lr)
    if result.finished and distributed.world()[0] == 0:  # data-parallel: rank 0 writes
        save_lora(backend, workdir / "lora", list(class_names), cfg)
    return LoraResult(ids, result)


def save_lora(backend, directory: str | Path, class_names: list[str], cfg: LoraAdaptConfig) -> Path:
    """``adapter.safetensors`` (LoRA A/B + new tokens) and ``lora_config.json`` (config + class names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(get_peft_model_state_dict(backend.denoiser))
    tokens = backend.extra_tokens
    if tokens is not None:
        state[TOKENS_KEY] = tokens
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / "adapter.safetensors"))
    meta = {"config": to_dict(cfg), "class_names": list(class_names), "backend": type(backend).__name__}
    (directory / "lora_config.json").write_text(json.dumps(meta, indent=2))
    return directory


def load_lora(backend, directory: str | Path) -> list[int]:
    """Add the saved classes, attach LoRA and load its weights; returns the new classes' condition ids."""
    directory = Path(directory)
    if not (directory / "adapter.safetensors").is_file() or not (directory / "lora_config.json").is_file():
        raise TailsynthError(f"{directory} holds no LoRA adapter (adapter.safetensors + lora_config.json)")
    meta = json.loads((directory / "lora_config.json").read_text())
    cfg = build_config(LoraAdaptConfig, meta["config"], f"{directory}/lora_config.json")
    state = load_file(str(directory / "adapter.safetensors"))
    tokens = state.pop(TOKENS_KEY, None)
    ids = backend.add_classes(meta["class_names"])
    attach_lora(backend, cfg)
    device = next(backend.denoiser.parameters()).device
    result = set_peft_model_state_dict(backend.denoiser, {k: v.to(device) for k, v in state.items()})
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise TailsynthError(f"{directory}: adapter keys do not fit the UNet: {unexpected[:5]}")
    if tokens is not None:
        if backend.extra_tokens is None or backend.extra_tokens.shape != tokens.shape:
            raise TailsynthError(f"{directory}: saved class tokens {tuple(tokens.shape)} do not fit the backend")
        with torch.no_grad():
            backend.extra_tokens.copy_(tokens.to(backend.extra_tokens.device))
    backend.requires_grad_(False)
    return ids


def merge_and_unload(backend) -> None:
    """Fold every LoRA update into its base weight (W += scale * B A) and remove the adapter layers."""
    unet = backend.denoiser
    merged = 0
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, child, module.get_base_layer())
            merged += 1
    if not merged:
        raise TailsynthError("merge_and_unload: the backend has no LoRA layers")
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(unet, attr):
            setattr(unet, attr, None) if attr == "_hf_peft_config_loaded" else delattr(unet, attr)
