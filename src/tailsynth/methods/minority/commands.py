"""``tailsynth minority score | train | sample``: the minority-guidance stages of an experiment on their own.

Each works on the experiment's stage graph (the one ``tailsynth run`` builds, handed over by the command line:
the same fingerprints, so what one command made the other reuses) and runs only what the minority stages need:
split, base diffusion, LoRA, the perceptual classifier, then the scores / the classifier. ``sample`` draws guided
images for a grid of target levels and scales from seeded noise (the same x_T in every cell, so the cells differ
only by the guidance).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from ...engine import Artifact
from ...engine.artifacts import load_adapted, read_split
from ...errors import TailsynthError
from ...minority import MinorityClassifier
from ...report.grids import labelled_rows
from ...utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device
from ..registry import register_command
from .config import MinoritySettings, check_settings
from .sampling import level_scale_rows
from .stages import condition_ids, minority_classifier, minority_scores_of


def _settings(graph) -> MinoritySettings:
    """The experiment's minority settings, checked against its schedule and split as ``tailsynth run`` checks them."""
    return check_settings(graph.config)


def minority_score(graph) -> Artifact:
    """The minority scores of the experiment's real train/val images (stage ``minority_score``)."""
    return minority_scores_of(graph, _settings(graph))


def minority_train(graph) -> Artifact:
    """The experiment's minority classifier (stage ``train_minority_classifier``)."""
    return minority_classifier(graph, _settings(graph))


def minority_sample(graph, out: str | Path, levels: list[int] | None, scales: list[float],
                    classes: list[str] | None = None, n: int = 8, sampler: str = "ddim", seed: int = 0,
                    log=print) -> dict:
    """A grid PNG per class (rows: level x scale) and ``samples.npz`` (uint8 images, class, level, scale) under
    ``out``; returns the settings written to ``samples.json``."""
    settings = _settings(graph)
    clf_art = minority_classifier(graph, settings)
    split = read_split(graph.split())
    device = resolve_device(graph.config.device)
    backend, cond_of = load_adapted(graph.base_diffusion().path, graph.lora().path, graph.diffusion, split, device)
    classifier, _ = MinorityClassifier.load(clf_art.path / "model", backend)
    classifier.to(device)
    L = classifier.cfg.num_levels
    levels = levels if levels is not None else [0, L // 2, L - 1]
    names = classes or [split.class_names[c] for c in split.tail_classes]
    unknown = [c for c in names if c not in split.class_names]
    if unknown:
        raise TailsynthError(f"unknown class(es) {unknown}; the benchmark's classes: {split.class_names}")
    latent = backend.latent_shape(graph.diffusion.working_size(graph.config.data.image_size))
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


@register_command
def minority_commands(open_graph) -> click.Group:
    """The ``tailsynth minority`` group; ``open_graph(config, overrides, runs, log)`` gives the experiment's graph."""

    @click.group("minority")
    def minority() -> None:
        """Minority guidance (Um et al. 2024): score real images, train the minority classifier, sample."""

    def experiment_command(name: str):
        """A subcommand taking CONFIG [OVERRIDES]... and --runs."""
        def wrap(func):
            func = click.option("--runs", default="runs", show_default=True, help="artifact directory")(func)
            func = click.argument("overrides", nargs=-1)(func)
            func = click.argument("config")(func)
            return minority.command(name)(func)
        return wrap

    @experiment_command("score")
    def score(config: str, overrides: tuple[str, ...], runs: str) -> None:
        """Minority scores (l2, l1, perceptual) of the real train/val images under the adapted diffusion model."""
        artifact = minority_score(open_graph(config, overrides, runs, click.echo))
        click.echo(f"scores: {artifact.path / 'scores.npz'}")

    @experiment_command("train")
    def train(config: str, overrides: tuple[str, ...], runs: str) -> None:
        """The noise-conditioned minority classifier on the training images' minority levels."""
        artifact = minority_train(open_graph(config, overrides, runs, click.echo))
        summary = read_json(artifact.path / "manifest.json").get("result", {})
        click.echo(f"classifier: {artifact.path}")
        for key, value in summary.items():
            if key.startswith("holdout") or key == "chance":
                click.echo(f"  {key}: {value:.3f}")

    @experiment_command("sample")
    @click.option("--out", required=True, help="folder for the grids and samples.npz")
    @click.option("--levels", default=None, help="target levels, comma-separated (default 0, L/2, L-1)")
    @click.option("--scales", default="0,1,5", show_default=True, help="guidance scales w, comma-separated")
    @click.option("--classes", default=None, help="class names, comma-separated (default: the tail classes)")
    @click.option("-n", "--per-cell", default=8, show_default=True, help="images per grid cell")
    @click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
    @click.option("--seed", default=0, show_default=True)
    def sample(config, overrides, runs, out, levels, scales, classes, per_cell, sampler, seed) -> None:
        """Guided samples for a grid of target levels x scales (the same noise in every cell)."""
        try:
            lv = [int(v) for v in levels.split(",")] if levels else None
            sc = [float(v) for v in scales.split(",")]
        except ValueError as err:
            raise TailsynthError(f"--levels / --scales must be comma-separated numbers: {err}") from None
        meta = minority_sample(open_graph(config, overrides, runs, click.echo), out, lv, sc,
                               classes.split(",") if classes else None, per_cell, sampler, seed, log=click.echo)
        click.echo(f"grids for {', '.join(meta['classes'])}: {Path(out).resolve()}")

    return minority
