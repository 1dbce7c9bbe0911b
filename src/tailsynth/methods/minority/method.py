"""Minority guidance (Um et al., ICLR 2024) as a synthesis method: rare-featured synthetic tail images.

The LoRA-adapted diffusion model (LoGex steps 1-2) samples each tail class with classifier-free guidance as
``logex-lora`` does, and the class-conditional minority guidance of Eq. 17 pushes every step toward the rarest
minority level l~ = L - 1 of that class: eps~ = eps_cfg - w sqrt(1 - abar_t) grad log p(l~ | x_t, c) (DDIM,
the experiment's 20 steps; w = 0 gives exactly the ``logex-lora`` images) or the mean shift of ancestral
sampling (``sampler: ddpm``, the official code's sampler). Before it: minority scores of the real images
(``minority_score`` stage, Eq. 16) and the noise-conditioned minority classifier on the training images
(``train_minority_classifier``). Then CE on real + synthetic images, P(tail) as the test score.
"""
from __future__ import annotations

import torch

from ...engine.artifacts import read_split
from ...minority import MinorityClassifier
from ...minority.guidance import guided_sample
from ...utils import read_json
from ..base import Method, SyntheticGenerator
from ..registry import register
from .config import MinoritySettings, class_hook
from .figures import minority_figures
from .stages import minority_classifier


class MinoritySampling(SyntheticGenerator):
    name = "minority"
    Config = MinoritySettings
    report_params = ("figures",)  # drawn by the minority_figures stage, not part of the synthetic set

    def settings(self, synthesis) -> dict:
        p = self.params(synthesis)
        return {"DDIM steps": p.num_steps, "CFG": p.guidance_scale, "sampler": p.sampler,
                "aux classifier": self.aux_method(synthesis), "images / class": synthesis.n_per_class,
                "target level": p.guidance.target if p.guidance.target is not None else f"L-1 = {p.classifier.num_levels - 1}",
                "scale w": p.guidance.scale, "mode": p.guidance.mode, "score distance": p.distance,
                "levels L": p.classifier.num_levels, "classifier steps": p.classifier.steps}

    def inputs(self, graph, synthesis) -> dict:
        return {"minority": minority_classifier(graph, self.params(synthesis))}

    def prepare(self, inputs, backend, device, params):
        classifier, _ = MinorityClassifier.load(inputs["minority"].path / "model", backend)
        levels = read_json(inputs["minority"].path / "levels.json")
        split_names = None
        if "split" in inputs:
            split_names = read_split(inputs["split"]).class_names
        return classifier.to(device), levels, split_names

    def generate(self, backend, guide, targets, cond, uncond, x_T, synthesis, params, generator, prepared=None):
        classifier, levels, names = prepared
        hook = class_hook(classifier, levels, names, backend, cond, targets, params.guidance)
        images = guided_sample(backend, x_T, cond, uncond, hook, params.sampler, params.num_steps,
                               params.guidance_scale, generator)
        with torch.no_grad():
            return images, guide.target_prob(images, targets)


@register
class MinorityGuided(Method):
    name = "minority"
    reference = ("Minority guidance (Um et al. 2024, Eq. 17): CE on real + LoRA samples guided toward each tail "
                 "class's rarest minority level")
    generator = MinoritySampling()

    def extra_stages(self, graph) -> None:
        """The paper's figures (``minority_figures``), when the experiment has an oracle and figures are on."""
        minority_figures(graph)
