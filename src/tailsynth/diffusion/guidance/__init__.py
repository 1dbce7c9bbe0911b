"""Guided synthesis (LoGex §2.1, §3 step 3): DiG-IN through the full DDIM chain and FG-Entropy feedback.

* :class:`ClassifierGuide` -- a tailsynth classifier as a differentiable map images [0, 1] -> logits.
* :func:`dig_in` (batched, shrinking/refilled batch) and :func:`dig_in_reference` (official batch-1 loop),
  configured by :class:`DigInConfig`, returning :class:`GuidanceResult`.
* :func:`fg_entropy_sample` with :class:`FgEntropyConfig`, returning :class:`FgResult`.
"""
from .adam import PerSampleAdam
from .classifier_guide import ClassifierGuide
from .dig_in import DigInConfig, GuidanceResult, dig_in_reference, last_k_weights
from .dig_in_batched import dig_in
from .fg_entropy import FgEntropyConfig, FgEntropyFeedback, FgResult, entropy, feedback_step, fg_entropy_sample

__all__ = ["ClassifierGuide", "FgEntropyFeedback", "DigInConfig", "GuidanceResult", "dig_in", "dig_in_reference", "last_k_weights",
           "PerSampleAdam", "FgEntropyConfig", "FgResult", "fg_entropy_sample", "feedback_step", "entropy"]
