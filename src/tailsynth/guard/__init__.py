"""Judging guided synthetic images by classifiers that never guided them (:mod:`.judge`)."""
from .judge import GuardDecision, decide, judge_probabilities

__all__ = ["GuardDecision", "decide", "judge_probabilities"]
