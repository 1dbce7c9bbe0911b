"""The one classifier training loop. A method is a choice of objective, batch source and schedule.

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

from .. import distributed
from ..errors import TailsynthError
from ..utils import derive_seed, progress_enabled
from .adversarial import pgd_attack
from .augment import to_float
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from .config import TrainConfig
from .objectives import Objective, split_output

SelectFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class ArrayData:
    """Images as uint8 (N, H, W, C) and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise TailsynthError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass
class FeatureData:
    """Cached feature vectors (N, D) float32 and labels (N,); ``pseudo`` (N,) bool marks generated ones (LDMLR).
    A method that trains a classifier layer on features gives these instead of images (no image forward pass)."""

    features: np.ndarray
    labels: np.ndarray
    pseudo: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.labels):
            raise TailsynthError(f"{len(self.features)} feature vectors but {len(self.labels)} labels")
        if self.pseudo is not None and len(self.pseudo) != len(self.labels):
            raise TailsynthError(f"{len(self.pseudo)} pseudo flags for {len(self.labels)} feature vectors")


@torch.no_grad()
def validation_logits(model: torch.nn.Module, val, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Logits of the validation split in eval mode: from images (:class:`ArrayData`) through the whole network,
    or from cached features (:class:`FeatureData`) through the classifier layer alone."""
    if isinstance(val, FeatureData):
        model.eval()
        z = torch.as_tensor(np.asarray(val.features, dtype=np.float32))
        out = [model.forward_head(z[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, model.num_classes), np.float32)
    return predict(model, val.images, device, batch_size, amp=False)[0]


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, epoch: int, drop_epoch: int | None) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` or constant ``lr`` (``cfg.lr_schedule``; auto:
    constant under DRW, as the LoGex code); x0.1 from ``drop_epoch`` (DRW, Cao et al. 2019)."""
    schedule = cfg.lr_schedule if cfg.lr_schedule != "auto" else ("constant" if drop_epoch is not None else "cosine")
    warmup = cfg.warmup_epochs * total_steps // max(cfg.epochs, 1)
    if step < warmup:
        lr = cfg.lr * (step + 1) / warmup
    elif schedule == "constant":
        lr = cfg.lr
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


def fit(model: torch.nn.Module, objective: Objective, batches, val: "ArrayData | FeatureData",
        cfg: TrainConfig, workdir: Path, *, seed: int, device: torch.device, select: SelectFn | None,
        trainable: str = "all", log: Callable[[str], None] = print, progress: bool | None = None) -> dict:
    """Train ``model`` in place, checkpointing to ``workdir`` each epoch; leave the selected weights in
    ``workdir/best.safetensors`` and load them into ``model``. Returns the training summary.

    ``objective(model, batch)`` (:mod:`~tailsynth.training.objectives`) gives the loss (and optional named
    parts, averaged per epoch in the history); its own parameters, if any, are trained and checkpointed
    too. ``batches`` (:mod:`~tailsynth.training.batches`) yields each epoch's batches from a generator
    seeded by (seed, epoch). ``trainable="head"`` trains the classifier layer alone with the backbone and
    its BatchNorm statistics frozen (cRT). ``select(val_logits, val_labels) -> float`` scores an epoch on
    the validation split (higher is better); it never sees the test split. ``cfg.selection == 'last'``
    keeps the final epoch. ``progress`` (default: on a terminal only) draws the batch bars and logs one
    ``epoch k/N loss ... val ...`` line per epoch; without it only a resume is logged (the history is in the
    returned summary and the checkpoint).
    """
    workdir = Path(workdir)
    if cfg.adversarial.eps > 0 and isinstance(val, FeatureData):
        raise TailsynthError("classifier.adversarial: adversarial training perturbs input images; this method "
                             "trains on cached feature vectors (set adversarial.eps: 0)")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    objective.to(device)
    params = list(model.head.parameters()) if trainable == "head" else list(model.parameters())
    if trainable == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    params += list(objective.parameters())
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(batches) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    use_amp = cfg.amp and device.type == "cuda"
    extra = {"objective": objective} if any(True for _ in objective.parameters()) else {}

    parallel = distributed.active()
    main = distributed.world()[0] == 0
    state = load_checkpoint(workdir, model, optimizer, device, extra)
    if state is None:
        state = {"epoch": 0, "best_score": None, "best_epoch": None, "history": []}
    elif state["epoch"] > 0:
        log(f"resuming from the checkpoint after epoch {state['epoch']} in {workdir}")

    bars = progress_enabled() if progress is None else progress
    for epoch in range(state["epoch"], cfg.epochs):
        objective.set_epoch(epoch)
        generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        _set_train_mode(model, trainable)
        objective.train()
        total, count, part_sums = 0.0, 0, {}
        bar = tqdm(zip(range(steps_per_epoch), batches.epoch(generator, cfg.batch_size)), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not bars, mininterval=1.0)
        for b, batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            if cfg.channels_last and "x" in batch and batch["x"].dim() == 4:
                batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
            n = len(batch["y"])
            step = epoch * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps, epoch, objective.drop_epoch)
            if parallel:  # this rank's slice; its loss weighted by its share, gradients summed over ranks
                batch = {k: v[distributed.batch_slice(n)] for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if cfg.adversarial.eps > 0:  # Madry et al. 2018: train on the batch's PGD adversarial examples
                    batch = {**batch, "x": pgd_attack(model, batch["x"], batch["y"], cfg.adversarial)}
                loss, parts = split_output(objective(model, batch))
            if parallel:
                share = len(batch["y"]) / n
                total_loss = (loss.detach().float() * share).reshape(1)
                distributed.all_reduce_sum([total_loss])
                loss = loss * share
            if not torch.isfinite(total_loss if parallel else loss):
                raise TailsynthError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, batch {b + 1}; training stopped. "
                    f"The last good checkpoint (after epoch {state['epoch']}) is kept in {workdir}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if parallel:
                distributed.all_reduce_gradients(params)
                loss = total_loss[0]
            optimizer.step()
            total += loss.item() * n
            count += n
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + float(value) * n
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"]}
        if part_sums:
            record["loss_parts"] = {k: v / max(count, 1) for k, v in part_sums.items()}
        if cfg.selection == "last" or select is None or not main:
            score = float(epoch)
        else:
            val_logits = validation_logits(model, val, device, cfg.eval_batch_size)  # as evaluation
            score = float(select(val_logits, val.labels))
            record["val_selection"] = score
        if state["best_score"] is None or score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch + 1
            if main:
                save_weights(model, workdir / "best.safetensors")
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if main:
            save_checkpoint(workdir, model, optimizer, state, extra)
        if bars:  # beside the bars on a terminal; a log file gets the stage's one [done] line instead
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.4f}"
                + (f" val {getattr(select, 'label', cfg.selection)} {score:.4f}" if "val_selection" in record else ""))
    if main:
        load_weights(model, workdir / "best.safetensors")
    return {"best_epoch": state["best_epoch"], "best_score": state["best_score"], "history": state["history"]}
