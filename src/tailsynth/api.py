"""Python API for a trained classifier: ``tailsynth.load(run_dir).predict(images)``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import TailsynthError
from .utils import read_json, resolve_device


@dataclass
class Prediction:
    """One image: the predicted class over all classes, the best head class, P(tail) and the rare flag."""

    source: str
    predicted_class: str
    head_class: str
    p_tail: float
    is_rare: bool

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "predicted_class": self.predicted_class, "head_class": self.head_class,
                "p_tail": round(self.p_tail, 6), "is_rare": self.is_rare}


def _classifier_dir(run_dir: Path) -> Path:
    """A classifier artifact, or an evaluate artifact (whose manifest points at its classifier)."""
    if (run_dir / "model.json").is_file():
        return run_dir
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        inputs = read_json(manifest).get("inputs", {})
        if "classifier" in inputs:
            return Path(inputs["classifier"]["path"])
    raise TailsynthError(f"{run_dir} is not a trained classifier (no model.json) nor an evaluation artifact; "
                         f"pass runs/train_classifier/<fingerprint> (see `tailsynth status`)")


class Predictor:
    """A loaded final classifier with its validation-calibrated rare-image threshold."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from .engine.artifacts import load_classifier
        self.path = _classifier_dir(Path(run_dir))
        self.device = resolve_device(device)
        self.model, self.card = load_classifier(self.path)
        self.model.to(self.device)
        self.class_names: list[str] = self.card["class_names"]
        self.head_classes: list[int] = self.card["head_classes"]
        self.tail_classes: list[int] = self.card["tail_classes"]
        self.threshold: float | None = (self.card.get("tail_threshold") or {}).get("value")
        self.rare_score: str = (self.card.get("tail_threshold") or {}).get("score", "p_tail")  # head-only: energy

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Arrays (N,H,W[,C]), uint8 or float in [0,1] -> uint8 (N,S,S,C) at the model's size/channels."""
        from .data import convert_array
        arr = np.asarray(images)
        if arr.ndim not in (3, 4):
            raise TailsynthError(f"images must be (N,H,W) or (N,H,W,C), got shape {arr.shape}")
        return convert_array(arr, self.card["image_size"], self.card["in_channels"])

    def predict_arrays(self, images: np.ndarray, sources: Sequence[str] | None = None) -> list[Prediction]:
        from .training.trainer import predict
        batch = self._prepare(images)
        logits, _ = predict(self.model, batch, self.device)
        from .ood import logit_score, p_tail as p_tail_of
        p_tail = p_tail_of(logits, self.tail_classes)
        rare = logit_score(self.rare_score, logits, self.head_classes, self.tail_classes)
        head_logits = logits[:, self.head_classes]
        out = []
        for i in range(len(batch)):
            out.append(Prediction(
                source=sources[i] if sources else f"array[{i}]",
                predicted_class=self.class_names[int(logits[i].argmax())],
                head_class=self.class_names[self.head_classes[int(head_logits[i].argmax())]],
                p_tail=float(p_tail[i]),
                is_rare=bool(self.threshold is not None and rare[i] > self.threshold)))
        return out

    def predict(self, images: np.ndarray | Iterable[str | Path], skip_bad: bool = False,
                batch_size: int = 256) -> list[Prediction]:
        """Label arrays, or image files and folders (searched recursively).

        An unreadable file raises an error naming it; with ``skip_bad`` it is reported in
        ``self.skipped`` and the rest are labelled.
        """
        if isinstance(images, np.ndarray):
            return self.predict_arrays(images)
        from .data.decode import CorruptImage, decode_file
        files = list_image_files([Path(p) for p in images])
        self.skipped: list[tuple[str, str]] = []
        results: list[Prediction] = []
        for start in range(0, len(files), batch_size):
            arrays, names = [], []
            for path in files[start:start + batch_size]:
                try:
                    arrays.append(decode_file(path, self.card["image_size"], self.card["in_channels"]))
                    names.append(str(path))
                except CorruptImage as err:
                    if not skip_bad:
                        raise TailsynthError(f"cannot read image {path}: {err.__cause__ or err} "
                                             f"(use --skip-bad to skip unreadable images)") from None
                    self.skipped.append((str(path), str(err.__cause__ or err)))
            if arrays:
                results += self.predict_arrays(np.stack(arrays), names)
        return results


def list_image_files(paths: Sequence[Path]) -> list[Path]:
    """Image files among ``paths``; folders are searched recursively (sorted). Missing paths are errors."""
    from .data.decode import is_image_file
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise TailsynthError(f"no such file or folder: {path}")
    if not files:
        raise TailsynthError(f"no image files found in {', '.join(map(str, paths))}")
    return files


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """Load a trained classifier (a ``train_classifier`` or ``evaluate`` artifact directory)."""
    return Predictor(run_dir, device)
