"""The stages of an experiment: split -> train classifier -> evaluate (-> report, in ``experiment_run``)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import SerializeAsAny, model_validator

from .. import distributed
from ..config import StrictConfig
from ..data import BenchmarkConfig, DataConfig, Split, build_split
from ..data.far import FarSet
from ..errors import TailsynthError
from ..methods import METHODS
from ..ood import SCORES, evaluate, evaluate_scores
from ..ood.posthoc import classifier_layer
from ..training import TrainConfig, fit, predict
from ..training.checkpoint import save_weights
from ..utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device
from ..engine import Artifact, Stage
from .rare_flag import rare_flag_metrics, selection_and_calibration
from ..engine.artifacts import (SPLIT_FILE, calibrate_tail_threshold, drop_checkpoints, load_classifier, new_classifier,
                                read_split, split_data)


class SplitStageConfig(StrictConfig):
    benchmark: BenchmarkConfig
    seed: int
    source_fingerprint: str


class TrainStageConfig(StrictConfig):
    method: str
    # the method's typed settings (method_params.<name>, parsed once; a mapping is parsed by the method)
    method_config: SerializeAsAny[StrictConfig]
    seed: int
    data: DataConfig
    train: TrainConfig
    device: str = "auto"
    weights_sha256: str | None = None  # of train.pretrained: new weights at the same path are a new stage
    synthetic_per_class: int | None = None  # synthesis methods: first N synthetic images per tail class
    label: str | None = None  # the row name in reports (default: method), e.g. "logex@25" in a sweep

    @model_validator(mode="before")
    @classmethod
    def _typed_method_config(cls, data: Any) -> Any:
        """A mapping (a manifest read back) becomes the method's typed Config."""
        if isinstance(data, dict) and isinstance(data.get("method_config", {}), dict) and "method" in data:
            method = METHODS.get(data["method"])
            data = {**data, "method_config": method.parse_config(data.get("method_config", {}), "method_config")}
        return data


class EvalStageConfig(StrictConfig):
    # far_ood added later: an empty list leaves the fingerprint of every evaluation made before it unchanged
    fingerprint_neutral: ClassVar[tuple[str, ...]] = ("far_ood",)

    data: DataConfig
    scores: list[str]
    primary_score: str = "p_tail"
    device: str = "auto"
    far_ood: list[FarSet] = []  # the experiment's far-OOD sets found on this machine (pipeline/far_ood.py)


