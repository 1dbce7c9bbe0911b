"""An independent judge for guided synthetic images, and the rule that keeps, replaces or falls back.

DiG-IN (LoGex §3, step 3) raises the auxiliary classifier's confidence in the target class; where the auxiliary
is weak or the generator cannot draw the class, that confidence is reached by an image adversarial for the
auxiliary instead of an image of the class. A *judge* is a set of classifiers trained on the training split
only (other seeds of the auxiliary's recipe, say) that never took part in the guidance, so the guidance's
gradient was not aimed at them. Its verdict is their mean softmax.

The rule, per tail class c with guided images g_1..g_n and their un-guided partners p_1..p_n (the only-LoRA
images drawn from the same x_T; DiG-IN starts from that x_T, so p_i is the image guidance moved away from):

- the judge *accepts* g_i when its mean softmax picks c (``rule="agree"``), gives c at least ``min_confidence``
  (``rule="confidence"``), or gives c at least as much as it gives c on p_i (``rule="not_lower"``: the guidance did
  not lower the confidence of a classifier it never saw while it raised its auxiliary's; a weak judge that
  recognises neither image can still rank the pair; an image DiG-IN left as it started, accepted at once by the
  auxiliary, is its own partner and stays), or by at least ``min_gain`` more (``not_lower`` with ``min_gain`` > 0:
  the guidance must have *raised* the judge's confidence, not only the auxiliary's; an unchanged image is then
  replaced by its partner, i.e. by itself);
- if the class's acceptance rate is below ``fallback_below``, the guidance is judged to have failed for the whole
  class (the generator cannot draw it) and every image of the class is its un-guided partner (per-class fall-back);
- otherwise each accepted g_i is kept and each rejected one is replaced by p_i (``replace="plain"``) or dropped
  (``replace="drop"``).

Un-guided images are not filtered: nothing was optimised against any classifier there, so nothing was fooled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

GUIDED, PLAIN, DROPPED = 0, 1, 2  # the source of each output image (``GuardDecision.source``)


def judge_probabilities(models: Sequence[torch.nn.Module], images: np.ndarray, device: torch.device,
                        batch_size: int = 512) -> np.ndarray:
    """The judges' mean softmax (N, K) on uint8 images (N, H, W, C), each judge in eval mode."""
    from ..training import predict
    if not models:
        raise ValueError("a judge needs at least one classifier")
    total = None
    for model in models:
        p = torch.softmax(torch.from_numpy(predict(model, images, device, batch_size)[0]).double(), dim=1).numpy()
        total = p if total is None else total + p
    return total / len(models)


@dataclass
class GuardDecision:
    """Per guided image: ``accepted`` (the judge's verdict) and ``source`` (GUIDED, PLAIN or DROPPED); per class
    index: ``fallback`` (every image of the class is its un-guided partner) and ``acceptance`` (the share of the
    class's guided images the judge accepted)."""

    accepted: np.ndarray
    source: np.ndarray
    fallback: dict[int, bool]
    acceptance: dict[int, float]


def accepts(probs: np.ndarray, targets: np.ndarray, rule: str, min_confidence: float,
            partner_probs: np.ndarray | None = None, min_gain: float = 0.0) -> np.ndarray:
    """Whether the judge's mean softmax ``probs`` (N, K) confirms each image's target class; ``rule="not_lower"``
    compares with ``partner_probs`` (N, K, the un-guided partners; a NaN row = no partner: then ``agree``): the
    target's probability must be at least the partner's plus ``min_gain``."""
    rows = np.arange(len(targets))
    if rule == "agree":
        return probs.argmax(1) == targets
    if rule == "confidence":
        return probs[rows, targets] >= min_confidence
    if rule == "not_lower":
        if partner_probs is None:
            raise ValueError("rule 'not_lower' needs the judge's probabilities of the un-guided partners")
        mine, theirs = probs[rows, targets], partner_probs[rows, targets]
        return np.where(np.isnan(theirs), probs.argmax(1) == targets, mine >= theirs + min_gain)
    raise ValueError(f"unknown judge rule {rule!r}; valid: agree, confidence, not_lower")


def decide(guided_probs: np.ndarray, targets: np.ndarray, has_plain: np.ndarray, *, rule: str = "agree",
           min_confidence: float = 0.5, replace: str = "plain", fallback_below: float = 0.5,
           plain_probs: np.ndarray | None = None, min_gain: float = 0.0) -> GuardDecision:
    """The module's rule on one synthetic set: ``guided_probs`` the judge's mean softmax on the guided images,
    ``targets`` their classes, ``has_plain`` whether each has an un-guided partner (one drawn from the same x_T),
    ``plain_probs`` the judge's mean softmax on those partners, row for row (NaN where none; ``rule="not_lower"``).
    A rejected image without a partner, or any image of a fall-back class without one, is dropped."""
    targets = np.asarray(targets)
    if min_gain and rule != "not_lower":
        raise ValueError(f"min_gain applies to rule 'not_lower' only, not {rule!r}")
    ok = accepts(guided_probs, targets, rule, min_confidence, plain_probs, min_gain)
    return keep(ok, targets, has_plain, replace=replace, fallback_below=fallback_below)


def keep(ok: np.ndarray, targets: np.ndarray, has_plain: np.ndarray, *, replace: str = "plain",
         fallback_below: float = 0.5) -> GuardDecision:
    """What is kept given the judge's verdict ``ok`` per guided image: accepted images, rejected ones replaced by
    their partners (or dropped), and the per-class fall-back (:func:`decide` after its verdict)."""
    if replace not in ("plain", "drop"):
        raise ValueError(f"unknown replace {replace!r}; valid: plain, drop")
    if not 0.0 <= fallback_below <= 1.0:
        raise ValueError(f"fallback_below must be in [0, 1], got {fallback_below}")
    targets = np.asarray(targets)
    has_plain = np.asarray(has_plain, dtype=bool)
    partner = np.where(has_plain, PLAIN, DROPPED) if replace == "plain" else np.full(len(targets), DROPPED)
    source = np.where(ok, GUIDED, partner)
    fallback, acceptance = {}, {}
    for c in sorted(set(targets.tolist())):
        mask = targets == c
        acceptance[c] = float(ok[mask].mean())
        fallback[c] = acceptance[c] < fallback_below
        if fallback[c]:
            source[mask] = np.where(has_plain[mask], PLAIN, DROPPED)
    return GuardDecision(ok, source, fallback, acceptance)
