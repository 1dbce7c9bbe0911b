"""The one classifier training loop. A method is a choice of criterion, sampler and schedule.

Reproducible and resumable: the shuffle and augmentation of epoch ``e`` come from a generator seeded
by ``(seed, e)``, the learning rate is a pure function of the step, and the model + optimizer are
checkpointed after every epoch, so a run killed at any point and resumed ends with the same weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TailsynthError
from ..utils import derive_seed, progress_enabled
from .augment import augment, to_float
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from .config import TrainConfig
from .samplers import SAMPLERS

SelectFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class ArrayData:
    """Images as uint8 (N, H, W, C) and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise TailsynthError(f"{len(self.images)} images but {len(self.labels)} labels")


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, epoch: int, drop_epoch: int | None) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr``; x0.1 from ``drop_epoch`` (DRW, Cao et al.)."""
    warmup = cfg.warmup_epochs * total_steps // max(cfg.epochs, 1)
    if step < warmup:
        lr = cfg.lr * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(total_steps - warmup, 1)
        lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    if drop_epoch is not None and epoch >= drop_epoch:
        lr *= 0.1
    return lr


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512,
            amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and features (N, D) in eval mode, float32 numpy."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(images[start:start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            z = model.forward_features(x)
            out = model.forward_head(z)
        logits.append(out.float().cpu())
        feats.append(z.float().cpu())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def _set_train_mode(model: torch.nn.Module, trainable: str) -> None:
    model.train()
    if trainable == "head":  # cRT: the backbone (and its BatchNorm statistics) stays frozen
        model.eval()
        model.head.train()


def fit(model: torch.nn.Module, criterion: torch.nn.Module, train: ArrayData, val: ArrayData,
        cfg: TrainConfig, workdir: Path, *, seed: int, device: torch.device, select: SelectFn | None,
        sampler: str = "instance", trainable: str = "all", drop_epoch: int | None = None,
        log: Callable[[str], None] = print, progress: bool | None = None) -> dict:
    """Train ``model`` in place, checkpointing to ``workdir`` each epoch; leave the selected weights in
    ``workdir/best.safetensors`` and load them into ``model``. Returns the training summary.

    ``select(val_logits, val_labels) -> float`` scores an epoch on the validation split (higher is
    better); it never sees the test split. ``cfg.selection == 'last'`` keeps the final epoch.
    """
    workdir = Path(workdir)
    order_fn = SAMPLERS.get(sampler)
    model.to(device)
    params = list(model.head.parameters()) if trainable == "head" else list(model.parameters())
    if trainable == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    use_amp = cfg.amp and device.type == "cuda"

    state = load_checkpoint(workdir, model, optimizer, device)
    if state is None:
        state = {"epoch": 0, "best_score": None, "best_epoch": None, "history": []}
    elif state["epoch"] > 0:
        log(f"resuming from the checkpoint after epoch {state['epoch']} in {workdir}")

    for epoch in range(state["epoch"], cfg.epochs):
        if hasattr(criterion, "set_epoch"):
            criterion.set_epoch(epoch)
        generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        order = order_fn(train.labels, generator)
        _set_train_mode(model, trainable)
        total, count = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress_enabled() if progress is None else progress), mininterval=1.0)
        for batch in bar:
            idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
            x = to_float(torch.from_numpy(train.images[idx]))
            x = augment(x, cfg.augment, generator).to(device)
            y = torch.from_numpy(train.labels[idx]).to(device)
            step = epoch * steps_per_epoch + batch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps, epoch, drop_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise TailsynthError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, batch {batch + 1}; training stopped. "
                    f"The last good checkpoint (after epoch {state['epoch']}) is kept in {workdir}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"]}
        if cfg.selection == "last" or select is None:
            score = float(epoch)
        else:
            val_logits, _ = predict(model, val.images, device, cfg.eval_batch_size, amp=False)  # as evaluation
            score = float(select(val_logits, val.labels))
            record["val_selection"] = score
        if state["best_score"] is None or score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch + 1
            save_weights(model, workdir / "best.safetensors")
        state["history"].append(record)
        state["epoch"] = epoch + 1
        save_checkpoint(workdir, model, optimizer, state)
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.4f}"
            + (f" val {cfg.selection} {score:.4f}" if "val_selection" in record else ""))
    load_weights(model, workdir / "best.safetensors")
    return {"best_epoch": state["best_epoch"], "best_score": state["best_score"], "history": state["history"]}
