"""Dream-OOD (Du et al. 2023) and BOOD (Liao et al. 2025): the ``vmf-encoder``, ``dream-ood`` and ``bood``
methods (``method``, ``bood``), their outlier stages with their report section (``stages``, ``report``) and the
``tailsynth anchors`` command (``commands``)."""
from . import bood, commands, method  # noqa: F401  (registers the methods and the command)
from .method import (OUTLIER_LABEL, DreamOodConfig, EnergyRegularizedObjective, OutlierExposureConfig,
                     VmfEncoderConfig)
from .stages import DECODE_OUTLIERS, IMAGINE_OUTLIERS, read_outliers

__all__ = ["DECODE_OUTLIERS", "IMAGINE_OUTLIERS", "OUTLIER_LABEL", "DreamOodConfig", "EnergyRegularizedObjective",
           "OutlierExposureConfig", "VmfEncoderConfig", "read_outliers"]
