"""Diffusion stages (LoGex steps 1-3): base denoiser on the head classes, LoRA on the tail, synthesis.

- ``train_diffusion``: the pixel backend trained on the HEAD images of the long-tailed train split only
  (the analog of a general-purpose model that never saw the tail). With the ``sd`` backend the pretrained
  Stable Diffusion folder is the base and this stage only records its path.
- ``adapt_lora``: LoRA on the attention projections (+ new tail class tokens for the pixel backend),
  trained on the tail training images only (LoGex §3, step 2).
- ``synthesize``: N images per tail class, sharded; each shard has its own seeded generator and is
  written once, so an interrupted synthesis resumes with exactly the files an uninterrupted one writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed
from ..config import StrictConfig, to_dict
from ..data import DataConfig
from ..diffusion import BACKENDS, DiffusionConfig, PixelBackend, adapt_lora, train_denoiser
from ..diffusion.guidance import ClassifierGuide
from ..data.synthetic import SyntheticSet
from ..engine import Artifact, Built, Stage
from ..engine.artifacts import images_of, load_adapted, load_base, load_classifier, read_split
from ..engine.shards import shard_size_of, write_shards
from ..errors import TailsynthError
from ..methods import SynthesisConfig, generator_named
from ..utils import atomic_write_bytes, atomic_write_json, read_json, resolve_device


class DiffusionStageConfig(StrictConfig):
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


class SynthStageConfig(StrictConfig):
    fingerprint_neutral: ClassVar[tuple[str, ...]] = ("generator_version",)

    method: str  # the synthetic generator's name (tailsynth.methods.generator_named)
    synthesis: SynthesisConfig
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"
    generator_version: str = ""  # the generator's ``version`` (its code's, beside the stage's)


def run_train_diffusion(cfg: DiffusionStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    d = cfg.diffusion
    main = distributed.world()[0] == 0  # data-parallel: every rank trains, rank 0 writes the artifact
    if not BACKENDS.get(d.backend).trains_base:  # a pretrained folder: record where it is
        if not main:
            return {}
        if not d.sd_path or not Path(d.sd_path).is_dir():
            raise TailsynthError(f"diffusion.sd_path must be a local Stable Diffusion folder, got {d.sd_path!r}")
        atomic_write_json(workdir / "base.json", {"backend": d.backend, "path": str(Path(d.sd_path).resolve())})
        return {"backend": d.backend}
    head = list(split.head_classes)
    images, cond_ids = images_of(split, cfg.data, head)
    pixel = dict(d.pixel)
    if pixel.get("data_mean") == "auto":
        pixel["data_mean"] = [float(m) for m in images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64) / 255.0]
    torch.manual_seed(d.seed)
    backend = PixelBackend({**pixel, "num_classes": len(head), "class_names": [split.class_names[c] for c in head],
                            "image_size": cfg.data.image_size, "in_channels": cfg.data.channels}, seed=d.seed)
    result = train_denoiser(backend, images, cond_ids, d.base, workdir / "train", resolve_device(cfg.device), d.seed)
    if not main:
        return {}
    backend.save_pretrained(workdir / "model")
    atomic_write_json(workdir / "base.json", {"backend": "pixel", "path": "model"})
    losses = result.losses[-100:]
    return {"steps": result.step, "final_loss": float(np.mean(losses)) if losses else None,
            "n_images": int(len(images))}


def run_adapt_lora(cfg: DiffusionStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    backend = load_base(inputs["base"].path, cfg.diffusion, device)
    tail = list(split.tail_classes)
    if not tail:
        raise TailsynthError("LoRA adaptation needs tail classes; the benchmark has none")
    images, labels = images_of(split, cfg.data, tail)
    size = cfg.diffusion.working_size(cfg.data.image_size)
    if size != cfg.data.image_size:
        from ..data import convert_array
        images = convert_array(images, size, 3)
    result = adapt_lora(backend, images, labels, [split.class_names[c] for c in tail], cfg.diffusion.lora,
                        workdir / "train", device, cfg.diffusion.seed)
    if distributed.world()[0] != 0:
        return {}  # data-parallel: rank 0 writes the artifact
    losses = result.train.losses[-100:]
    return {"steps": result.train.step, "final_loss": float(np.mean(losses)) if losses else None,
            "n_images": int(len(images)), "lora_dir": "train/lora"}


def aux_keys(inputs: dict) -> list[str]:
    """The auxiliary classifiers among a synthesis stage's inputs, in ensemble order: aux, aux_1, aux_2, ..."""
    extra = sorted((k for k in inputs if k.startswith("aux_") and k[4:].isdigit()), key=lambda k: int(k[4:]))
    return ["aux"] + extra if "aux" in inputs else extra


def aux_guide(folders: list[Path], device: torch.device, resize: str) -> ClassifierGuide:
    """The auxiliary classifier(s) saved in ``folders`` as one guide (an ensemble when several)."""
    members = [load_classifier(folder) for folder in folders]
    card = members[0][1]
    return ClassifierGuide([m.to(device) for m, _ in members], card["image_size"], card["in_channels"],
                           mode=resize).to(device)


