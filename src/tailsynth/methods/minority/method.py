"""Minority guidance (Um et al., ICLR 2024) as a synthesis method: rare-featured synthetic tail images.

The LoRA-adapted diffusion model (LoGex steps 1-2) samples each tail class with classifier-free guidance as
``logex-lora`` does, and minority guidance pushes every step toward the rarest minority level l~ = L - 1:
eps~ = eps_cfg - w sqrt(1 - abar_t) grad log p(l~ | x_t[, c]) with the x0-hat shift that goes with it, not
clipped again (DDIM, the experiment's 20 steps; :mod:`tailsynth.minority.guidance`; w = 0 gives exactly the
``logex-lora`` images) or the mean shift of ancestral sampling (``sampler: ddpm``, the official code's
sampler). Before it: minority scores of the real images (``minority_score`` stage) and the noise-conditioned
minority classifier on the training images (``train_minority_classifier``). Then CE on real + synthetic images,
P(tail) as the test score.

``mode`` (:mod:`.config`) is one of the paper's two settings: ``conditional`` (default; the paper's setting for
class-conditional models, App. B, used for its ImageNet runs) scores with Eq. 16, cuts L levels within each
class and guides with p(l~ | x_t, c) of Eq. 17; ``unconditional`` scores with Eq. 7, cuts levels over all training
images and guides with p(l~ | x_t) of Eq. 8. The ``pbc-lt-cpu`` row: mode conditional, L = 10, 10 noise draws at
t = 300 = 0.3 T of the linear schedule (T = 1000), perceptual distance, w = 3.5 toward l~ = 9.
"""
from __future__ import annotations

import torch

from ...engine.artifacts import read_split
from ...minority import MinorityClassifier
from ...minority.guidance import guided_sample
from ...utils import read_json
from ..base import Method, SyntheticGenerator
from ..registry import register
from .config import MinoritySettings, check_settings, class_hook
from .figures import minority_figures
from .stages import minority_classifier


class MinoritySampling(SyntheticGenerator):
    name = "minority"
    Config = MinoritySettings
    report_params = ("figures",)  # drawn by the minority_figures stage, not part of the synthetic set
    version = "2"  # DDIM: the guided x0-hat is not clipped again (tailsynth.minority.guidance)

    def settings(self, synthesis) -> dict:
        p = self.params(synthesis)
        return {"DDIM steps": p.num_steps, "CFG": p.guidance_scale, "sampler": p.sampler,
                "setting": "class-conditional (Eq. 16/17)" if p.mode == "conditional" else "unconditional (Eq. 7/8)",
                "aux classifier": self.aux_method(synthesis), "images / class": synthesis.n_per_class,
                "target level": p.guidance.target if p.guidance.target is not None else f"L-1 = {p.classifier.num_levels - 1}",
                "scale w": p.guidance.scale, "mode": p.guidance.mode, "score distance": p.distance,
                "levels L": p.classifier.num_levels, "classifier steps": p.classifier.steps}

    def inputs(self, graph, synthesis) -> dict:
        return {"minority": minority_classifier(graph, self.params(synthesis))}

    def prepare(self, inputs, backend, device, params, guide=None, data=None):
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
    reference = ("Minority guidance (Um et al. 2024, Eq. 17, or Eq. 8 in mode unconditional): CE on real + LoRA "
                 "samples guided toward the rarest minority level")
    generator = MinoritySampling()

    def check_config(self, exp) -> None:
        """``score.t`` and ``classifier.num_levels`` against the generator's schedule and the split's training
        counts (:func:`.config.check_settings`)."""
        super().check_config(exp)
        check_settings(exp)

    def extra_stages(self, graph) -> None:
        """The paper's figures (``minority_figures``), when the experiment has an oracle and figures are on."""
        minority_figures(graph)
