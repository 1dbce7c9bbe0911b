"""Minority guidance (Um et al., ICLR 2024): the ``minority`` method (``method``, settings in ``config``), its
stages (``stages``: minority scores, the minority classifier; ``figures``: the paper's figures with their report
section ``report``) and the ``tailsynth minority score | train | sample`` commands (``commands``)."""
from . import commands, method  # noqa: F401  (registers the method and the commands)
from .config import MinorityFiguresConfig, MinoritySettings, class_hook
from .figures import ANCESTRAL, ANCESTRAL_GUIDED, DDIM, DDIM_GUIDED, MINORITY_FIGURES
from .stages import MINORITY_SCORE, TRAIN_MINORITY, condition_ids, read_scores, working_images

__all__ = ["ANCESTRAL", "ANCESTRAL_GUIDED", "DDIM", "DDIM_GUIDED", "MINORITY_FIGURES", "MINORITY_SCORE",
           "MinorityFiguresConfig", "MinoritySettings", "TRAIN_MINORITY", "class_hook", "condition_ids",
           "read_scores", "working_images"]
