"""The ``guard_synthetic`` stage: a guided synthetic set judged by classifiers that never guided it, written as a new
synthetic set (:mod:`tailsynth.guard.judge` holds the rule), and its report section."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ...config import StrictConfig
from ...data import DataConfig
from ...data.synthetic import SyntheticSet
from ...engine import Artifact, Built, Stage
from ...engine.artifacts import load_classifier, read_split
from ...guard import decide, judge_probabilities
from ...guard.judge import DROPPED, GUIDED, PLAIN, accepts
from ...report.tables import Table
from ...utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device

JUDGE_PREFIX = "judge_"


class GuardConfig(StrictConfig):
    """``method_params.logex-guarded``. ``guided`` / ``plain``: the generators of the guided set and of its un-guided
    partners (same x_T); ``judge_method`` (None: the guided set's auxiliary method) trained with seeds
    ``judge_seeds`` (never the auxiliary's own seeds; with ``synthesis.aux_train`` as the auxiliary is, and
    ``judge_train`` over that);
    ``rule`` / ``min_confidence`` / ``min_gain`` / ``replace`` / ``fallback_below``: :func:`tailsynth.guard.decide`."""

    guided: str = "logex"
    plain: str = "lora"
    judge_method: str | None = None
    judge_seeds: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    # the judges' classifier settings over the auxiliary's recipe, key by key as synthesis.aux_train (each key
    # replaces the recipe's value): a judge of another architecture ({model: resnet32}) or augmentation. A plain {}
    # (pydantic copies it), not a default_factory: fingerprint_neutral compares with the field's default
    judge_train: dict[str, Any] = {}  # noqa: RUF012
    # not_lower: val FPR@95 of the row 25.00 vs 27.22 (agree) on fashion-mnist-lt-cpu, 17.50 vs 18.33 on pbc-lt-cpu
    # (research/results/{fashion-mnist,pbc-lt}-guarded{,-not-lower}/)
    rule: Literal["agree", "confidence", "not_lower"] = "not_lower"
    min_confidence: float = Field(0.5, gt=0.0, le=1.0)
    # rule not_lower only: the judge's confidence in the class must rise by at least this much (0: not fall)
    min_gain: float = Field(0.0, ge=0.0, lt=1.0)
    replace: Literal["plain", "drop"] = "plain"
    fallback_below: float = Field(0.5, ge=0.0, le=1.0)

    fingerprint_neutral = ("judge_train",)


class GuardStageConfig(StrictConfig):
    method: str  # the name the judged set goes by (the row's), as a generator's name in the quality table
    guard: GuardConfig
    synthesis: dict[str, Any]  # the guidance's resize (read by the quality stage's auxiliary agreement)
    data: DataConfig
    device: str = "auto"


def run_guard(cfg: GuardStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """``synthetic.csv`` + the kept PNGs (copied: the set stands alone), ``judge.json`` (per class: the judge's
    acceptance of the guided and of the un-guided images, the fall-back, what was kept) and ``judge.npz`` (per
    guided image: the judge's mean softmax, its verdict and the kept image's source)."""
    split = read_split(inputs["split"])
    names = split.class_names
    device = resolve_device(cfg.device)
    guided, plain = SyntheticSet.read(inputs["guided"].path), SyntheticSet.read(inputs["plain"].path)
    plain_rows = {r["file"]: r for r in plain.rows}
    judges = [load_classifier(inputs[k].path)[0].to(device) for k in sorted(inputs) if k.startswith(JUDGE_PREFIX)]
    size, channels = cfg.data.image_size, cfg.data.channels
    images, labels = guided.load_images(names, size, channels)
    partners = SyntheticSet(plain.folder, [plain_rows[r["file"]] for r in guided.rows if r["file"] in plain_rows])
    p_images, p_labels = partners.load_images(names, size, channels)
    has_plain = np.array([r["file"] in plain_rows for r in guided.rows], dtype=bool)
    probs = judge_probabilities(judges, images, device)
    p_probs = judge_probabilities(judges, p_images, device) if len(p_images) else np.zeros((0, len(names)))
    aligned = np.full_like(probs, np.nan)  # the partners' probabilities, row for row with the guided images
    aligned[has_plain] = p_probs
    g = cfg.guard
    decision = decide(probs, labels, has_plain, rule=g.rule, min_confidence=g.min_confidence, replace=g.replace,
                      fallback_below=g.fallback_below, plain_probs=aligned, min_gain=g.min_gain)
    # the judge's verdict on the un-guided images themselves (by the absolute rule; "not_lower" compares a pair)
    plain_rule = "agree" if g.rule == "not_lower" else g.rule
    p_ok = accepts(p_probs, p_labels, plain_rule, g.min_confidence) if len(p_images) else np.zeros(0, bool)
    rows = []
    for row, src in zip(guided.rows, decision.source):
        if src == DROPPED:
            continue
        origin = (inputs["guided"].path, row) if src == GUIDED else (inputs["plain"].path, plain_rows[row["file"]])
        atomic_write_bytes(workdir / row["file"], (origin[0] / origin[1]["file"]).read_bytes())
        rows.append({**origin[1], "method": cfg.method})
    SyntheticSet(workdir, rows).write()
    per_class = {}
    for c in sorted(set(labels.tolist())):
        mask, pmask = labels == c, p_labels == c
        src = decision.source[mask]
        per_class[names[c]] = {
            "n": int(mask.sum()), "judge_accepts_guided": decision.acceptance[c],
            "judge_accepts_plain": float(p_ok[pmask].mean()) if pmask.any() else None,
            "judge_conf_guided": float(probs[mask, c].mean()),
            "judge_conf_plain": float(p_probs[pmask, c].mean()) if pmask.any() else None,
            "fallback": decision.fallback[c], "kept_guided": int((src == GUIDED).sum()),
            "kept_plain": int((src == PLAIN).sum()), "dropped": int((src == DROPPED).sum())}
    atomic_write_json(workdir / "judge.json", {"rule": g.model_dump(), "judges": len(judges), "per_class": per_class})
    np.savez_compressed(workdir / "judge.npz", probs=probs.astype(np.float32), accepted=decision.accepted,
                        source=decision.source, labels=labels)
    kept = np.isin(decision.source, [GUIDED, PLAIN])
    return {"n_images": len(rows), "guided_kept": float((decision.source == GUIDED).mean()),
            "judge_accepts_guided": float(decision.accepted.mean()),
            "judge_accepts_plain": float(p_ok.mean()) if len(p_ok) else None,
            "fallback_classes": [names[c] for c, f in decision.fallback.items() if f], "dropped": int((~kept).sum())}


def guard_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    """Per judged set and tail class: the judge's acceptance of the guided and of the un-guided images (a user sees,
    without the oracle, where guidance fooled its guide: the judge rejects guided images it accepts un-guided), the
    fall-back and what was kept. The oracle's verdict on the kept set is in the synthetic-quality table."""
    table = Table("Guided images judged by classifiers that never guided them",
                  ["set", "class", "images", "judge accepts guided", "judge accepts un-guided",
                   "judge conf. guided", "judge conf. un-guided", "fall-back", "kept guided / un-guided / dropped"],
                  caption="Judge: the mean softmax of the judge classifiers (trained on the training split only, "
                          "never used for guidance); 'accepts': its verdict on the target class (rule below). "
                          "Fall-back: the class's acceptance was below fallback_below, so the class keeps only its "
                          "un-guided (only-LoRA) images.")
    data: dict[str, Any] = {}
    for b in built:
        judged = read_json(b.artifact.file("judge.json"))
        data[b.config.method] = judged
        pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        num = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        for name, e in judged["per_class"].items():
            table.rows.append([(b.config.method, ""), (name, ""), (str(e["n"]), ""), (pct(e["judge_accepts_guided"]), ""),
                               (pct(e["judge_accepts_plain"]), ""), (num(e["judge_conf_guided"]), ""),
                               (num(e["judge_conf_plain"]), ""), ("yes" if e["fallback"] else "no", ""),
                               (f"{e['kept_guided']} / {e['kept_plain']} / {e['dropped']}", "")])
        rule = judged["rule"]
        table.caption += (f" {b.config.method}: {judged['judges']} judge(s){_recipe(b.config.guard)}, "
                          f"rule {rule['rule']}"
                          + (f" (p >= {rule['min_confidence']})" if rule["rule"] == "confidence" else "")
                          + (" (a guided image is accepted when the judge gives its class at least as much as on its "
                             f"un-guided partner{_gain(rule)}; the un-guided column: the judge's argmax)"
                             if rule["rule"] == "not_lower" else "")
                          + f", rejected -> {rule['replace']}, fall-back below {rule['fallback_below']}.")
    return [table], {"guard": data}


