"""LDMLR's feature-space stages (Han et al. 2024, Fig. 1), and the requests that build them:

encode (a trained classifier's penultimate features of train / val / test) -> train_feature_diffusion
(class-conditional denoiser on the training features) -> sample_pseudo_features (per class
max(round(ratio n_c), min_per_class) pseudo-features, their quality against the real features, shown in the
report) -> the method's head fine-tune (an ordinary ``train_classifier`` stage on cached features).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ...config import StrictConfig
from ...data import DataConfig
from ...data.features import FeatureSet
from ...diffusion.feature_diffusion import (FeatureDiffusionConfig, FeatureSamplingConfig, load_feature_diffusion,
                                            sample_features, train_feature_diffusion)
from ...engine import Artifact, Built, Stage
from ...engine.artifacts import load_classifier, read_split, split_data
from ...errors import TailsynthError
from ...training import AugmentConfig, predict
from ...training.augment import augment, to_float
from ...utils import atomic_write_bytes, atomic_write_json, derive_seed, read_json, resolve_device


class EncodeStageConfig(StrictConfig):
    data: DataConfig
    # None: eval-mode features of the unaugmented images (LDMLR paper); an AugmentConfig: the training images
    # encoded once each with that augmentation, as the official code does (val / test are never augmented)
    train_augment: AugmentConfig | None = None
    seed: int = 0
    device: str = "auto"


class PseudoFeatureConfig(StrictConfig):
    """Which pseudo-features to generate, for the classes of ``classes`` (all; a benchmark group: many / medium /
    few; tail: the split's tail classes). ``allocation: proportional``: per class max(round(ratio n_c),
    min_per_class) (LDMLR code); ``uniform``: LDMLR Eq. 12's y ~ p(y) read as the uniform prior over the chosen
    classes, the same total ratio x sum of their n_c split equally, max(round(ratio sum_c n_c / |chosen|),
    min_per_class) per class."""

    ratio: float = Field(0.2, gt=0)
    min_per_class: int = Field(5, ge=0)
    classes: str = "all"
    allocation: Literal["proportional", "uniform"] = "proportional"
    sampling: FeatureSamplingConfig = FeatureSamplingConfig()
    seed: int = 0

    fingerprint_neutral = ("allocation",)


class FeatureDiffusionStageConfig(StrictConfig):
    diffusion: FeatureDiffusionConfig
    device: str = "auto"


class PseudoStageConfig(StrictConfig):
    pseudo: PseudoFeatureConfig
    device: str = "auto"


def run_encode(cfg: EncodeStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Penultimate features z = E(x) of the classifier for every split (LDMLR Eq. 8), in eval mode."""
    split = read_split(inputs["split"])
    model, _ = load_classifier(inputs["classifier"].path)
    device = resolve_device(cfg.device)
    model.to(device)
    parts = {k: [] for k in ("features", "labels", "ids", "splits", "roles")}
    for which in ("train", "val", "test"):
        data = split_data(split, cfg.data, which)
        images = data.images
        if which == "train" and cfg.train_augment is not None:
            feats = _augmented_features(model, images, cfg.train_augment, cfg.seed, device)
        else:
            _, feats = predict(model, images, device)
        ids = split.ids(which)
        if len(ids) != len(data.labels):  # corrupt files skipped when decoding
            ids = [f"{which}-{i}" for i in range(len(data.labels))]
        parts["features"].append(feats.reshape(len(data.labels), -1))
        parts["labels"].append(data.labels)
        parts["ids"].append(np.asarray(ids, dtype=str))
        parts["splits"].append(np.full(len(ids), which))
        parts["roles"].append(np.array(["tail" if int(y) in split.tail_classes else "head" for y in data.labels]))
    fs = FeatureSet(*(np.concatenate(parts[k]) for k in ("features", "labels", "ids", "splits", "roles")),
                    encoder=inputs["classifier"].fingerprint)
    fs.write(workdir)
    return {"dim": int(fs.features.shape[1]), "n": {w: int((fs.splits == w).sum()) for w in ("train", "val", "test")}}


