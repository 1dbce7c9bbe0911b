"""The long-tail baselines of LoGex Table 2: a criterion, a sampler and, for cRT, a second stage.

CE; class-balanced re-weighting (Cui et al. 2019, beta 0.9999); HOD (Roy et al. 2022); focal (Lin et al.
2017) with and without re-weighting; LDAM (Cao et al. 2019) with re-weighting and deferred re-weighting
(DRW: lr x0.1 and class-balanced weights from ``drw_epoch``); cRT (Kang et al. 2020).
"""
from __future__ import annotations

import torch

from ..training.checkpoint import load_weights
from .base import Method
from .registry import register


def _criterion_method(name: str, criterion: str, reference: str) -> type[Method]:
    cls = type(name.replace("-", "_").upper(), (Method,), {"name": name, "criterion": criterion,
                                                          "reference": reference, "__doc__": reference})
    return register(cls)


for _name, _ref in [
    ("ce", "cross-entropy"),
    ("ce-rw", "Cui et al. 2019, class-balanced weights, beta 0.9999"),
    ("hod", "Roy et al. 2022, CE + 0.1 coarse head/tail loss"),
    ("focal", "Lin et al. 2017, gamma 2"),
    ("focal-rw", "focal loss with class-balanced weights"),
    ("ldam", "Cao et al. 2019, max margin 0.5, s 30"),
    ("ldam-rw", "LDAM with class-balanced weights"),
    ("ldam-rw-drw", "LDAM + deferred re-weighting (lr x0.1 at the DRW epoch)"),
]:
    _criterion_method(_name, _name, _ref)


@register
class CRT(Method):
    """cRT (Kang et al. 2020, "Decoupling representation and classifier"): take the CE model, re-initialise
    its classifier layer and retrain that layer alone (backbone and BatchNorm statistics frozen) with
    class-balanced sampling for ``crt_epochs`` epochs."""

    name = "crt"
    reference = "Kang et al. 2020, classifier re-training with a class-balanced sampler"
    criterion = "ce"
    sampler = "class_balanced"
    base_method = "ce"

    def classifier(self, graph, seed, per_class=None):
        base = graph.classifier(self.base_method, seed)
        return graph.train(self, seed, {"base": base}, epochs=graph.config.crt_epochs)

    def init_model(self, model, inputs, seed):
        load_weights(model, inputs["base"].file("model.safetensors"))
        model.reset_head(generator=torch.Generator().manual_seed(seed))
        return "head"
