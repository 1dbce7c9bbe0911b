"""``logex-guarded``: LoGex with guidance that must convince a judge it did not guide.

LoGex's DiG-IN guidance (LoGex §3, step 3) optimises its auxiliary classifier's confidence; where the auxiliary is
weak or the generator cannot draw a class, it reaches that confidence with images adversarial for the auxiliary
(the synthetic-quality table's "aux right, oracle wrong"). This row keeps a guided image only where an independent
judge -- classifiers of the auxiliary's recipe with other seeds, trained on the training split only, never used for
guidance -- confirms its class; a rejected image is replaced by its only-LoRA partner (the image DiG-IN started
from: same x_T) and a class whose guided images the judge mostly rejects keeps only its only-LoRA images
(:mod:`tailsynth.guard.judge`). Then CE on real + kept images, P(tail) as the test score, as ``logex``.

The guided and un-guided sets are the ``logex`` and ``logex-lora`` rows' own (shared, built once); the judges are
table rows when the auxiliary has no ``aux_train`` and ``judge_train`` is empty (then ``ce-rw`` seeds 1 and 2 beside
the aux's seed 0); ``judge_train`` gives them another architecture or augmentation than the auxiliary's. Extra cost:
the judges' training (none when they are rows of the table) and one forward pass per image.
"""
from __future__ import annotations

from ...errors import TailsynthError
from ..base import Method
from ..registry import METHODS, generator_named, register
from .stages import JUDGE_PREFIX, GuardConfig, guarded_set


@register
class LogexGuarded(Method):
    name = "logex-guarded"
    reference = ("LoGex with a judge: DiG-IN images kept only where classifiers that never guided them agree; "
                 "rejected ones replaced by their only-LoRA partners, per-class fall-back to only-LoRA")
    Config = GuardConfig

    def check_config(self, exp) -> None:
        cfg: GuardConfig = exp.method_config(self.name)
        where = f"method_params.{self.name}"
        guided = generator_named(cfg.guided)
        generator_named(cfg.plain)
        if cfg.guided == cfg.plain:
            raise TailsynthError(f"{where}: guided and plain name the same generator {cfg.guided!r}")
        s = exp.synthesis
        judge = METHODS.get(cfg.judge_method or guided.aux_method(s))
        if judge.generator is not None:
            raise TailsynthError(f"{where}.judge_method: {judge.name!r} trains on synthetic images itself; a judge "
                                 f"must be trained on real images")
        aux_recipe = exp.classifier.with_settings(s.aux_train, "synthesis.aux_train")
        same_recipe = aux_recipe.with_settings(cfg.judge_train, f"{where}.judge_train") == aux_recipe
        if judge.name == guided.aux_method(s) and same_recipe:
            guiding = {s.aux_seed + i for i in range(s.aux_ensemble)}
            overlap = sorted(guiding & set(cfg.judge_seeds))
            if overlap:
                raise TailsynthError(f"{where}.judge_seeds: {overlap} are the auxiliary's own seeds (aux_seed "
                                     f"{s.aux_seed}, aux_ensemble {s.aux_ensemble}): a judge must never have guided; "
                                     f"use other seeds")
        if cfg.min_gain and cfg.rule != "not_lower":
            raise TailsynthError(f"{where}.min_gain: {cfg.min_gain} applies to rule 'not_lower' only (rule is "
                                 f"{cfg.rule!r})")
        if len(set(cfg.judge_seeds)) != len(cfg.judge_seeds):
            raise TailsynthError(f"{where}.judge_seeds: {cfg.judge_seeds} repeats a seed")

    def classifier(self, graph, seed: int, per_class: int | None = None):
        cfg: GuardConfig = graph.method_config(self)
        guided_gen = generator_named(cfg.guided)
        guided, plain = graph.synthetic(guided_gen), graph.synthetic(generator_named(cfg.plain))
        aux_method = guided_gen.aux_method(graph.synthesis)
        judge_method = cfg.judge_method or aux_method
        judges = {f"{JUDGE_PREFIX}{i}": graph.aux_classifier(judge_method, s, cfg.judge_train,
                                                             f"method_params.{self.name}.judge_train")
                  for i, s in enumerate(cfg.judge_seeds)}
        kept = guarded_set(graph, self.name, cfg, guided, plain, graph.auxiliary(aux_method), judges)
        return graph.train(self, seed, {"synthetic": kept}, per_class=per_class)

    def synthetic_rows(self, synthetic, per_class: int | None, params: GuardConfig):
        """With ``replace: drop`` the judged set holds fewer images of a class than were drawn (what the judge
        rejected is left out): the row trains on at most ``per_class`` kept images per class, fewer where the judge
        dropped some (a class may keep none and trains on its real images only)."""
        return synthetic.select(per_class, at_most=params.replace == "drop")