@torch.no_grad()
def _augmented_features(model, images: np.ndarray, aug: AugmentConfig, seed: int, device, batch: int = 512):
    model.eval()
    gen = torch.Generator().manual_seed(derive_seed(seed, "encode-augment"))
    out = []
    for start in range(0, len(images), batch):
        x = augment(to_float(torch.from_numpy(images[start:start + batch])), aug, gen).to(device)
        out.append(model.forward_features(x).float().cpu())
    return torch.cat(out).numpy()


def run_train_feature_diffusion(cfg: FeatureDiffusionStageConfig, inputs: dict[str, Artifact], workdir: Path
                                ) -> dict[str, Any]:
    """LDMLR stage 2 training (Eq. 10) on the TRAINING features only."""
    split = read_split(inputs["split"])
    fs = FeatureSet.read(inputs["features"].path)
    z, y = fs.subset("train")
    model, losses = train_feature_diffusion(z, y, len(split.class_names), cfg.diffusion, workdir / "train",
                                            resolve_device(cfg.device))
    record = {"config": cfg.diffusion.model_dump(), "dim": int(z.shape[1]), "num_classes": len(split.class_names),
              "n_train": int(len(y)), "encoder": fs.encoder,
              **{k: getattr(model, k).cpu().tolist() for k in ("center", "scale", "low", "high")}}
    if losses:
        tail = losses[-min(200, len(losses)):]
        record["final_loss"] = float(np.mean(tail))
    atomic_write_json(workdir / "feature_diffusion.json", record)
    return {"final_loss": record.get("final_loss")}


def pseudo_counts(split, train_labels: np.ndarray, pseudo: PseudoFeatureConfig) -> dict[int, int]:
    """{class: number of pseudo-features} for the chosen classes: max(round(ratio n_c), min_per_class)
    (proportional), or max(round(ratio sum_chosen n_c / |chosen|), min_per_class) for every one (uniform)."""
    n = np.bincount(train_labels, minlength=len(split.class_names))
    chosen = chosen_classes(split, pseudo.classes)
    empty = [split.class_names[c] for c in chosen if n[c] == 0]
    if empty:
        raise TailsynthError(f"pseudo-features: classes {empty} have no training features to learn from")
    if pseudo.allocation == "uniform":
        each = int(round(pseudo.ratio * sum(int(n[c]) for c in chosen) / len(chosen)))
        return {c: max(each, pseudo.min_per_class) for c in chosen}
    return {c: max(int(round(pseudo.ratio * n[c])), pseudo.min_per_class) for c in chosen}


def chosen_classes(split, which: str) -> list[int]:
    if which == "all":
        return list(range(len(split.class_names)))
    if which == "tail":
        return list(split.tail_classes)
    if which == "head":
        return list(split.head_classes)
    if which in split.groups:
        return list(split.groups[which])
    raise TailsynthError(f"pseudo.classes: {which!r} is not all, head, tail or a group of benchmark "
                         f"{split.name} (groups: {sorted(split.groups) or 'none'})")


def run_sample_pseudo(cfg: PseudoStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """LDMLR Eq. 11-12: pseudo-features per class, plus their distance to the real features (quality.json)
    and a PCA plot of real vs generated features per class (pca.png)."""
    from ...report.feature_quality import feature_quality, finite_or_none, pca_plot
    split = read_split(inputs["split"])
    fs = FeatureSet.read(inputs["features"].path)
    record = read_json(inputs["diffusion"].file("feature_diffusion.json"))
    if record["encoder"] != fs.encoder:
        raise TailsynthError(f"{inputs['diffusion'].path}: the feature diffusion model was trained on features of "
                             f"encoder {record['encoder']}, these come from {fs.encoder}")
    z_train, y_train = fs.subset("train")
    counts = pseudo_counts(split, y_train, cfg.pseudo)
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in counts.items()])
    model = load_feature_diffusion(inputs["diffusion"].path, resolve_device(cfg.device))
    feats = sample_features(model, labels, cfg.pseudo.sampling, cfg.pseudo.seed)
    if not np.isfinite(feats).all():
        raise TailsynthError("pseudo-features contain NaN or inf: the feature diffusion model diverged")
    n = len(labels)
    pseudo = FeatureSet(feats, labels, np.array([f"pseudo-{i}" for i in range(n)]), np.full(n, "pseudo"),
                        np.full(n, "pseudo"), encoder=fs.encoder)
    pseudo.write(workdir)
    z_val, y_val = fs.subset("val")
    quality = feature_quality(z_train, y_train, z_val, y_val, feats, labels, split.class_names)
    atomic_write_json(workdir / "quality.json", finite_or_none(
        {"counts": {split.class_names[c]: k for c, k in counts.items()}, **quality}))
    atomic_write_bytes(workdir / "pca.png", pca_plot(z_train, y_train, feats, labels, split.class_names,
                                                     sorted(counts)))
    return {"n_pseudo": n}


