"""Methods, one file per paper, in one registry (``METHODS``); see docs/adding-a-method.md.

- ``baselines``: ce, ce-rw, hod, crt, focal, focal-rw, ldam, ldam-rw, ldam-rw-drw (LoGex Table 2)
- ``logex``: logex-lora (only LoRA), logex (DiG-IN guidance)
- ``fg_entropy``: fg-entropy (Hemmat et al. 2023)
- ``dream_ood``: vmf-encoder (stage 1), dream-ood (Du et al. 2023); ``bood``: bood (Liao et al. 2025)
- ``ldmlr``: ldmlr (Han et al. 2024, feature-space diffusion); ``label_shift``: la, la-ldmlr (Tian et al. 2020)
"""
from . import baselines, bood, dream_ood, fg_entropy, label_shift, ldmlr, logex, minority  # noqa: F401  (registers the methods)
from .base import Method, NoParams, SynthesisConfig, SyntheticGenerator
from .registry import METHODS, generator_named, register

__all__ = ["METHODS", "Method", "NoParams", "SynthesisConfig", "SyntheticGenerator", "generator_named", "register"]
