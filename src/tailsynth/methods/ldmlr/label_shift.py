"""Label shift (Tian et al. 2020, "Posterior re-calibration for imbalanced datasets"), the LDMLR paper's
baseline: a classifier trained on the long-tailed prior pi is re-calibrated post hoc for a uniform test prior,
logits_y - tau log pi_y (Menon et al. 2021's post-hoc logit adjustment; tau = 1 is the Bayes correction of the
prior; tau is chosen on the validation split from ``taus``). Nothing is retrained: the shift is folded into
the classifier layer's bias, so the result is an ordinary classifier artifact (stage ``label_shift``).

- ``la``: label shift on the CE classifier (LDMLR Table 1 "Label shift");
- ``la-ldmlr``: label shift on the LDMLR classifier ("Label shift + LDMLR").
Settings: ``method_params.<name>`` (:class:`LabelShiftConfig`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ...config import StrictConfig
from ...data import DataConfig
from ...engine import Artifact, Stage
from ...engine.artifacts import calibrate_tail_threshold, load_classifier, read_split, split_data
from ...ood.conformal import held_out_of_card
from ...training import predict
from ...training.checkpoint import save_weights
from ...training.selection import make_selector
from ...utils import atomic_write_json, resolve_device
from ..base import Method
from ..registry import register


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


def run_label_shift(cfg: LabelShiftStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """Choose tau on val, fold -tau log pi into the classifier layer's bias (an ordinary classifier artifact)."""
    split = read_split(inputs["split"])
    model, card = load_classifier(inputs["base"].path)
    device = resolve_device(cfg.device)
    model.to(device)
    train = split_data(split, cfg.data, "train")
    val = split_data(split, cfg.data, "val")
    counts = np.bincount(train.labels, minlength=len(split.class_names)).astype(np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    logits, _ = predict(model, val.images, device)
    # a base calibrated in split mode: tau is chosen without its held-out calibration images, which re-calibrate
    held_out = held_out_of_card(card, val.labels, split.tail_classes)
    keep = ~held_out["calibration"] if held_out else np.ones(len(val.labels), dtype=bool)
    select = make_selector(cfg.label_shift.selection, split.head_classes, split.tail_classes)
    scores = {tau: float(select(logits[keep] - tau * log_prior[None], val.labels[keep]))
              for tau in cfg.label_shift.taus}
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
        card["tail_threshold"] = calibrate_tail_threshold(model, val, split, device, **held_out)
    atomic_write_json(workdir / "history.json", {"best_epoch": 0, "best_score": best, "tau": tau})
    atomic_write_json(workdir / "model.json", card)
    return {"tau": tau, "val_selection": best}


LABEL_SHIFT = Stage("label_shift", "1", run_label_shift, "post-hoc label-shift re-calibration, tau on val")


def label_shift(graph, base: Artifact, method: str, seed: int, settings: LabelShiftConfig) -> Artifact:
    """``base`` (a classifier artifact) re-calibrated by the training prior, as the row ``method``."""
    cfg = LabelShiftStageConfig(label_shift=settings, method=method, data=graph.config.data, device=graph.config.device)
    return graph.run(LABEL_SHIFT, cfg, {"split": graph.split(), "base": base}, seed, f"{method} seed {seed}")


class _LabelShift(Method):
    Config = LabelShiftConfig
    base_method = "ce"

    def classifier(self, graph, seed, per_class=None):
        return label_shift(graph, graph.classifier(self.base_method, seed), self.name, seed, graph.method_config(self))


@register
class LabelShift(_LabelShift):
    name = "la"
    reference = "label shift (Tian et al. 2020): CE logits - tau log prior, tau on val"
    base_method = "ce"


@register
class LabelShiftLdmlr(_LabelShift):
    name = "la-ldmlr"
    reference = "label shift on the LDMLR classifier (LDMLR 'Label shift + LDMLR')"
    base_method = "ldmlr"
