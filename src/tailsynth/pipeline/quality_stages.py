"""Quality of synthetic images (LoGex §4.4): an oracle classifier trained on the full pool.

The oracle sees every class with all its images outside the test split (before long-tail subsampling);
it is reported only and never used in any training or model selection. It reports its accuracy on each
method's synthetic images per tail class and on the real tail test images, and draws the sample grid
of LoGex Fig. 2/5 (train images | synthetic images of each method, titled with the oracle's prediction).
It also checks memorisation (:mod:`tailsynth.report.memorisation`): each synthetic image's distance to its
nearest training image of its class, in the oracle's features and in pixels, against the class's typical
real-real nearest-neighbour distance, and draws the closest pairs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..config import StrictConfig
from ..data import DataConfig
from ..data.synthetic import SyntheticSet
from ..report.grids import pair_rows, sample_grid
from ..report.memorisation import closest_pairs, nearest_training, pixel_vectors, summarise
from ..training import TrainConfig, fit, predict
from ..training.augment import to_float
from ..training.batches import ImageBatches
from ..training.objectives import CriterionObjective
from ..utils import atomic_write_bytes, atomic_write_json, resolve_device
from ..engine import Artifact, Built, Stage
from ..engine.artifacts import (drop_checkpoints, load_classifier, new_classifier, oracle_pool, read_split,
                                split_data)


class OracleStageConfig(StrictConfig):
    data: DataConfig
    train: TrainConfig
    weights_sha256: str | None = None  # of train.pretrained
    seed: int = 0
    device: str = "auto"


class QualityStageConfig(StrictConfig):
    data: DataConfig
    grid_per_class: int = 4
    pairs_per_class: int = 3  # closest (synthetic, nearest training image) pairs drawn per set and class
    device: str = "auto"


def run_train_oracle(cfg: OracleStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    from ..losses import build_criterion
    from ..training.checkpoint import save_weights
    split = read_split(inputs["split"])
    pool, val = oracle_pool(split, cfg.data), split_data(split, cfg.data, "val")
    torch.manual_seed(cfg.seed)
    model, card = new_classifier(cfg.train, cfg.data, split, "oracle", cfg.seed)
    counts = np.bincount(pool.labels, minlength=len(split.class_names)).tolist()
    train_cfg = cfg.train.model_copy(update={"selection": "last"})  # the oracle makes no choice on val
    summary = fit(model, CriterionObjective(build_criterion("ce", counts)), ImageBatches(pool, train_cfg.augment),
                  val, train_cfg, workdir, seed=cfg.seed, device=resolve_device(cfg.device), select=None)
    if distributed.world()[0] != 0:
        return {}  # data-parallel (every rank trains its share of each batch): rank 0 writes the artifact
    save_weights(model, workdir / "model.safetensors")
    atomic_write_json(workdir / "model.json", card)
    drop_checkpoints(workdir)
    return {"n_train": int(len(pool.labels)), "train_counts": counts, "epochs": len(summary["history"])}


def run_quality(cfg: QualityStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """``quality.json`` (oracle accuracy per method and tail class), ``samples.png`` (the grid),
    ``memorisation.json`` (per method, features and pixels: :func:`tailsynth.report.memorisation.summarise`) and
    ``nearest.png`` (per method and class the closest synthetic images beside their nearest training image)."""
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    oracle, _ = load_classifier(inputs["oracle"].path)
    oracle.to(device)
    names = split.class_names
    test = split_data(split, cfg.data, "test")
    tail_mask = np.isin(test.labels, split.tail_classes)
    pred = predict(oracle, test.images[tail_mask], device)[0].argmax(1)
    result: dict[str, Any] = {"real_tail_test": _accuracy(pred, test.labels[tail_mask], split)}
    columns: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    train = split_data(split, cfg.data, "train")
    tr_mask = np.isin(train.labels, split.tail_classes)
    tr_images, tr_labels = train.images[tr_mask], train.labels[tr_mask]
    tr_logits, tr_feats = predict(oracle, tr_images, device)
    tr_space = {"features": tr_feats, "pixels": pixel_vectors(tr_images)}
    tau_cache: dict[str, dict] = {k: {} for k in tr_space}  # tau per space and class, shared by the sets
    memorisation: dict[str, Any] = {}
    pairs: list[tuple[str, list]] = []
    for key in sorted(k for k in inputs if k.startswith("synthetic:")):
        method = key.split(":", 1)[1]
        images, labels = SyntheticSet.read(inputs[key].path).load_images(names, cfg.data.image_size,
                                                                         cfg.data.channels)
        logits, feats = predict(oracle, images, device) if len(images) else (np.zeros((0, len(names))), None)
        pred = logits.argmax(1) if len(images) else np.zeros(0, int)
        result[method] = _accuracy(pred, labels, split)
        result[method].update(_aux_agreement(inputs[key], images, labels, pred, device))
        columns.append((method, images, labels, pred))
        if len(images):
            space = {"features": feats, "pixels": pixel_vectors(images)}
            near = {k: nearest_training(space[k], labels, tr_space[k], tr_labels, tau_cache[k]) for k in space}
            memorisation[method] = {k: summarise(n, labels, names) for k, n in near.items()}
            pairs += _pair_rows(method, images, labels, tr_images, near, names, cfg.pairs_per_class)
    columns.insert(0, ("train", tr_images, tr_labels, tr_logits.argmax(1)))
    atomic_write_json(workdir / "quality.json", result)
    atomic_write_json(workdir / "memorisation.json", memorisation)
    atomic_write_bytes(workdir / "samples.png", sample_grid(columns, split, cfg.grid_per_class))
    if pairs:
        atomic_write_bytes(workdir / "nearest.png", pair_rows(pairs))
    return {**{k: v["overall"] for k, v in result.items()},
            "near_copies": {m: {k: v["overall"]["near_copies"] for k, v in e.items()} for m, e in memorisation.items()}}


def _pair_rows(method: str, images: np.ndarray, labels: np.ndarray, train_images: np.ndarray, near: dict,
               names, per_class: int) -> list[tuple[str, list]]:
    """Per class, the ``per_class`` synthetic images closest to a training image in the oracle's features, each
    with that training image; captioned with the distance / tau in features (f) and pixels (px)."""
    ratio = {k: n.ratio(labels) for k, n in near.items()}
    rows = []
    for c, found in closest_pairs(near["features"], labels, per_class).items():
        cells = [(images[s], train_images[t],
                  " ".join(f"{short} {ratio[k][s]:.2f}" for k, short in (("features", "f"), ("pixels", "px"))
                           if np.isfinite(ratio[k][s]))) for s, t in found]
        if cells:
            rows.append((f"{method}\n{names[c]}", cells))
    return rows


def _aux_agreement(synthetic: Artifact, images: np.ndarray, labels: np.ndarray, oracle_pred: np.ndarray,
                   device: torch.device) -> dict[str, Any]:
    """Whether the guidance fooled its auxiliary classifier: the auxiliary's accuracy on the synthetic images
    (argmax = the target class) and the share it gets right while the oracle gets wrong (an image made
    confident for the auxiliary without becoming the class: adversarial for it). Empty for a set made without
    an auxiliary classifier."""
    from .diffusion_stages import aux_guide, aux_keys
    manifest = synthetic.manifest
    recorded = manifest.get("inputs", {})
    keys = aux_keys(recorded)
    if not keys or not len(images):
        return {}
    root = synthetic.path.parent.parent  # the runs folder
    guide = aux_guide([root / recorded[k]["stage"] / recorded[k]["fingerprint"] for k in keys], device,
                      manifest["config"]["synthesis"]["guide_resize"])  # the guidance's decision (ensemble mean)
    aux_pred = aux_predictions(guide, images, device)
    aux_right, oracle_right = aux_pred == labels, oracle_pred == labels
    return {"aux_accuracy": float(aux_right.mean()), "aux_right_oracle_wrong": float((aux_right & ~oracle_right).mean()),
            "agreement": float((aux_pred == oracle_pred).mean())}


def aux_predictions(guide, images: np.ndarray, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """The guide's class decision (argmax of its ensemble mean) on uint8 images (N, H, W, C), as DiG-IN saw them."""
    with torch.no_grad():
        return np.concatenate([guide(to_float(torch.from_numpy(images[i:i + batch_size])).add(1).div(2).to(device))
                               .argmax(1).cpu().numpy() for i in range(0, len(images), batch_size)])