def run_split(cfg: SplitStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = build_split(cfg.benchmark, seed=cfg.seed)
    split.write(workdir / SPLIT_FILE)
    return {"counts": split.counts()}


def run_train(cfg: TrainStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Train one method with one seed: the method gives the training data, the network's starting point,
    the objective and the batch source (:class:`tailsynth.methods.Method`); ``fit`` runs the loop."""
    method = METHODS.get(cfg.method)
    if (workdir / "model.json").is_file() and (workdir / "history.json").is_file():
        summary = read_json(workdir / "history.json")  # finished before an interruption: nothing to redo
        return {"best_epoch": summary["best_epoch"], "best_score": summary["best_score"]}
    split = read_split(inputs["split"])
    train = method.training_data(split, split_data(split, cfg.data, "train"), inputs, cfg.data,
                                 cfg.synthetic_per_class, cfg.method_config)
    val_images = split_data(split, cfg.data, "val")
    # classifier.calibration: split mode holds a seeded part of the val head images out of model selection
    val, held_out = selection_and_calibration(method.validation_data(split, val_images, inputs), val_images, split,
                                              cfg.train.calibration, cfg.seed)
    labels = np.asarray(train.labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(split.class_names))  # label -1: an outlier (Dream-OOD)
    missing = [split.class_names[c] for c in method.trained_classes(split) if counts[c] == 0]
    if missing:
        raise TailsynthError(f"no training images for classes {missing} in {inputs['split'].path}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model, card = new_classifier(cfg.train, cfg.data, split, cfg.label or cfg.method, cfg.seed,
                                 head=method.head_spec(split, inputs, cfg.method_config))
    trainable = method.init_model(model, inputs, cfg.seed)
    objective = method.objective(counts.tolist(), split, cfg.method_config)
    select = method.selector(split, cfg.train)
    summary = fit(model, objective, method.batches(train, cfg.train), val, cfg.train, workdir, seed=cfg.seed,
                  device=device, select=select, trainable=trainable)
    if distributed.world()[0] != 0:
        return {}  # data-parallel: rank 0 writes the artifact
    save_weights(model, workdir / "model.safetensors")
    if split.tail_classes:
        card["tail_threshold"] = calibrate_tail_threshold(model, val_images, split, device,
                                                          score=method.primary_score or "p_tail", **held_out)
    atomic_write_json(workdir / "history.json", summary)
    atomic_write_json(workdir / "model.json", card)  # last: its presence marks the work as finished
    drop_checkpoints(workdir)
    return {"best_epoch": summary["best_epoch"], "best_score": summary["best_score"],
            "train_counts": counts.tolist()}


def validation_metrics(val, train, split: Split, primary: str) -> dict[str, float]:
    """FPR@95 / AUROC of the primary score and bAcc-head / bAcc-tail on the VALIDATION split, reported beside the
    test numbers so that choices can be made on validation (empty when val has no tail image)."""
    logits, feats, labels = val
    if not len(labels) or not np.isin(labels, split.tail_classes).any():
        return {}
    res = evaluate(logits, feats, labels, split.head_classes, split.tail_classes, train[1], train[2],
                   scores=[primary], primary=primary)
    return {f"val_{k}": res[k] for k in ("fpr95", "auroc", "bacc_head", "bacc_tail")}


def run_evaluate(cfg: EvalStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Test-set metrics and every OOD score, validation metrics of the primary score (``val_*``); the P(tail)
    threshold at 95 % head TPR is calibrated on val."""
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
        primary=cfg.primary_score, classifier=classifier_layer(model))  # ViM's origin -pinv(W) b
    result["metrics"].update(validation_metrics(outputs["val"], outputs["train"], split, cfg.primary_score))
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
    # the rare-case flag: the card's split-conformal threshold (alpha 0.05, 0.01) applied to the test split
    rare = rare_flag_metrics(card, test_logits, test_labels, outputs["val"][0], outputs["val"][2], split)
    if rare is not None:
        metrics["rare_flag"] = rare
    if cfg.far_ood:  # the same fitted scores on each far set, head test images as positives; far_scores.npz
        from .far_ood import far_ood_metrics
        metrics["far_ood"] = far_ood_metrics(
            cfg.far_ood, lambda images: predict(model, images, device, amp=False), cfg.data, cfg.scores,
            cfg.primary_score, split.head_classes, split.tail_classes, outputs["train"], outputs["val"],
            classifier_layer(model), test_labels, score_arrays, workdir)
    atomic_write_json(workdir / "metrics.json", metrics)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=test_labels, is_tail=np.isin(test_labels, split.tail_classes),
                        **score_arrays)
    atomic_write_bytes(workdir / "scores.npz", buffer.getvalue())
    return {"metrics": result["metrics"]}


def _epochs(cfg: TrainStageConfig) -> str:
    return f"{cfg.train.epochs} epochs x batch {cfg.train.batch_size}"


SPLIT = Stage("split", "1", run_split, "long-tailed benchmark split manifest")
TRAIN = Stage("train_classifier", "1", run_train, "classifier training (one method, one seed)", sharded=True,
              cost=_epochs)
EVALUATE = Stage("evaluate", "2", run_evaluate, "test metrics, OOD scores and validation metrics")


def all_scores(names: list[str] | None) -> list[str]:
    if names is None:
        return SCORES.names()
    for name in names:
        SCORES.get(name)
    return list(names)
