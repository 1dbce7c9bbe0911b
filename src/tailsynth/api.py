"""Python API for a trained classifier: ``tailsynth.load(run_dir).predict(images)``, or by name:
``tailsynth.load(runs="runs", experiment="demo", method="logex", seed=0)``."""
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
                         f"pass runs/train_classifier/<fingerprint> (see `tailsynth status`), or name it with "
                         f"--method M --seed S [--experiment E]")


class Predictor:
    """A loaded final classifier with its validation-calibrated rare-image threshold: the card's split-conformal
    threshold (alpha 0.05), or re-thresholded at ``alpha`` from the card's calibration scores (``mondrian``: one
    threshold per predicted head class); ``predict(..., alpha=)`` does the same for one call."""

    def __init__(self, run_dir: str | Path, device: str = "auto", alpha: float | None = None,
                 mondrian: bool = False):
        from .engine.artifacts import load_classifier
        self.path = _classifier_dir(Path(run_dir))
        self.device = resolve_device(device)
        self.model, self.card = load_classifier(self.path)
        self.model.to(self.device)
        self.class_names: list[str] = self.card["class_names"]
        self.head_classes: list[int] = self.card["head_classes"]
        self.tail_classes: list[int] = self.card["tail_classes"]
        self.calibration: dict[str, Any] = self.card.get("tail_threshold") or {}
        self.rare_score: str = self.calibration.get("score", "p_tail")  # head-only: energy
        self.alpha: float | None = alpha if alpha is not None else self.calibration.get("alpha")
        self.mondrian = mondrian
        cut = self.thresholds_at(alpha, mondrian)
        # one threshold (None: no tail classes, or too few calibration images), or {head class: threshold}
        self.threshold: float | None = None if isinstance(cut, dict) else cut
        self.class_thresholds: dict[int, float] | None = cut if isinstance(cut, dict) else None

    def thresholds_at(self, alpha: float | None, mondrian: bool = False) -> float | dict[int, float] | None:
        """The rare threshold at ``alpha`` (None: the card's stored one), per predicted head class with
        ``mondrian``; an error when the card has no calibration scores to re-threshold."""
        from .ood.conformal import threshold_of_card
        return threshold_of_card(self.calibration, alpha, f"model card {self.path / 'model.json'}", mondrian,
                                 self.head_classes, self.class_names)

    def rule_line(self) -> str:
        """One line saying when an image is flagged rare: the threshold, alpha, the rule and its calibration set."""
        from .ood.conformal import RULE, conformal_rank
        rec, name = self.calibration, "P(tail)" if self.rare_score == "p_tail" else self.rare_score
        if not rec:
            return "no tail classes: no rare flag"
        if "calibration_scores" not in rec:  # a card made before split-conformal thresholds
            return (f"rare flag: {name} > {self.threshold:.4f} (95 % head TPR on validation)"
                    if self.threshold is not None else "no rare flag: the model card has no threshold")
        n, mode = rec["n"], rec.get("mode", "shared")
        calibrated = (f"n = {n} validation head images held out of model selection (mode split)" if mode == "split"
                      else f"n = {n} validation head images, which also selected the epoch (mode shared)")
        if self.class_thresholds is not None:
            cuts = ", ".join(f"{self.class_names[c]} {t:.4f}" for c, t in self.class_thresholds.items())
            return (f"rare flag: {name} > the threshold of its predicted head class ({cuts}) (alpha = {self.alpha:g}, "
                    f"Mondrian: {RULE} within each predicted head class; {calibrated})")
        if self.threshold is None:
            return f"no rare flag: {rec.get('error', 'no threshold in the model card')}"
        return (f"rare flag: {name} > {self.threshold:.4f} (alpha = {self.alpha:g}, {RULE}: "
                f"k = {conformal_rank(n, self.alpha)}, {calibrated})")

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Arrays (N,H,W[,C]), uint8 or float in [0,1] -> uint8 (N,S,S,C) at the model's size/channels."""
        from .data import convert_array
        arr = np.asarray(images)
        if arr.ndim not in (3, 4):
            raise TailsynthError(f"images must be (N,H,W) or (N,H,W,C), got shape {arr.shape}")
        return convert_array(arr, self.card["image_size"], self.card["in_channels"])

    def predict_arrays(self, images: np.ndarray, sources: Sequence[str] | None = None,
                       alpha: float | None = None) -> list[Prediction]:
        from .training.trainer import predict
        cut = (self.class_thresholds or self.threshold) if alpha is None else self.thresholds_at(alpha, self.mondrian)
        batch = self._prepare(images)
        logits, _ = predict(self.model, batch, self.device)
        from .ood import logit_score, p_tail as p_tail_of
        p_tail = p_tail_of(logits, self.tail_classes)
        rare = logit_score(self.rare_score, logits, self.head_classes, self.tail_classes)
        head_logits = logits[:, self.head_classes]
        head_pred = np.asarray(self.head_classes)[head_logits.argmax(1)]
        flags = (np.zeros(len(batch), dtype=bool) if cut is None else
                 rare > np.array([cut[int(c)] for c in head_pred]) if isinstance(cut, dict) else rare > cut)
        out = []
        for i in range(len(batch)):
            out.append(Prediction(
                source=sources[i] if sources else f"array[{i}]",
                predicted_class=self.class_names[int(logits[i].argmax())],
                head_class=self.class_names[self.head_classes[int(head_logits[i].argmax())]],
                p_tail=float(p_tail[i]),
                is_rare=bool(flags[i])))
        return out

    def predict(self, images: np.ndarray | Iterable[str | Path], skip_bad: bool = False,
                batch_size: int = 256, alpha: float | None = None) -> list[Prediction]:
        """Label arrays, or image files and folders (searched recursively); ``alpha``: flag at this target head
        flag rate instead of the predictor's (re-thresholded from the card's calibration scores).

        An unreadable file raises an error naming it; with ``skip_bad`` it is reported in
        ``self.skipped`` and the rest are labelled.
        """
        if alpha is not None:
            self.thresholds_at(alpha, self.mondrian)  # a card that cannot be re-thresholded fails before any work
        if isinstance(images, np.ndarray):
            return self.predict_arrays(images, alpha=alpha)
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
                results += self.predict_arrays(np.stack(arrays), names, alpha=alpha)
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


