"""The stages of an experiment: split -> train classifier -> evaluate (-> report, in ``experiment_run``)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import StrictConfig
from ..data import BenchmarkConfig, Split, build_split, load_images, split_arrays
from ..errors import TailsynthError
from ..losses import build_criterion
from ..models import create_model
from ..ood import SCORES, build_score, evaluate_scores, head_threshold
from ..training import METHODS, ArrayData, TrainConfig, fit, predict
from ..training.checkpoint import load_weights, save_weights
from ..training.selection import make_selector
from ..utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device
from .experiment import DataConfig
from .runner import Stage
from .store import Artifact

SPLIT_FILE = "split.csv"


class SplitStageConfig(StrictConfig):
    benchmark: BenchmarkConfig
    seed: int
    source_fingerprint: str


class TrainStageConfig(StrictConfig):
    method: str
    criterion_params: dict[str, Any] = {}
    seed: int
    data: DataConfig
    train: TrainConfig
    device: str = "auto"
    synthetic_per_class: int | None = None  # synthesis methods: first N synthetic images per tail class
    label: str | None = None  # the row name in reports (default: method), e.g. "logex@25" in a sweep


class EvalStageConfig(StrictConfig):
    data: DataConfig
    scores: list[str]
    primary_score: str = "p_tail"
    device: str = "auto"


def run_split(cfg: SplitStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = build_split(cfg.benchmark, seed=cfg.seed)
    split.write(workdir / SPLIT_FILE)
    return {"counts": split.counts()}


def read_split(artifact: Artifact) -> Split:
    return Split.read(artifact.file(SPLIT_FILE))


def split_data(split: Split, data: DataConfig, which: str) -> ArrayData:
    """Decoded (cached) images and labels of one split of the benchmark."""
    arrays = load_images(split.source, data.image_size, data.channels, skip_corrupt=data.skip_corrupt)
    images, labels = split_arrays(split, arrays, which)
    return ArrayData(images, labels)


def model_card(train: TrainConfig, data: DataConfig, split: Split, method: str, seed: int) -> dict[str, Any]:
    """Everything needed to rebuild the network and interpret its outputs (``model.json``)."""
    small = train.small_input if train.small_input is not None else data.image_size <= 64
    return {
        "model": train.model, "width": train.width, "small_input": small,
        "num_classes": len(split.class_names), "in_channels": data.channels,
        "image_size": data.image_size, "class_names": list(split.class_names),
        "head_classes": list(split.head_classes), "tail_classes": list(split.tail_classes),
        "preprocessing": "uint8 -> [-1, 1]", "method": method, "seed": seed,
    }


CHECKPOINT_FILES = ("train_state.json", "last.safetensors", "optimizer.pt", "best.safetensors")


def drop_checkpoints(workdir: Path) -> None:
    """Remove the trainer's resume files once the final weights are written (state file first)."""
    for name in CHECKPOINT_FILES:
        (workdir / name).unlink(missing_ok=True)


def build_model(card: dict[str, Any]) -> torch.nn.Module:
    return create_model(card["model"], num_classes=card["num_classes"], in_channels=card["in_channels"],
                        width=card["width"], small_input=card["small_input"])


