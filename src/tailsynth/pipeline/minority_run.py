"""``tailsynth minority score | train | sample``: the minority-guidance stages of an experiment on their own.

Each builds the experiment's stage graph (the same fingerprints as ``tailsynth run``, so what one command made
the other reuses) and runs only what the minority stages need: split, base diffusion, LoRA, the perceptual
classifier, then the scores / the classifier. ``sample`` draws guided images for a grid of target levels and
scales from seeded noise (the same x_T in every cell, so the cells differ only by the guidance).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import TailsynthError
from ..methods import generator_named
from ..utils import atomic_write_bytes, atomic_write_json, resolve_device
from .experiment import ExperimentConfig
from .graph import StageGraph, check_experiment
from .runner import Runner
from .store import Artifact, ArtifactStore


def _graph(cfg: ExperimentConfig, runs: str | Path, log: Callable[[str], None]) -> tuple[StageGraph, object]:
    check_experiment(cfg)
    graph = StageGraph(cfg, Runner(ArtifactStore(runs), log=log))
    return graph, generator_named("minority").params(graph.synthesis)


def minority_score(cfg: ExperimentConfig, runs: str | Path, log: Callable[[str], None] = print) -> Artifact:
    graph, settings = _graph(cfg, runs, log)
    return graph.minority_scores(settings)


def minority_train(cfg: ExperimentConfig, runs: str | Path, log: Callable[[str], None] = print) -> Artifact:
    graph, settings = _graph(cfg, runs, log)
    return graph.minority_classifier(settings)


def minority_sample(cfg: ExperimentConfig, runs: str | Path, out: str | Path, levels: list[int] | None,
                    scales: list[float], classes: list[str] | None = None, n: int = 8, sampler: str = "ddim",
                    seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """A grid PNG per class (rows: level x scale) and ``samples.npz`` (uint8 images, class, level, scale) under
    ``out``; returns the settings written to ``samples.json``."""
    from ..minority import MinorityClassifier
    from ..report.grids import labelled_rows
    from .artifacts import load_adapted, read_split
    from .minority_stages import condition_ids
    graph, settings = _graph(cfg, runs, log)
    clf_art = graph.minority_classifier(settings)
    split = read_split(graph.split())
    device = resolve_device(cfg.device)
    backend, cond_of = load_adapted(graph.base_diffusion().path, graph.lora().path, graph.diffusion, split, device)
    classifier, _ = MinorityClassifier.load(clf_art.path / "model", backend)
    classifier.to(device)
    L = classifier.cfg.num_levels
    levels = levels if levels is not None else [0, L // 2, L - 1]
    names = classes or [split.class_names[c] for c in split.tail_classes]
    unknown = [c for c in names if c not in split.class_names]
    if unknown:
        raise TailsynthError(f"unknown class(es) {unknown}; the benchmark's classes: {split.class_names}")
    latent = backend.latent_shape(graph.diffusion.working_size(cfg.data.image_size))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = {"images": [], "class": [], "level": [], "scale": []}
    for name in names:
        c = split.class_names.index(name)
        cid = int(condition_ids(split, cond_of, np.array([c]))[0])
        ids = torch.full((n,), cid, dtype=torch.long, device=device)
        cond = backend.encode_condition(class_ids=ids).detach()
        uncond = backend.null_condition(n).to(device).detach()
        x_T = torch.randn((n, *latent), generator=torch.Generator().manual_seed(seed)).to(device)
        rows = level_scale_rows(backend, classifier, cond, uncond, x_T, levels, scales, sampler, settings.num_steps,
                                settings.guidance_scale, seed + 1)
        for (label, arr), (level, w) in zip(rows, [(lv, w) for lv in levels for w in scales]):
            records["images"].append(arr)
            records["class"] += [name] * n
            records["level"] += [level] * n
            records["scale"] += [w] * n
            log(f"[sample] {name}: {label}")
        atomic_write_bytes(out / f"grid_{name}.png", labelled_rows(rows, f"{name}: minority guidance ({sampler})"))
    np.savez_compressed(out / "samples.npz", images=np.concatenate(records["images"]), classes=np.array(records["class"]),
                        levels=np.array(records["level"]), scales=np.array(records["scale"]))
    meta = {"levels": levels, "scales": scales, "classes": names, "n": n, "sampler": sampler, "seed": seed,
            "num_steps": settings.num_steps, "guidance_scale": settings.guidance_scale,
            "classifier": clf_art.fingerprint}
    atomic_write_json(out / "samples.json", meta)
    return meta


def level_scale_rows(backend, classifier, cond: torch.Tensor, uncond: torch.Tensor, x_T: torch.Tensor,
                     levels: list[int], scales: list[float], sampler: str, num_steps: int, guidance_scale: float,
                     noise_seed: int) -> list[tuple[str, np.ndarray]]:
    """Figs. 15-16 of the paper: one row of uint8 images (n, H, W, C) per (target level, scale w), all from the
    same x_T (and, for ancestral sampling, the same noise), so rows differ only by the guidance."""
    from ..minority import MinorityGuidanceConfig, minority_hook
    from ..minority.guidance import guided_sample
    c_cond = cond if classifier.cfg.conditional else uncond
    rows = []
    for level in levels:
        for w in scales:
            hook = minority_hook(classifier, c_cond, MinorityGuidanceConfig(target=level, scale=w))
            images = guided_sample(backend, x_T, cond, uncond, hook, sampler, num_steps, guidance_scale,
                                   torch.Generator().manual_seed(noise_seed))
            rows.append((f"l~={level}, w={w:g}", to_uint8(images)))
    return rows


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8."""
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