def model_dir(run_dir: str | Path | None = None, runs: str | Path = "runs", experiment: str | None = None,
              method: str | None = None, seed: int | None = None) -> Path:
    """The classifier folder that ``load`` opens: ``run_dir`` itself (an artifact folder), or the final classifier
    of row ``method`` / ``seed`` (:func:`tailsynth.engine.lookup.find_classifier`) in ``runs`` (from the report
    of ``experiment`` when it has one) or in the experiment report folder ``run_dir``."""
    from .engine.lookup import RESULTS, find_classifier
    if run_dir is not None and (Path(run_dir) / RESULTS).is_file():  # runs/reports/<experiment>
        return find_classifier(method=method, seed=seed, report=run_dir)
    if run_dir is not None:
        if method is not None or experiment is not None:
            raise TailsynthError(f"give the classifier folder ({run_dir}) or --method/--seed/--experiment, not both")
        return Path(run_dir)
    return find_classifier(runs, method=method, seed=seed, experiment=experiment)


def load(run_dir: str | Path | None = None, device: str = "auto", *, runs: str | Path = "runs",
         experiment: str | None = None, method: str | None = None, seed: int | None = None,
         alpha: float | None = None, mondrian: bool = False) -> Predictor:
    """Load a trained classifier: a ``train_classifier`` / ``label_shift`` or ``evaluate`` artifact directory, or
    by name, ``load(runs="runs", experiment="demo", method="logex", seed=0)`` (also
    ``load("runs/reports/demo", method="logex", seed=0)``); an ambiguous or unknown name is an error listing the
    candidates (see :func:`model_dir`). ``alpha`` / ``mondrian``: the rare flag's target head flag rate and
    per-head-class thresholds (:class:`Predictor`)."""
    return Predictor(model_dir(run_dir, runs, experiment, method, seed), device, alpha=alpha, mondrian=mondrian)