def load_classifier(artifact_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    card = read_json(Path(artifact_dir) / "model.json")
    model = build_model(card)
    load_weights(model, Path(artifact_dir) / "model.safetensors")
    model.eval()
    return model, card


def run_train(cfg: TrainStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Train one method with one seed; ``inputs['base']`` (cRT) is the model whose head is retrained."""
    spec = METHODS.get(cfg.method)
    if (workdir / "model.json").is_file() and (workdir / "history.json").is_file():
        summary = read_json(workdir / "history.json")  # finished before an interruption: nothing to redo
        return {"best_epoch": summary["best_epoch"], "best_score": summary["best_score"]}
    split = read_split(inputs["split"])
    train, val = split_data(split, cfg.data, "train"), split_data(split, cfg.data, "val")
    if "synthetic" in inputs:  # synthetic tail images join the training split only
        from .diffusion_stages import read_synthetic
        syn_images, syn_labels = read_synthetic(inputs["synthetic"].path, split.class_names, cfg.data,
                                                cfg.synthetic_per_class)
        train = ArrayData(np.concatenate([train.images, syn_images]), np.concatenate([train.labels, syn_labels]))
    counts = np.bincount(train.labels, minlength=len(split.class_names))
    missing = [split.class_names[c] for c in range(len(counts)) if counts[c] == 0]
    if missing:
        raise TailsynthError(f"no training images for classes {missing} in {inputs['split'].path}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # weight initialisation
    card = model_card(cfg.train, cfg.data, split, cfg.label or cfg.method, cfg.seed)
    model = build_model(card)
    trainable = "all"
    if spec.crt_from is not None:
        load_weights(model, inputs["base"].file("model.safetensors"))
        generator = torch.Generator().manual_seed(cfg.seed)
        model.reset_head(generator=generator)
        trainable = "head"
    criterion = build_criterion(spec.criterion, counts.tolist(), tail_classes=split.tail_classes,
                                **{**spec.criterion_params, **cfg.criterion_params})
    select = make_selector(cfg.train.selection, split.head_classes, split.tail_classes)
    summary = fit(model, criterion, train, val, cfg.train, workdir, seed=cfg.seed, device=device,
                  select=select, sampler=spec.sampler, trainable=trainable,
                  drop_epoch=getattr(criterion, "drw_epoch", None))
    save_weights(model, workdir / "model.safetensors")
    if split.tail_classes:
        card["tail_threshold"] = calibrate_tail_threshold(model, val, split, device)
    atomic_write_json(workdir / "history.json", summary)
    atomic_write_json(workdir / "model.json", card)  # last: its presence marks the work as finished
    drop_checkpoints(workdir)
    return {"best_epoch": summary["best_epoch"], "best_score": summary["best_score"],
            "train_counts": counts.tolist()}


def calibrate_tail_threshold(model: torch.nn.Module, val: ArrayData, split: Split, device: torch.device,
                             tpr: float = 0.95) -> dict[str, Any]:
    """P(tail) threshold that keeps ``tpr`` of the VALIDATION head images as head (stored with the model;
    ``predict`` flags an image as rare when its P(tail) is above it)."""
    logits, _ = predict(model, val.images, device)
    p_tail = build_score("p_tail").fit(None, None, split.head_classes, split.tail_classes).score(logits)
    head = ~np.isin(val.labels, split.tail_classes)
    head_likeness_cut = head_threshold(p_tail[head], tpr)
    return {"score": "p_tail", "value": float(-head_likeness_cut), "target_head_tpr": tpr,
            "val_head_tpr": float(np.mean(p_tail[head] <= -head_likeness_cut)),
            "val_tail_tpr": float(np.mean(p_tail[~head] > -head_likeness_cut)) if (~head).any() else None}


def run_evaluate(cfg: EvalStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Test-set metrics and every OOD score; the P(tail) threshold at 95 % head TPR is calibrated on val."""
    split = read_split(inputs["split"])
    model, card = load_classifier(inputs["classifier"].path)
    device = resolve_device(cfg.device)
    model.to(device)
    outputs = {}
    for which in ("train", "val", "test"):
        data = split_data(split, cfg.data, which)
        logits, feats = predict(model, data.images, device, amp=False)
        outputs[which] = (logits, feats, data.labels)
    result, score_arrays = evaluate_scores(
        outputs["test"], outputs["train"], outputs["val"], head_classes=split.head_classes,
        tail_classes=split.tail_classes, groups=split.groups, score_names=cfg.scores,
        primary=cfg.primary_score)
    test_logits, _, test_labels = outputs["test"]
    per_class = {name: float((test_logits.argmax(1)[test_labels == c] == c).mean())
                 for c, name in enumerate(split.class_names) if (test_labels == c).any()}
    metrics = {
        "method": card["method"], "seed": card["seed"], "primary_score": cfg.primary_score,
        "metrics": result["metrics"], "scores": result["scores"], "threshold": result.get("threshold"),
        "per_class_acc": per_class, "class_names": list(split.class_names),
        "head_classes": list(split.head_classes), "tail_classes": list(split.tail_classes),
        "wall_time_s": inputs["classifier"].manifest.get("wall_time_s"),
    }
    atomic_write_json(workdir / "metrics.json", metrics)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=test_labels, is_tail=np.isin(test_labels, split.tail_classes),
                        **score_arrays)
    atomic_write_bytes(workdir / "scores.npz", buffer.getvalue())
    return {"metrics": result["metrics"]}


SPLIT = Stage("split", "1", run_split, "long-tailed benchmark split manifest")
TRAIN = Stage("train_classifier", "1", run_train, "classifier training (one method, one seed)")
EVALUATE = Stage("evaluate", "1", run_evaluate, "test metrics and OOD scores")


def all_scores(names: list[str] | None) -> list[str]:
    if names is None:
        return SCORES.names()
    for name in names:
        SCORES.get(name)
    return list(names)
