"""The minority-guidance paper's figures for the experiment report (Um et al. 2024), a report-only stage.

``minority_figures`` runs when the ``minority`` method is in the experiment and the oracle is configured; it
reads the minority scores, the minority classifier, the oracle and the two DDIM synthetic sets (only LoRA, w = 0;
minority-guided) and writes to its artifact folder:

- ``minority.json``: Spearman correlation of each score distance with AvgkNN / LOF of the scored real images
  within class, oracle features (Fig. 10, App. D.1); the Table-1 metrics of four synthetic tail sets against the
  non-test real tail pool (AvgkNN, LOF, Rarity Score; precision / recall / Fréchet against its most unique
  half): ancestral sampling with w = 0 and with minority guidance (the paper's comparison, Figs. 3 / 6) and the
  DDIM pair the ``logex-lora`` / ``minority`` rows train on; the oracle's accuracy on each set; wall times;
- ``real_by_score.png``: the lowest / median / highest-scored real images per class (Fig. 2);
- ``levels_<class>.png``: target levels {0, L/2, L-1} x scales (Figs. 15-16), the first tail classes;
- ``rarity_hist.png``: AvgkNN / LOF / Rarity histograms, ancestral pair above, DDIM pair below (Figs. 3, 6);
- ``ancestral.png`` and ``ancestral.npz``: the ancestral images, plain and guided from the same noise.

Nothing here is used for a choice: the oracle sees the validation images.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import StrictConfig
from ...data import DataConfig, convert_array
from ...data.synthetic import SyntheticSet
from ...diffusion import DiffusionConfig
from ...engine import Artifact, Built, Stage
from ...engine.artifacts import load_adapted, load_classifier, oracle_pool, read_split, split_data
from ...errors import TailsynthError
from ...minority import MinorityClassifier, resolve_target
from ...minority.analysis import generation_table, real_rarity, score_correlations
from ...minority.guidance import guided_sample
from ...report.grids import labelled_rows
from ...training import predict
from ...utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device, safe_file_name
from ..registry import generator_named
from .config import MinoritySettings, class_hook
from .report import minority_sections
from .sampling import level_scale_rows, to_uint8
from .stages import condition_ids, minority_classifier, minority_scores_of, read_scores

ANCESTRAL, ANCESTRAL_GUIDED = "ancestral (w = 0)", "ancestral + minority"
DDIM, DDIM_GUIDED = "DDIM (w = 0, only LoRA)", "DDIM + minority"


class MinorityFiguresStageConfig(StrictConfig):
    minority: MinoritySettings
    n_per_class: int  # images per tail class of each synthetic set that enters the table
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


def run_minority_figures(cfg: MinorityFiguresStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    settings, fig = cfg.minority, cfg.minority.figures
    split = read_split(inputs["split"])
    names, tail = split.class_names, list(split.tail_classes)
    device = resolve_device(cfg.device)
    oracle, _ = load_classifier(inputs["oracle"].path)
    oracle.to(device)
    timings: dict[str, float] = {}

    def features(images: np.ndarray) -> np.ndarray:
        return predict(oracle, images, device)[1].astype(np.float64)

    # Fig. 10 and Fig. 2: the scored real images
    t0 = time.time()
    scores = read_scores(inputs["scores"])
    splits = list(dict.fromkeys(scores["split"].tolist()))
    parts = [split_data(split, cfg.data, s) for s in splits]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if len(labels) != len(scores["labels"]) or not (labels == scores["labels"]).all():
        raise TailsynthError(f"the minority scores ({inputs['scores'].path}) were computed on other images than the "
                             f"split's {'+'.join(splits)} images")
    rarity = real_rarity(features(images), labels)
    distances = {d: scores[d] for d in ("l2", "l1", "perceptual") if d in scores}
    correlations = score_correlations(distances, rarity, labels, names)
    rows = []
    for c in range(len(names)):
        order = np.flatnonzero(labels == c)
        order = order[np.argsort(scores[settings.distance][order], kind="stable")]
        mid = len(order) // 2
        for tag, pick in (("lowest", order[:6]), ("median", order[max(0, mid - 3):mid + 3]), ("highest", order[-6:])):
            rows.append((f"{names[c]} {tag}", images[pick]))
    atomic_write_bytes(workdir / "real_by_score.png",
                       labelled_rows(rows, f"real images by minority score ({settings.distance})"))
    timings["correlations"] = round(time.time() - t0, 1)

    # Figs. 15-16: target level x scale grids
    t0 = time.time()
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, device)
    classifier, _ = MinorityClassifier.load(inputs["minority"].path / "model", backend)
    classifier.to(device)
    levels = read_json(inputs["minority"].path / "levels.json")
    L = classifier.cfg.num_levels
    latent = backend.latent_shape(cfg.diffusion.working_size(cfg.data.image_size))

    def conditions(c: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cid = int(condition_ids(split, cond_of, np.array([c]))[0])
        cond = backend.encode_condition(class_ids=torch.full((n,), cid, dtype=torch.long, device=device)).detach()
        return cond, backend.null_condition(n).to(device).detach()

    def noise(n: int, *key: int) -> torch.Tensor:
        return torch.randn((n, *latent), generator=torch.Generator().manual_seed(_seed(fig.seed, *key))).to(device)

    for c in tail[:fig.grid_classes]:
        cond, uncond = conditions(c, fig.per_cell)
        grid = level_scale_rows(backend, classifier, cond, uncond, noise(fig.per_cell, 1, c), [0, L // 2, L - 1],
                                fig.grid_scales, settings.sampler, settings.num_steps, settings.guidance_scale,
                                _seed(fig.seed, 2, c))
        atomic_write_bytes(workdir / f"levels_{safe_file_name(names[c])}.png",
                           labelled_rows(grid, f"{names[c]}: minority guidance ({settings.sampler}, L = {L})"))
    timings["level x scale grids"] = round(time.time() - t0, 1)

    # Figs. 3, 6, Table 1: the synthetic sets
    generated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if fig.ancestral:
        t0 = time.time()
        generated.update(_ancestral_sets(settings, fig, backend, classifier, levels, names, tail, conditions, noise,
                                         cfg.n_per_class if fig.n_per_class is None else fig.n_per_class, workdir))
        timings["ancestral sampling"] = round(time.time() - t0, 1)
    for title, key in ((DDIM, "synthetic:lora"), (DDIM_GUIDED, "synthetic:minority")):
        chosen = SyntheticSet.read(inputs[key].path).select(cfg.n_per_class)
        generated[title] = chosen.load_images(names, cfg.data.image_size, cfg.data.channels)
    t0 = time.time()
    generated = {k: (convert_array(x, cfg.data.image_size, cfg.data.channels), y) for k, (x, y) in generated.items()}
    oracle_accuracy, feats = {}, {}
    for k, (x, y) in generated.items():  # one oracle pass per set: its predictions and its features
        logits, f = predict(oracle, x, device)
        oracle_accuracy[k] = float((logits.argmax(1) == y).mean())
        feats[k] = (f.astype(np.float64), y)
    pool = oracle_pool(split, cfg.data)
    keep = np.isin(pool.labels, tail)
    pool_f, pool_y = features(pool.images[keep]), pool.labels[keep]
    table = generation_table(pool_f, pool_y, feats, tail, names)
    atomic_write_bytes(workdir / "rarity_hist.png", rarity_histograms(pool_f, pool_y, feats, tail))
    timings["metrics"] = round(time.time() - t0, 1)
    holdout = read_json(inputs["minority"].path / "manifest.json").get("result", {})
    result = {"mode": settings.mode, "distance": settings.distance, "num_levels": L, "scale": settings.guidance.scale,
              "target": resolve_target(settings.guidance.target, L), "sampler": settings.sampler,
              "n_pool_tail": int(keep.sum()), "sets": list(generated), "correlations": correlations, "generation": table,
              "oracle_accuracy": oracle_accuracy,
              "classifier_holdout": {k: v for k, v in holdout.items() if k.startswith("holdout_acc") or k == "chance"},
              "stage_wall_time_s": {label: read_json(inputs[key].path / "manifest.json").get("wall_time_s")
                                    for label, key in (("minority scores", "scores"), ("minority classifier", "minority"),
                                                       ("synthesis only LoRA", "synthetic:lora"),
                                                       ("synthesis minority", "synthetic:minority"))},
              "figure_wall_time_s": timings}
    atomic_write_json(workdir / "minority.json", result)
    return {"oracle_accuracy": oracle_accuracy, **timings}


def _ancestral_sets(settings, fig, backend, classifier, levels, names, tail, conditions, noise, n: int,
                    workdir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``n`` images per tail class by ancestral sampling (CFG as the synthesis), plain and minority-guided toward
    the synthesis's target level, from the same x_T and the same per-step noise; also the grid and the npz."""
    plain = settings.guidance.model_copy(update={"scale": 0.0})
    out: dict[str, list] = {ANCESTRAL: [], ANCESTRAL_GUIDED: []}
    grid_rows = []
    n_batches = -(-n // fig.batch_size)
    for c in tail:
        for lo in range(0, n, fig.batch_size):
            b = min(fig.batch_size, n - lo)
            cond, uncond = conditions(c, b)
            x_T = noise(b, 3, c, lo)
            targets = torch.full((b,), c, dtype=torch.long)
            for title, guidance in ((ANCESTRAL, plain), (ANCESTRAL_GUIDED, settings.guidance)):
                hook = class_hook(classifier, levels, names, backend, cond, targets, guidance)
                images = guided_sample(backend, x_T, cond, uncond, hook, "ddpm", settings.num_steps,
                                       settings.guidance_scale, torch.Generator().manual_seed(_seed(fig.seed, 4, c, lo)))
                out[title].append((to_uint8(images), np.full(b, c, dtype=np.int64)))
        for title in out:
            grid_rows.append((f"{names[c]}: {title}", out[title][-n_batches][0][:fig.per_cell]))
    sets = {title: (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
            for title, parts in out.items()}
    np.savez_compressed(workdir / "ancestral.npz", plain=sets[ANCESTRAL][0], guided=sets[ANCESTRAL_GUIDED][0],
                        labels=sets[ANCESTRAL][1])
    atomic_write_bytes(workdir / "ancestral.png", labelled_rows(
        grid_rows, f"ancestral sampling, w = 0 vs minority guidance w = {settings.guidance.scale:g} (same noise)"))
    return sets


def rarity_histograms(pool_f: np.ndarray, pool_y: np.ndarray, generated: dict[str, tuple[np.ndarray, np.ndarray]],
                      tail: list[int]) -> bytes:
    """PNG: AvgkNN (k = 5), LOF (k = 20), Rarity Score (k = 5) of each generated set's images against the real
    tail images of their class; one row per pair of sets (the paper's Figs. 3, 6: plain vs guided)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ...ood.rarity import avg_knn_distance, lof_scores, rarity_score
    pairs = [p for p in ((ANCESTRAL, ANCESTRAL_GUIDED), (DDIM, DDIM_GUIDED)) if all(k in generated for k in p)]
    fig = Figure(figsize=(12, 3.2 * len(pairs)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(pairs), 3, squeeze=False)
    for row, pair in zip(axes, pairs):
        for title in pair:
            feats, labels = generated[title]
            values: dict[str, list] = {"AvgkNN (k = 5)": [], "LOF (k = 20)": [], "Rarity Score (k = 5)": []}
            for c in tail:
                g, r = feats[labels == c], pool_f[pool_y == c]
                if len(g) == 0 or len(r) <= 20:
                    continue
                values["AvgkNN (k = 5)"].append(avg_knn_distance(g, r, 5))
                values["LOF (k = 20)"].append(lof_scores(g, r, 20))
                rar = rarity_score(g, r, 5)
                values["Rarity Score (k = 5)"].append(rar[np.isfinite(rar)])
            for ax, (name, parts) in zip(row, values.items()):
                if parts:
                    ax.hist(np.concatenate(parts), bins=30, alpha=0.55, density=True, label=title)
                ax.set_title(name, fontsize=9)
        row[0].legend(fontsize=8)
    fig.suptitle("synthetic tail images vs the real tail pool, oracle features (higher = rarer)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _figures_cost(cfg: MinorityFiguresStageConfig) -> str:
    f = cfg.minority.figures
    n = cfg.n_per_class if f.n_per_class is None else f.n_per_class
    return (f"{2 * n if f.ancestral else 0} ancestral images/tail class + {f.grid_classes} level grids x "
            f"{cfg.minority.num_steps} steps")


def figures_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    sections, result = minority_sections(built[-1].artifact.path)
    return sections, {"minority": result}


MINORITY_FIGURES = Stage("minority_figures", "2", run_minority_figures,
                         "minority guidance figures: score vs rarity, level grids, ancestral vs guided (report only)",
                         cost=_figures_cost, report=figures_report)


def minority_figures(graph) -> Artifact | None:
    """The figures stage, when the experiment has an oracle and ``synthesis.params.minority.figures.enabled``
    (else None); it needs the only-LoRA and the minority-guided synthetic sets."""
    if graph.config.oracle is None:
        return None
    generator = generator_named("minority")
    settings = generator.params(graph.synthesis)
    if not settings.figures.enabled:
        return None
    inputs = {"split": graph.split(), "base": graph.base_diffusion(), "lora": graph.lora(),
              "scores": minority_scores_of(graph, settings), "minority": minority_classifier(graph, settings),
              "oracle": graph.oracle(), "synthetic:lora": graph.synthetic(generator_named("lora")),
              "synthetic:minority": graph.synthetic(generator)}
    cfg = MinorityFiguresStageConfig(minority=settings, n_per_class=graph.synthesis.n_per_class,
                                     diffusion=graph.diffusion, data=graph.config.data, device=graph.config.device)
    return graph.run(MINORITY_FIGURES, cfg, inputs, settings.figures.seed, "minority figures")
