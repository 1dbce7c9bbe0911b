"""Methods, one module or package per paper, in one registry (``METHODS``); see docs/adding-a-method.md.

Each owns its typed ``Config``, the stages it adds (with their ``--plan`` cost and report section) and its
commands, and reaches the stage graph only through the object it is handed.

- ``baselines``: ce, ce-rw, hod, crt, focal, focal-rw, ldam, ldam-rw, ldam-rw-drw (LoGex Table 2)
- ``logex``: logex-lora (only LoRA), logex (DiG-IN guidance)
- ``logex_guarded/``: logex-guarded (DiG-IN images an independent judge confirms) + its judging stage
- ``fg_entropy``: fg-entropy (Hemmat et al. 2023)
- ``dream_ood/``: vmf-encoder (stage 1), dream-ood (Du et al. 2023), bood (Liao et al. 2025) + their stages
- ``ldmlr/``: ldmlr (Han et al. 2024, feature-space diffusion), la, la-ldmlr (Tian et al. 2020) + their stages
- ``minority/``: minority (Um et al. 2024) + its stages, figures and ``tailsynth minority`` commands
"""
from .base import CriterionParams, Method, NoParams, SynthesisConfig, SyntheticGenerator
from .registry import COMMANDS, METHODS, generator_named, register, register_command
from . import baselines, dream_ood, fg_entropy, ldmlr, logex, logex_guarded, minority  # noqa: E402,F401  (registers the methods)

__all__ = ["COMMANDS", "METHODS", "CriterionParams", "Method", "NoParams", "SynthesisConfig", "SyntheticGenerator",
           "generator_named", "register", "register_command"]