def pseudo_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    """Per pseudo-feature set: its distance to the real features (table) and the PCA plot."""
    from ...report.feature_quality import finite_or_none, quality_table
    sections, found = [], {}
    for b in built:
        label = b.label.removeprefix("pseudo-features for ")
        quality = finite_or_none(read_json(b.artifact.file("quality.json")))
        found[label] = quality
        sections += [quality_table(label, quality),
                     (f"Pseudo-features of {label}: real (blue) vs generated (orange) training features, first two "
                      "principal components of the real features", b.artifact.file("pca.png").read_bytes())]
    return sections, {"pseudo_features": found}


def _feature_diffusion_cost(cfg: FeatureDiffusionStageConfig) -> str:
    return f"{cfg.diffusion.steps} steps x batch {cfg.diffusion.batch_size} (feature vectors)"


def _pseudo_cost(cfg: PseudoStageConfig) -> str:
    p = cfg.pseudo
    return (f"ratio {p.ratio} ({p.classes}{', uniform' if p.allocation == 'uniform' else ''}), "
            f"{p.sampling.sampler} {p.sampling.num_steps} steps")


ENCODE = Stage("encode_features", "1", run_encode, "penultimate features of a classifier (train/val/test)")
TRAIN_FEATURE_DIFFUSION = Stage("train_feature_diffusion", "1", run_train_feature_diffusion,
                                "class-conditional diffusion on training features (LDMLR stage 2)",
                                cost=_feature_diffusion_cost)
SAMPLE_PSEUDO = Stage("sample_pseudo_features", "1", run_sample_pseudo, "pseudo-features per class + their quality",
                      cost=_pseudo_cost, report=pseudo_report)


# --- requests (the graph is the one the pipeline hands the method) ------------------------------------------------
def features(graph, classifier: Artifact, train_augment: AugmentConfig | None = None, seed: int = 0) -> Artifact:
    """Penultimate features of ``classifier`` on train / val / test."""
    cfg = EncodeStageConfig(data=graph.config.data, train_augment=train_augment, seed=seed, device=graph.config.device)
    return graph.run(ENCODE, cfg, {"split": graph.split(), "classifier": classifier}, seed,
                     f"features of {classifier.fingerprint[:8]}")


def feature_diffusion(graph, features: Artifact, diffusion: FeatureDiffusionConfig) -> Artifact:
    """A class-conditional diffusion model on the training features."""
    cfg = FeatureDiffusionStageConfig(diffusion=diffusion, device=graph.config.device)
    return graph.run(TRAIN_FEATURE_DIFFUSION, cfg, {"split": graph.split(), "features": features}, diffusion.seed,
                     f"feature diffusion on {features.fingerprint[:8]}")


def pseudo_features(graph, features: Artifact, diffusion: Artifact, pseudo: PseudoFeatureConfig,
                    label: str) -> Artifact:
    """Pseudo-features per class from ``diffusion``; shown in the report under ``label``."""
    cfg = PseudoStageConfig(pseudo=pseudo, device=graph.config.device)
    return graph.run(SAMPLE_PSEUDO, cfg, {"split": graph.split(), "features": features, "diffusion": diffusion},
                     pseudo.seed, f"pseudo-features for {label}")