def run_synthesize(cfg: SynthStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """``n_per_class`` images per tail class as PNGs + ``synthetic.csv`` (a :class:`SyntheticSet`: file, class,
    role, method, seed, score = aux-classifier confidence). Shards finished before an interruption are not
    redone."""
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    s = cfg.synthesis
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, device)
    guide = aux_guide([inputs[key].path for key in aux_keys(inputs)], device, s.guide_resize)
    method = generator_named(cfg.method)
    params = method.params(s)
    prepared = method.prepare(inputs, backend, device, params, guide=guide, data=cfg.data)
    size = cfg.diffusion.working_size(cfg.data.image_size)
    latent = backend.latent_shape(size)
    shard_dir = workdir / "shards"
    rank, world_size = distributed.world()
    if rank == 0:
        shard_dir.mkdir(exist_ok=True)
        reused = reuse_shards(cfg, inputs, workdir)
    distributed.barrier()  # the other ranks start once the folder and the reused shards are in place
    jobs = [(c, split.class_names[c], s.n_per_class) for c in split.tail_classes]

    def make(c: int, k: int, x_T: torch.Tensor, generator: torch.Generator):
        n = len(x_T)
        targets = torch.full((n,), c, dtype=torch.long, device=device)
        cond = backend.encode_condition(class_ids=torch.full((n,), cond_of[c], dtype=torch.long, device=device))
        uncond = backend.null_condition(n).to(device)
        return method.generate(backend, guide, targets, cond, uncond, x_T, s, params, generator, prepared)

    rows = write_shards(workdir, jobs, make, latent, s.shard_size, s.seed, cfg.method, "tail", device,
                        f"synthesis {cfg.method}", "mean_conf")
    if rows is None:
        return {}
    conf = np.array([r["score"] for r in rows])
    return {"n_images": len(rows), "mean_aux_confidence": float(conf.mean()) if len(conf) else None,
            "reused_shards": reused}


def reuse_shards(cfg: SynthStageConfig, inputs: dict[str, Artifact], workdir: Path) -> int:
    """Copy into ``workdir`` the shards of finished sibling syntheses that differ from this one only in
    ``n_per_class`` (a 100-image run made before a 25/50/100/200 sweep, say); returns how many were copied.

    A shard is seeded by (seed, class, shard index) and its images do not depend on ``n_per_class``, so a
    sibling's shard of the same size holds exactly the images this synthesis would make (a shard whose size
    differs, the last one of the smaller run, is made anew)."""
    def without_count(config: dict) -> dict:
        return {**config, "synthesis": {**config["synthesis"], "n_per_class": None}}

    mine = without_count(to_dict(cfg))
    upstream = {name: art.fingerprint for name, art in inputs.items()}
    s = cfg.synthesis
    copied = 0
    for manifest in sorted(workdir.parent.glob("*/manifest.json")):
        other = read_json(manifest)
        if (other.get("version") != SYNTHESIZE.version or without_count(other["config"]) != mine
                or {k: v["fingerprint"] for k, v in other["inputs"].items()} != upstream):
            continue
        their_n = other["config"]["synthesis"]["n_per_class"]
        for marker in sorted((manifest.parent / "shards").glob("*.json")):
            k = int(marker.stem.split("_")[1])
            target = workdir / "shards" / marker.name
            if target.exists() or shard_size_of(their_n, s.shard_size, k) != shard_size_of(s.n_per_class, s.shard_size, k):
                continue
            rows = read_json(marker)
            for row in rows:
                atomic_write_bytes(workdir / row["file"], (manifest.parent / row["file"]).read_bytes())
            atomic_write_json(target, rows)
            copied += 1
    return copied


def _base_cost(cfg: DiffusionStageConfig) -> str:
    d = cfg.diffusion
    return (f"{d.base.steps} steps x batch {d.base.batch_size}" if BACKENDS.get(d.backend).trains_base
            else f"none (pretrained {d.backend})")


def _lora_cost(cfg: DiffusionStageConfig) -> str:
    return f"{cfg.diffusion.lora.train.steps} steps x batch {cfg.diffusion.lora.train.batch_size}"


def _synthesis_cost(cfg: SynthStageConfig) -> str:
    steps = generator_named(cfg.method).settings(cfg.synthesis)["DDIM steps"]
    return f"{cfg.synthesis.n_per_class} images/tail class x {steps} DDIM steps ({cfg.method})"


def synthesis_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    """The settings each synthetic set was made with and, per tail class, its images' auxiliary confidence (the
    main rows' images: the first ``synthesis.n_per_class`` per class)."""
    from ..report.quality import settings_table, synthetic_summary, synthetic_table
    n_default = context.config.synthesis.n_per_class
    settings, summary = {}, {}
    for b in built:
        name = b.config.method
        settings[name] = generator_named(name).settings(b.config.synthesis)
        rows = SyntheticSet.read(b.artifact.path).select(n_default).rows
        summary[name] = synthetic_summary(rows, settings[name].get("threshold"))
    return [settings_table(settings), synthetic_table(summary)], {"synthetic_sets": {"settings": settings,
                                                                                     "per_class": summary}}


# sharded: with several processes every rank trains its slice of each batch (data-parallel, tailsynth.diffusion.train)
TRAIN_DIFFUSION = Stage("train_diffusion", "1", run_train_diffusion, "base denoiser on the head classes",
                        sharded=True, cost=_base_cost)
ADAPT_LORA = Stage("adapt_lora", "1", run_adapt_lora, "LoRA (+ tail tokens) on the tail images", sharded=True,
                   cost=_lora_cost)
SYNTHESIZE = Stage("synthesize", "3", run_synthesize, "synthetic tail images (a SyntheticSet)", sharded=True,
                   cost=_synthesis_cost, report=synthesis_report, synthetic_set=True)
