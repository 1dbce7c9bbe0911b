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

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import field_validator
from tqdm.auto import tqdm

from .. import distributed
from ..config import StrictConfig, to_dict
from ..data.synthetic import SyntheticSet
from ..diffusion import BACKENDS, DenoiserTrainConfig, LoraAdaptConfig, PixelBackend, adapt_lora, train_denoiser
from ..diffusion.guidance import ClassifierGuide
from ..errors import TailsynthError
from ..methods import SynthesisConfig, generator_named
from ..utils import (atomic_write_bytes, atomic_write_json, derive_seed, progress_enabled, read_json, resolve_device,
                     safe_file_name)
from .artifacts import images_of, load_adapted, load_base, load_classifier, read_split
from .experiment import DataConfig
from .runner import Stage
from .store import Artifact


class DiffusionConfig(StrictConfig):
    """The generator: a registered backend -- ``pixel`` (offline, trained here) or ``sd`` (a local Stable
    Diffusion 1.x folder)."""

    backend: str = "pixel"
    # PixelBackendConfig fields (size/channels/classes come from the data); data_mean: auto centres the data
    # on the per-channel mean of the base model's training images (see diffusion/pixel.py)
    pixel: dict[str, Any] = {}
    sd_path: str | None = None
    sd_resolution: int = 512  # SD generates (and LoRA trains) at this size; images are resized to the classifier's
    prompt_template: str = "A histopathological slide from a patient with {class_name}"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    base: DenoiserTrainConfig = DenoiserTrainConfig()
    lora: LoraAdaptConfig = LoraAdaptConfig()
    seed: int = 0

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        BACKENDS.get(name)  # an unknown name lists the registered backends
        return name

    def working_size(self, image_size: int) -> int:
        """Side of the images the backend generates and adapts on."""
        return BACKENDS.get(self.backend).working_size(image_size, self.sd_resolution)


class DiffusionStageConfig(StrictConfig):
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


class SynthStageConfig(StrictConfig):
    method: str  # the synthetic generator's name (tailsynth.methods.generator_named)
    synthesis: SynthesisConfig
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


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


def _png(image01: torch.Tensor) -> bytes:
    arr = (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


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
    prepared = method.prepare(inputs, backend, device, params)
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


def write_shards(workdir: Path, jobs, make, latent: tuple[int, ...], shard_size: int, seed: int, method: str,
                 role: str, device: torch.device, desc: str, score_name: str = "score") -> list[dict] | None:
    """The synthesis shard protocol, shared by every generating stage: ``jobs`` = [(class index, class name,
    images of that class)]; each class's images come in shards of ``shard_size``, shard k of class c from its own
    generator seeded by (seed, c, k) that first draws x_T, then is handed to ``make(c, k, x_T, generator) ->
    (images in [0, 1], per-image scores)``. A shard writes its PNGs, then a marker ``shards/CCCC_KKKK.json``
    (its rows); a marked shard is never redone, so an interrupted stage resumes with exactly the files an
    uninterrupted one writes. With several processes the shards are dealt round-robin over the ranks; rank 0
    writes ``synthetic.csv`` (a :class:`SyntheticSet`) once every rank is done and returns its rows (other ranks:
    None)."""
    shard_dir = workdir / "shards"
    shard_dir.mkdir(exist_ok=True)
    rank, world_size = distributed.world()
    done = sum(len(read_json(m)) for m in shard_dir.glob("*.json"))
    bar = tqdm(total=sum(n for _, _, n in jobs), initial=done, desc=desc, unit="img", disable=not progress_enabled())
    position = 0
    for c, name, n_class in jobs:
        for k in range(-(-n_class // shard_size)):
            marker = shard_dir / f"{c:04d}_{k:04d}.json"
            mine = position % world_size == rank
            position += 1
            if marker.is_file() or not mine:  # done, or another rank's
                continue
            n = _shard_size(n_class, shard_size, k)
            shard_seed = derive_seed(seed, c, k)
            generator = torch.Generator().manual_seed(shard_seed)
            x_T = torch.randn((n, *latent), generator=generator).to(device)
            images, scores = make(c, k, x_T, generator)
            rows = []
            for i in range(n):
                index = k * shard_size + i
                rel = f"images/{safe_file_name(name)}/{index:05d}.png"
                atomic_write_bytes(workdir / rel, _png(images[i]))
                rows.append({"file": rel, "class": name, "role": role, "method": method, "seed": shard_seed,
                             "score": round(float(scores[i]), 6)})
            atomic_write_json(marker, rows)
            bar.update(n)
            bar.set_postfix({score_name: f"{float(scores.float().mean()):.3f}"})
    bar.close()
    distributed.barrier()  # every rank's shards are written
    if rank != 0:
        return None
    rows = []
    for marker in sorted(shard_dir.glob("*.json")):
        rows += read_json(marker)
    SyntheticSet(workdir, rows).write()
    return rows


def _shard_size(n_per_class: int, shard_size: int, k: int) -> int:
    return min(shard_size, n_per_class - k * shard_size)


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
            if target.exists() or _shard_size(their_n, s.shard_size, k) != _shard_size(s.n_per_class, s.shard_size, k):
                continue
            rows = read_json(marker)
            for row in rows:
                atomic_write_bytes(workdir / row["file"], (manifest.parent / row["file"]).read_bytes())
            atomic_write_json(target, rows)
            copied += 1
    return copied


# sharded: with several processes every rank trains its slice of each batch (data-parallel, tailsynth.diffusion.train)
TRAIN_DIFFUSION = Stage("train_diffusion", "1", run_train_diffusion, "base denoiser on the head classes",
                        sharded=True)
ADAPT_LORA = Stage("adapt_lora", "1", run_adapt_lora, "LoRA (+ tail tokens) on the tail images", sharded=True)
SYNTHESIZE = Stage("synthesize", "3", run_synthesize, "synthetic tail images (a SyntheticSet)", sharded=True)