def _recipe(g: GuardConfig) -> str:
    method = g.judge_method or "the auxiliary's method"
    over = ", ".join(f"{k} {v}" for k, v in g.judge_train.items())
    return f" ({method}, seeds {g.judge_seeds}{'; ' + over if over else ''})"


def _gain(rule: dict) -> str:
    return f" plus {rule['min_gain']}" if rule.get("min_gain") else ""


def _cost(cfg: GuardStageConfig) -> str:
    return f"judge {len(cfg.guard.judge_seeds)} classifier(s) on the {cfg.guard.guided} and {cfg.guard.plain} images"


GUARD = Stage("guard_synthetic", "1", run_guard, "guided synthetic images judged by classifiers that never guided them",
              cost=_cost, report=guard_report, synthetic_set=True)


def guarded_set(graph, method: str, cfg: GuardConfig, guided: Artifact, plain: Artifact, aux: dict[str, Artifact],
                judges: dict[str, Artifact]) -> Artifact:
    """The request: ``guided`` judged by ``judges`` (inputs ``judge_0``, ...) with ``plain`` as partners; ``aux``
    (the guidance's auxiliary classifiers) joins the inputs so the quality table shows the auxiliary's agreement."""
    stage_cfg = GuardStageConfig(method=method, guard=cfg, synthesis={"guide_resize": graph.synthesis.guide_resize},
                                 data=graph.config.data, device=graph.config.device)
    inputs = {"split": graph.split(), "guided": guided, "plain": plain, **aux, **judges}
    return graph.run(GUARD, stage_cfg, inputs, None, f"{method} judged set")
