"""Label shift (Tian et al. 2020, "Posterior re-calibration for imbalanced datasets"), the LDMLR paper's
baseline: a classifier trained on the long-tailed prior pi is re-calibrated post hoc for a uniform test prior,
logits_y - tau log pi_y (Menon et al. 2021's post-hoc logit adjustment; tau = 1 is the Bayes correction of the
prior; tau is chosen on the validation split from ``taus``). Nothing is retrained: the shift is folded into
the classifier layer's bias, so the result is an ordinary classifier artifact.

- ``la``: label shift on the CE classifier (LDMLR Table 1 "Label shift");
- ``la-ldmlr``: label shift on the LDMLR classifier ("Label shift + LDMLR").
Settings: ``method_params.<name>`` (:class:`tailsynth.pipeline.feature_stages.LabelShiftConfig`).
"""
from __future__ import annotations

from ..config import build_config
from ..pipeline.feature_stages import LabelShiftConfig
from .base import Method
from .registry import register


class _LabelShift(Method):
    base_method = "ce"

    def config(self, exp) -> LabelShiftConfig:
        return build_config(LabelShiftConfig, exp.method_params.get(self.name, {}), f"method_params.{self.name}")

    def check_config(self, exp) -> None:
        self.config(exp)

    def classifier(self, graph, seed, per_class=None):
        base = graph.classifier(self.base_method, seed)
        return graph.label_shift(base, self.name, seed, self.config(graph.config))


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
