"""Readers of finished artifacts, in one place: every stage and the API read their inputs through these.

split -> :func:`read_split` / :func:`split_data`; classifier -> :func:`load_classifier` (``model.json`` is
the card needed to rebuild the network); diffusion -> :func:`load_base` / :func:`load_adapted`; synthetic
images -> :class:`tailsynth.data.synthetic.SyntheticSet`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Split, load_images, split_arrays
from ..diffusion import BACKENDS, load_lora
from ..models import create_model
from ..models.heads import install_head
from ..models.pretrained import IMAGENET_NORM, load_backbone
from ..ood import logit_score
from ..ood.conformal import calibration_record
from ..training import ArrayData, TrainConfig, predict
from ..training.checkpoint import load_weights
from ..utils import read_json
from .store import Artifact

SPLIT_FILE = "split.csv"
CHECKPOINT_FILES = ("train_state.json", "last.safetensors", "last_objective.safetensors", "optimizer.pt",
                    "best.safetensors")


def read_split(artifact: Artifact) -> Split:
    return Split.read(artifact.file(SPLIT_FILE))


def split_data(split: Split, data, which: str) -> ArrayData:
    """Decoded (cached) images and labels of one split of the benchmark (``data``: a DataConfig)."""
    arrays = load_images(split.source, data.image_size, data.channels, skip_corrupt=data.skip_corrupt)
    images, labels = split_arrays(split, arrays, which)
    return ArrayData(images, labels)


def model_card(train: TrainConfig, data, split: Split, method: str, seed: int) -> dict[str, Any]:
    """Everything needed to rebuild the network and interpret its outputs (``model.json``)."""
    small = train.small_input if train.small_input is not None else data.image_size <= 64
    return {
        "model": train.model, "width": train.width, "small_input": small,
        "num_classes": len(split.class_names), "in_channels": data.channels,
        "image_size": data.image_size, "class_names": list(split.class_names),
        "head_classes": list(split.head_classes), "tail_classes": list(split.tail_classes),
        "preprocessing": "uint8 -> [-1, 1]", "method": method, "seed": seed,
    }


def build_model(card: dict[str, Any]) -> torch.nn.Module:
    model = create_model(card["model"], num_classes=card["num_classes"], in_channels=card["in_channels"],
                         width=card["width"], small_input=card["small_input"])
    if card.get("head"):  # a head other than the plain linear layer (models/heads.py)
        install_head(model, card["head"])
    if card.get("input_norm"):
        model.set_input_norm(card["input_norm"]["mean"], card["input_norm"]["std"])
    return model


def new_classifier(train: TrainConfig, data, split: Split, method: str, seed: int, head: dict | None = None
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A freshly initialised network and its card; with ``train.pretrained`` its backbone is loaded from the
    weights file (head re-initialised) and the card stores the input normalisation those weights expect;
    ``head``: a head spec of :func:`tailsynth.models.heads.install_head` (stored in the card)."""
    card = model_card(train, data, split, method, seed)
    if head:
        card["head"] = head
    if train.input_norm == "imagenet" or (train.input_norm == "auto" and train.pretrained):
        card["input_norm"] = IMAGENET_NORM if data.channels == 3 else {  # gray: the channels' average
            k: [round(sum(v) / 3, 4)] for k, v in IMAGENET_NORM.items()}
    model = build_model(card)
    if train.pretrained:
        card["pretrained"] = {"path": str(train.pretrained), **load_backbone(model, train.pretrained)}
    return model, card


