"""Feature-space stages (LDMLR, Han et al. 2024, Fig. 1; label shift, Tian et al. 2020):

encode (a trained classifier's penultimate features of train / val / test) -> train_feature_diffusion
(class-conditional denoiser on the training features) -> sample_pseudo_features (per class
max(round(ratio n_c), min_per_class) pseudo-features, their quality against the real features) ->
the method's head fine-tune (an ordinary ``train_classifier`` stage on cached features);
label_shift: post-hoc re-calibration of any classifier by the training prior, tau chosen on val.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..config import StrictConfig
from ..data.features import FeatureSet
from ..diffusion.feature_diffusion import (FeatureDiffusionConfig, FeatureSamplingConfig, load_feature_diffusion,
                                           sample_features, train_feature_diffusion)
from ..errors import TailsynthError
from ..training import AugmentConfig, predict
from ..training.augment import augment, to_float
from ..training.checkpoint import save_weights
from ..training.selection import make_selector
from ..utils import atomic_write_bytes, atomic_write_json, derive_seed, read_json, resolve_device
from .artifacts import load_classifier, read_split, split_data
from .experiment import DataConfig
from .runner import Stage
from .store import Artifact


class EncodeStageConfig(StrictConfig):
    data: DataConfig
    # None: eval-mode features of the unaugmented images (LDMLR paper); an AugmentConfig: the training images
    # encoded once each with that augmentation, as the official code does (val / test are never augmented)
    train_augment: AugmentConfig | None = None
    seed: int = 0
    device: str = "auto"


class PseudoFeatureConfig(StrictConfig):
    """Which pseudo-features to generate: per class max(round(ratio n_c), min_per_class) (LDMLR code), for the
    classes of ``classes`` (all; a benchmark group: many / medium / few; tail: the split's tail classes)."""

    ratio: float = Field(0.2, gt=0)
    min_per_class: int = Field(5, ge=0)
    classes: str = "all"
    sampling: FeatureSamplingConfig = FeatureSamplingConfig()
    seed: int = 0


class FeatureDiffusionStageConfig(StrictConfig):
    diffusion: FeatureDiffusionConfig
    device: str = "auto"


class PseudoStageConfig(StrictConfig):
    pseudo: PseudoFeatureConfig
    device: str = "auto"


class LabelShiftConfig(StrictConfig):
    """Post-hoc label-shift re-calibration (Tian et al. 2020, with a uniform target prior; the post-hoc logit
    adjustment of Menon et al. 2021): logits_y - tau log pi_y, pi = the real training class frequencies, tau
    from ``taus`` maximising ``selection`` on the validation split (ties: the smaller tau)."""

    taus: list[float] = [round(0.1 * i, 1) for i in range(21)]
    selection: Literal["val_bacc", "val_acc", "bacc_head_minus_fpr"] = "val_bacc"


class LabelShiftStageConfig(StrictConfig):
    label_shift: LabelShiftConfig
    method: str
    data: DataConfig
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
    """{class: number of pseudo-features}: max(round(ratio n_c), min_per_class) for the chosen classes."""
    n = np.bincount(train_labels, minlength=len(split.class_names))
    chosen = chosen_classes(split, pseudo.classes)
    empty = [split.class_names[c] for c in chosen if n[c] == 0]
    if empty:
        raise TailsynthError(f"pseudo-features: classes {empty} have no training features to learn from")
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
    from ..report.feature_quality import feature_quality, finite_or_none, pca_plot
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


def run_label_shift(cfg: LabelShiftStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Choose tau on val, fold -tau log pi into the classifier layer's bias (an ordinary classifier artifact)."""
    from .stages import calibrate_tail_threshold
    split = read_split(inputs["split"])
    model, card = load_classifier(inputs["base"].path)
    device = resolve_device(cfg.device)
    model.to(device)
    train = split_data(split, cfg.data, "train")
    val = split_data(split, cfg.data, "val")
    counts = np.bincount(train.labels, minlength=len(split.class_names)).astype(np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    logits, _ = predict(model, val.images, device)
    select = make_selector(cfg.label_shift.selection, split.head_classes, split.tail_classes)
    scores = {tau: float(select(logits - tau * log_prior[None], val.labels)) for tau in cfg.label_shift.taus}
    best = max(scores.values())
    tau = min(t for t, s in scores.items() if s == best)
    with torch.no_grad():
        model.head.bias -= torch.as_tensor(tau * log_prior, dtype=model.head.bias.dtype, device=model.head.bias.device)
    save_weights(model, workdir / "model.safetensors")
    card = {**card, "method": cfg.method, "label_shift": {"tau": tau, "log_prior": log_prior.tolist(),
                                                          "val_selection": {str(t): s for t, s in scores.items()},
                                                          "selection": cfg.label_shift.selection,
                                                          "base": inputs["base"].fingerprint}}
    if split.tail_classes:
        card["tail_threshold"] = calibrate_tail_threshold(model, val, split, device)
    atomic_write_json(workdir / "history.json", {"best_epoch": 0, "best_score": best, "tau": tau})
    atomic_write_json(workdir / "model.json", card)
    return {"tau": tau, "val_selection": best}


ENCODE = Stage("encode_features", "1", run_encode, "penultimate features of a classifier (train/val/test)")
TRAIN_FEATURE_DIFFUSION = Stage("train_feature_diffusion", "1", run_train_feature_diffusion,
                                "class-conditional diffusion on training features (LDMLR stage 2)")
SAMPLE_PSEUDO = Stage("sample_pseudo_features", "1", run_sample_pseudo, "pseudo-features per class + their quality")
LABEL_SHIFT = Stage("label_shift", "1", run_label_shift, "post-hoc label-shift re-calibration, tau on val")

__all__ = ["ENCODE", "TRAIN_FEATURE_DIFFUSION", "SAMPLE_PSEUDO", "LABEL_SHIFT", "EncodeStageConfig",
           "FeatureDiffusionStageConfig", "PseudoStageConfig", "PseudoFeatureConfig", "LabelShiftConfig",
           "LabelShiftStageConfig", "pseudo_counts", "chosen_classes"]