def _accuracy(pred: np.ndarray, labels: np.ndarray, split) -> dict[str, Any]:
    names = split.class_names
    counts = {c: np.bincount(pred[labels == c], minlength=len(names)) for c in split.tail_classes if (labels == c).any()}
    per_class = {names[c]: float(n[c] / n.sum()) for c, n in counts.items()}
    predicted = {names[c]: {names[k]: int(m) for k, m in enumerate(n) if m} for c, n in counts.items()}
    return {"overall": float((pred == labels).mean()) if len(labels) else None, "per_class": per_class,
            "n": int(len(labels)), "predicted": predicted}


def _oracle_cost(cfg: OracleStageConfig) -> str:
    return f"{cfg.train.epochs} epochs x batch {cfg.train.batch_size}"


def quality_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    """The oracle's accuracy on every synthetic set and on the real tail test images, the memorisation check of
    every synthetic set, the sample grid and the closest pairs."""
    from ..report.quality import memorisation_table, quality_table
    from ..utils import read_json
    artifact = built[-1].artifact
    accuracy = read_json(artifact.file("quality.json"))
    memorisation = read_json(artifact.file("memorisation.json"))
    sections = [quality_table(accuracy, memorisation)]
    if memorisation:
        sections.append(memorisation_table(memorisation))
    sections.append(("Samples: train images | synthetic images (oracle prediction below each)",
                     artifact.file("samples.png").read_bytes()))
    if (artifact.path / "nearest.png").exists():
        caption = ("Closest pairs: per set and tail class, the synthetic images nearest to a training image of "
                   "their class (oracle features), each beside that training image; f / px = distance / the "
                   "class's typical real-real nearest-neighbour distance in features / pixels (< 1: a near-copy)")
        sections.append((caption, artifact.file("nearest.png").read_bytes()))
    return sections, {"oracle_accuracy": accuracy, "memorisation": memorisation}


# sharded: its training is data-parallel under torchrun, so every rank must run it (rank 0 alone would wait forever
# for the other ranks' gradients)
TRAIN_ORACLE = Stage("train_oracle", "1", run_train_oracle, "oracle classifier on the full pool (report only)",
                     sharded=True, cost=_oracle_cost)
QUALITY = Stage("synthetic_quality", "5", run_quality,
                "oracle accuracy on synthetic images, memorisation check and sample grids", report=quality_report)