def load_classifier(artifact_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    card = read_json(Path(artifact_dir) / "model.json")
    model = build_model(card)
    load_weights(model, Path(artifact_dir) / "model.safetensors")
    model.eval()
    return model, card


def drop_checkpoints(workdir: Path) -> None:
    """Remove the trainer's resume files once the final weights are written (state file first)."""
    for name in CHECKPOINT_FILES:
        (workdir / name).unlink(missing_ok=True)


def load_base(artifact_dir: Path, d, device: torch.device):
    """The base backend of a ``train_diffusion`` artifact (``d``: the DiffusionConfig), by its registered kind."""
    record = read_json(Path(artifact_dir) / "base.json")
    backend = BACKENDS.get(record["backend"]).load_base(Path(artifact_dir), record, d.model_dump())
    return backend.to(device)


def load_adapted(base_dir: Path, lora_dir: Path, d, split: Split, device: torch.device):
    """The LoRA-adapted backend and {tail class index: its condition id}."""
    backend = load_base(base_dir, d, device)
    ids = load_lora(backend, Path(lora_dir) / "train" / "lora")
    backend.to(device).eval()
    return backend, dict(zip(split.tail_classes, ids))


def images_of(split: Split, data, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Training images of ``classes`` and their positions in ``classes`` (condition ids)."""
    train = split_data(split, data, "train")
    keep = np.isin(train.labels, classes)
    index = {c: i for i, c in enumerate(classes)}
    return train.images[keep], np.array([index[int(y)] for y in train.labels[keep]], dtype=np.int64)


def oracle_pool(split: Split, data) -> ArrayData:
    """Every source image of the benchmark's classes that is not in the test split; with the benchmark's
    ``max_per_class.oracle`` cap, a seeded random subset of that many per class (a dry run)."""
    arrays = load_images(split.source, data.image_size, data.channels, skip_corrupt=data.skip_corrupt)
    test_ids = set(split.ids("test"))
    index = {name: i for i, name in enumerate(split.class_names)}
    keep, labels = [], []
    for row, (sid, y) in enumerate(zip(arrays.ids, arrays.labels.tolist())):
        name = arrays.class_names[y]
        if name in index and sid not in test_ids:
            keep.append(row)
            labels.append(index[name])
    keep, labels = np.array(keep, dtype=np.int64), np.array(labels, dtype=np.int64)
    cap = ((split.meta.get("benchmark") or {}).get("max_per_class") or {}).get("oracle")
    if cap is not None:
        chosen = [np.sort(np.random.default_rng([split.seed, c, 7]).permutation(np.flatnonzero(labels == c))[:cap])
                  for c in range(len(split.class_names))]
        pick = np.concatenate(chosen)
        keep, labels = keep[pick], labels[pick]
    return ArrayData(arrays.images[keep], labels)


def calibrate_tail_threshold(model: torch.nn.Module, val: ArrayData, split: Split, device: torch.device,
                             tpr: float = 0.95, score: str = "p_tail", *, calibration: np.ndarray | None = None,
                             mode: str = "shared", fraction: float | None = None) -> dict[str, Any]:
    """The rare-case threshold of a logit score (P(tail); a head-only row: its own, the head energy), stored with
    the model (``predict`` flags an image as rare above it): split-conformal at alpha = 1 - ``tpr``
    (:mod:`tailsynth.ood.conformal`) on the calibration head images, ``calibration`` (a mask over ``val``;
    default every VALIDATION head image, ``mode`` "shared"). The card keeps the calibration scores and their
    predicted head classes, so ``predict --alpha`` re-thresholds without retraining. The threshold reads the
    calibration head scores only (``val_tail_tpr``: the share of validation tail images flagged)."""
    head = ~np.isin(val.labels, split.tail_classes)
    cal_in = head if calibration is None else np.asarray(calibration, dtype=bool) & head
    tail_in = ~head
    logits, _ = predict(model, val.images, device)
    scores = logit_score(score, logits, split.head_classes, split.tail_classes)
    head_pred = np.asarray(split.head_classes)[logits[:, split.head_classes].argmax(1)]
    record = calibration_record(scores[cal_in], head_pred[cal_in], score=score, mode=mode,
                                alpha=round(1.0 - tpr, 12), fraction=fraction)
    value = record["value"]
    return {"score": score, "value": value, "target_head_tpr": tpr,
            "val_head_tpr": None if value is None else float(np.mean(scores[cal_in] <= value)),
            "val_tail_tpr": float(np.mean(scores[tail_in] > value)) if tail_in.any() and value is not None else None,
            **record}
