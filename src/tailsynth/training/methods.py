"""Long-tail training methods: each a criterion + sampler + schedule choice (rows of LoGex Table 2).

No method has its own loop; :func:`tailsynth.training.trainer.fit` runs them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """``criterion`` names a loss in ``tailsynth.losses``; ``crt_from`` makes the method a second stage
    that re-initialises the classifier layer of that method's model and retrains it alone; ``synthesis``
    names the synthesis method whose images are added to the training split (never to val or test)."""

    name: str
    criterion: str
    criterion_params: dict[str, Any] = field(default_factory=dict)
    sampler: str = "instance"
    crt_from: str | None = None
    synthesis: str | None = None  # a synthesis method: real + its synthetic tail images train the classifier
    reference: str = ""


METHODS: Registry[MethodSpec] = Registry("method")


def _add(spec: MethodSpec) -> None:
    METHODS.register(spec.name)(spec)


_add(MethodSpec("ce", "ce", reference="cross-entropy"))
_add(MethodSpec("ce-rw", "ce-rw", reference="Cui et al. 2019, class-balanced weights, beta 0.9999"))
_add(MethodSpec("hod", "hod", reference="Roy et al. 2022, CE + 0.1 coarse head/tail loss"))
_add(MethodSpec("crt", "ce", sampler="class_balanced", crt_from="ce",
                reference="Kang et al. 2020, classifier re-training with a class-balanced sampler"))
_add(MethodSpec("focal", "focal", reference="Lin et al. 2017, gamma 2"))
_add(MethodSpec("focal-rw", "focal-rw", reference="focal loss with class-balanced weights"))
_add(MethodSpec("ldam", "ldam", reference="Cao et al. 2019, max margin 0.5, s 30"))
_add(MethodSpec("ldam-rw", "ldam-rw", reference="LDAM with class-balanced weights"))
_add(MethodSpec("ldam-rw-drw", "ldam-rw-drw", reference="LDAM + deferred re-weighting (lr x0.1 at the DRW epoch)"))

_add(MethodSpec("logex-lora", "ce", synthesis="lora",
                reference="LoGex 'only LoRA': CE on real + LoRA-adapted diffusion samples (no guidance)"))

_add(MethodSpec("logex", "ce", synthesis="logex",
                reference="LoGex: CE on real + LoRA samples guided by DiG-IN through the DDIM chain"))
_add(MethodSpec("fg-entropy", "ce", synthesis="fg-entropy",
                reference="Hemmat et al. 2023: CE on real + samples with classifier-entropy feedback"))

TABLE2_METHODS = ["ce", "ce-rw", "hod", "crt", "focal", "focal-rw", "ldam", "ldam-rw", "ldam-rw-drw"]
