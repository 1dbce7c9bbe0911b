"""Minority-guidance stages (Um et al. 2024): scores of real images, the minority classifier.

- ``minority_score``: the minority score of every image of the chosen splits under the LoRA-adapted diffusion
  model -- class-conditional (Eq. 16; the model has a condition for every class: base tokens for the head, LoRA
  tokens for the tail) or with the null condition (Eq. 7), as ``mode`` says -- all three distances in one pass over
  the same noise draws; chunked and resumable (``chunks/NNNNN.npz``), then ``scores.npz`` (ids, labels, split, l2,
  l1, perceptual, eps_sq).
- ``train_minority_classifier``: L quantile levels of one distance's score -- within each class for the
  conditional classifier p(l~ | x_t, c) (App. B.2, Eq. 17), over all training images for p(l~ | x_t) (Eq. 8) --
  then the noise-conditioned classifier on the training images (:mod:`tailsynth.minority.classifier`);
  ``levels.json`` holds the thresholds and the level means (tau).

The synthesis method ``minority`` (``method.py``) samples with the classifier's guidance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ...config import StrictConfig, build_config
from ...data import DataConfig, convert_array, load_images, split_arrays
from ...diffusion import DiffusionConfig
from ...engine import Artifact, Stage
from ...engine.artifacts import load_adapted, load_classifier, new_classifier, read_split
from ...errors import TailsynthError
from ...minority import (MinorityClassifierConfig, MinorityScoreConfig, PerceptualDistance, level_means,
                         minority_scores, quantile_labels, train_minority_classifier)
from ...training import TrainConfig
from ...utils import atomic_write_bytes, atomic_write_json, progress_enabled, resolve_device
from .config import score_config

SCORES_FILE = "scores.npz"


class MinorityScoreStageConfig(StrictConfig):
    score: MinorityScoreConfig
    splits: list[Literal["train", "val"]] = ["train"]  # never the test split
    # the network of the perceptual distance: a trained classifier (input "perceptual"), a randomly initialised
    # one of the experiment's recipe (the paper's choice for brain MRI), or none (l2 / l1 only)
    perceptual: Literal["classifier", "random", "none"] = "classifier"
    perceptual_seed: int = 0
    classifier: dict[str, Any] = {}  # the experiment's classifier recipe (for ``random``)
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


class MinorityTrainStageConfig(StrictConfig):
    classifier: MinorityClassifierConfig
    distance: Literal["l2", "l1", "perceptual"] = "perceptual"
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


def condition_ids(split, cond_of: dict[int, int], labels: np.ndarray) -> np.ndarray:
    """The adapted model's condition id of each class label: head class -> its position among the head classes
    (the base model's classes), tail class -> its LoRA token id."""
    head = {c: i for i, c in enumerate(split.head_classes)}
    return np.array([head[int(y)] if int(y) in head else cond_of[int(y)] for y in labels], dtype=np.int64)


def working_images(split, data: DataConfig, diffusion: DiffusionConfig, which: list[str], resize: bool = True):
    """(ids, uint8 images at the backend's working size, labels, split name per image) of ``which`` splits;
    ``resize=False``: at the data's size (the caller resizes a chunk at a time: a split at 512 px is GBs)."""
    arrays = load_images(split.source, data.image_size, data.channels, skip_corrupt=data.skip_corrupt)
    have = set(arrays.ids)
    ids, images, labels, names = [], [], [], []
    for s in which:
        x, y = split_arrays(split, arrays, s)
        ids += [sid for sid in split.ids(s) if sid in have]
        images.append(x)
        labels.append(y)
        names += [s] * len(y)
    images_np = np.concatenate(images)
    size = diffusion.working_size(data.image_size)
    if resize and size != data.image_size:
        images_np = convert_array(images_np, size, 3)
    return ids, images_np, np.concatenate(labels), names


def _perceptual(cfg: MinorityScoreStageConfig, inputs: dict[str, Artifact], split, device) -> PerceptualDistance | None:
    if cfg.perceptual == "none":
        return None
    if cfg.perceptual == "classifier":
        if "perceptual" not in inputs:
            raise TailsynthError("minority score: perceptual 'classifier' needs a classifier artifact (input 'perceptual')")
        model, card = load_classifier(inputs["perceptual"].path)
    else:
        train = build_config(TrainConfig, cfg.classifier, "minority score classifier recipe")
        torch.manual_seed(cfg.perceptual_seed)
        model, card = new_classifier(train, cfg.data, split, "random-features", cfg.perceptual_seed)
    return PerceptualDistance(model.to(device), card["image_size"], card["in_channels"]).to(device)


def run_minority_score(cfg: MinorityScoreStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, device)
    ids, images, labels, names = working_images(split, cfg.data, cfg.diffusion, cfg.splits, resize=False)
    size = cfg.diffusion.working_size(cfg.data.image_size)
    conds = condition_ids(split, cond_of, labels)
    perceptual = _perceptual(cfg, inputs, split, device)
    chunk_dir = workdir / "chunks"
    chunk_dir.mkdir(exist_ok=True)
    n_chunks = -(-len(ids) // cfg.score.chunk_size)
    bar = tqdm(total=len(ids), desc="minority score", unit="img", disable=not progress_enabled())
    for k in range(n_chunks):
        lo, hi = k * cfg.score.chunk_size, min(len(ids), (k + 1) * cfg.score.chunk_size)
        path = chunk_dir / f"{k:05d}.npz"
        if not path.is_file():
            chunk = images[lo:hi] if size == cfg.data.image_size else convert_array(images[lo:hi], size, 3)
            x = torch.as_tensor(chunk).permute(0, 3, 1, 2).float().div(255.0)
            scores = minority_scores(backend, x, torch.as_tensor(conds[lo:hi]), cfg.score, perceptual, k)
            _save_npz(path, scores)
        bar.update(hi - lo)
    bar.close()
    parts = [dict(np.load(chunk_dir / f"{k:05d}.npz")) for k in range(n_chunks)]
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    _save_npz(workdir / SCORES_FILE, {"ids": np.array(ids), "labels": labels, "split": np.array(names), **columns})
    per_class = {split.class_names[c]: {d: float(columns[d][labels == c].mean()) for d in columns}
                 for c in np.unique(labels)}
    return {"n_images": len(ids), "splits": cfg.splits, "mean_per_class": per_class}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_scores(artifact: Artifact | Path) -> dict[str, np.ndarray]:
    path = Path(getattr(artifact, "path", artifact)) / SCORES_FILE
    if not path.is_file():
        raise TailsynthError(f"{path.parent} holds no minority scores ({SCORES_FILE})")
    return dict(np.load(path))


def run_train_minority(cfg: MinorityTrainStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, device)
    scores = read_scores(inputs["scores"])
    if cfg.distance not in scores:
        raise TailsynthError(f"the minority scores hold no {cfg.distance!r} distance (have "
                             f"{sorted(k for k in scores if k in ('l2', 'l1', 'perceptual'))})")
    train = scores["split"] == "train"
    if not train.any():
        raise TailsynthError("the minority classifier trains on training-split scores; the score artifact has none")
    ids, images, labels, _ = working_images(split, cfg.data, cfg.diffusion, ["train"], resize=False)
    if list(ids) != scores["ids"][train].tolist():
        raise TailsynthError("the minority scores were computed on other training images than this split's")
    values = scores[cfg.distance][train]
    L = cfg.classifier.num_levels
    groups = labels if cfg.classifier.conditional else None
    levels = quantile_labels(values, L, groups)
    model, summary = train_minority_classifier(backend, images, condition_ids(split, cond_of, labels), levels,
                                               cfg.classifier, workdir / "train", device,
                                               cfg.diffusion.working_size(cfg.data.image_size))
    taus = {split.class_names[c]: level_means(values[labels == c], levels[labels == c], L).tolist()
            for c in np.unique(labels)} if cfg.classifier.conditional else {"all": level_means(values, levels, L).tolist()}
    model.save(workdir / "model", {"latent": summary["latent"], "distance": cfg.distance})
    atomic_write_json(workdir / "levels.json", {"distance": cfg.distance, "num_levels": L, "taus": taus,
                                                "counts": np.bincount(levels, minlength=L).tolist()})
    return summary


def _score_cost(cfg: MinorityScoreStageConfig) -> str:
    return f"{cfg.score.num_draws} denoiser calls per image ({'+'.join(cfg.splits)})"


def _classifier_cost(cfg: MinorityTrainStageConfig) -> str:
    c = cfg.classifier
    return f"{c.steps} steps x batch {c.batch_size} ({c.encoder} UNet encoder + head)"


MINORITY_SCORE = Stage("minority_score", "1", run_minority_score, "minority scores of real images (chunked)",
                       cost=_score_cost)
TRAIN_MINORITY = Stage("train_minority_classifier", "1", run_train_minority, "noise-conditioned minority classifier",
                       cost=_classifier_cost)


# --- requests (the graph is the one the pipeline hands the method; settings: MinoritySettings) ---------------------
def minority_scores_of(graph, settings, splits: list[str] | None = None) -> Artifact:
    """Minority scores of the real images of ``splits`` (default ``settings.score_splits``) under the
    LoRA-adapted model."""
    inputs = {"split": graph.split(), "base": graph.base_diffusion(), "lora": graph.lora()}
    if settings.perceptual == "classifier":
        inputs["perceptual"] = graph.classifier(settings.perceptual_method, 0)
    cfg = MinorityScoreStageConfig(
        score=score_config(settings.score, graph.diffusion), splits=list(splits or settings.score_splits),
        perceptual=settings.perceptual,
        classifier=graph.config.classifier.model_dump() if settings.perceptual == "random" else {},
        diffusion=graph.diffusion, data=graph.config.data, device=graph.config.device)
    return graph.run(MINORITY_SCORE, cfg, inputs, settings.score.seed, "minority scores")


def minority_classifier(graph, settings) -> Artifact:
    """The noise-conditioned minority classifier on the training images' minority levels."""
    cfg = MinorityTrainStageConfig(classifier=settings.classifier, distance=settings.distance,
                                   diffusion=graph.diffusion, data=graph.config.data, device=graph.config.device)
    inputs = {"split": graph.split(), "base": graph.base_diffusion(), "lora": graph.lora(),
              "scores": minority_scores_of(graph, settings)}
    return graph.run(TRAIN_MINORITY, cfg, inputs, settings.classifier.seed, "minority classifier")
