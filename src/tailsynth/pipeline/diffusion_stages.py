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

import csv
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import StrictConfig, to_dict
from ..diffusion import (DenoiserTrainConfig, LoraAdaptConfig, PixelBackend, SDBackend, adapt_lora, load_lora,
                         train_denoiser)
from ..errors import TailsynthError
from ..utils import (atomic_write_bytes, atomic_write_json, atomic_write_text, derive_seed, progress_enabled, read_json,
                     resolve_device)
from .experiment import DataConfig
from .runner import Stage
from .stages import load_classifier, read_split, split_data
from .store import Artifact
from ..diffusion.guidance import ClassifierGuide
from .synthesis_methods import SYNTHESIS, SynthesisConfig


class DiffusionConfig(StrictConfig):
    """The generator: ``pixel`` (offline, trained here) or ``sd`` (a local Stable Diffusion 1.x folder)."""

    backend: Literal["pixel", "sd"] = "pixel"
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


class DiffusionStageConfig(StrictConfig):
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


class SynthStageConfig(StrictConfig):
    method: str
    synthesis: SynthesisConfig
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


def _images_of(split, data: DataConfig, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Training images of ``classes`` and their positions in ``classes`` (condition ids)."""
    train = split_data(split, data, "train")
    keep = np.isin(train.labels, classes)
    index = {c: i for i, c in enumerate(classes)}
    return train.images[keep], np.array([index[int(y)] for y in train.labels[keep]], dtype=np.int64)


def run_train_diffusion(cfg: DiffusionStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    d = cfg.diffusion
    if d.backend == "sd":
        if not d.sd_path or not Path(d.sd_path).is_dir():
            raise TailsynthError(f"diffusion.sd_path must be a local Stable Diffusion folder, got {d.sd_path!r}")
        atomic_write_json(workdir / "base.json", {"backend": "sd", "path": str(Path(d.sd_path).resolve())})
        return {"backend": "sd"}
    head = list(split.head_classes)
    images, cond_ids = _images_of(split, cfg.data, head)
    pixel = dict(d.pixel)
    if pixel.get("data_mean") == "auto":
        pixel["data_mean"] = [float(m) for m in images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64) / 255.0]
    torch.manual_seed(d.seed)
    backend = PixelBackend({**pixel, "num_classes": len(head), "class_names": [split.class_names[c] for c in head],
                            "image_size": cfg.data.image_size, "in_channels": cfg.data.channels}, seed=d.seed)
    result = train_denoiser(backend, images, cond_ids, d.base, workdir / "train", resolve_device(cfg.device), d.seed)
    backend.save_pretrained(workdir / "model")
    atomic_write_json(workdir / "base.json", {"backend": "pixel", "path": "model"})
    losses = result.losses[-100:]
    return {"steps": result.step, "final_loss": float(np.mean(losses)) if losses else None,
            "n_images": int(len(images))}


def load_base(artifact_dir: Path, d: DiffusionConfig, class_names: list[str], device: torch.device):
    """The base backend of a ``train_diffusion`` artifact (pixel weights, or the SD folder it names)."""
    base = read_json(Path(artifact_dir) / "base.json")
    if base["backend"] == "sd":
        backend = SDBackend({"path": base["path"], "class_names": [], "prompt_template": d.prompt_template,
                             "dtype": d.dtype})
    else:
        backend = PixelBackend.from_pretrained(Path(artifact_dir) / base["path"])
    return backend.to(device)


def run_adapt_lora(cfg: DiffusionStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    backend = load_base(inputs["base"].path, cfg.diffusion, split.class_names, device)
    tail = list(split.tail_classes)
    if not tail:
        raise TailsynthError("LoRA adaptation needs tail classes; the benchmark has none")
    images, labels = _images_of(split, cfg.data, tail)
    if cfg.diffusion.backend == "sd":
        from ..data import convert_array
        images = convert_array(images, cfg.diffusion.sd_resolution, 3)
    result = adapt_lora(backend, images, labels, [split.class_names[c] for c in tail], cfg.diffusion.lora,
                        workdir / "train", device, cfg.diffusion.seed)
    losses = result.train.losses[-100:]
    return {"steps": result.train.step, "final_loss": float(np.mean(losses)) if losses else None,
            "n_images": int(len(images)), "lora_dir": "train/lora"}


def load_adapted(base_dir: Path, lora_dir: Path, d: DiffusionConfig, split, device: torch.device):
    backend = load_base(base_dir, d, split.class_names, device)
    ids = load_lora(backend, Path(lora_dir) / "train" / "lora")
    backend.to(device).eval()
    return backend, dict(zip(split.tail_classes, ids))


def _png(image01: torch.Tensor) -> bytes:
    arr = (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def run_synthesize(cfg: SynthStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """``n_per_class`` images per tail class as PNGs + ``synthetic.csv`` (file, class, method, seed,
    aux-classifier confidence). Shards finished before an interruption are not redone."""
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    s = cfg.synthesis
    backend, cond_of = load_adapted(inputs["base"].path, inputs["lora"].path, cfg.diffusion, split, device)
    aux, card = load_classifier(inputs["aux"].path)
    guide = ClassifierGuide(aux.to(device), card["image_size"], card["in_channels"]).to(device)
    method = SYNTHESIS.get(cfg.method)
    size = cfg.diffusion.sd_resolution if cfg.diffusion.backend == "sd" else cfg.data.image_size
    latent = backend.latent_shape(size)
    shard_dir = workdir / "shards"
    shard_dir.mkdir(exist_ok=True)
    reused = reuse_shards(cfg, inputs, workdir)
    n_shards = -(-s.n_per_class // s.shard_size)
    done = sum(len(read_json(m)) for m in shard_dir.glob("*.json"))
    bar = tqdm(total=s.n_per_class * len(split.tail_classes), initial=done, desc=f"synthesis {cfg.method}",
               unit="img", disable=not progress_enabled())
    for c in split.tail_classes:
        name = split.class_names[c]
        for k in range(n_shards):
            marker = shard_dir / f"{c:04d}_{k:04d}.json"
            if marker.is_file():
                continue
            n = _shard_size(s.n_per_class, s.shard_size, k)
            seed = derive_seed(s.seed, c, k)
            generator = torch.Generator().manual_seed(seed)
            x_T = torch.randn((n, *latent), generator=generator).to(device)
            targets = torch.full((n,), c, dtype=torch.long, device=device)
            cond = backend.encode_condition(class_ids=torch.full((n,), cond_of[c], dtype=torch.long, device=device))
            uncond = backend.null_condition(n).to(device)
            images, confidence = method(backend, guide, targets, cond, uncond, x_T, s, s.params.get(cfg.method, {}),
                                       generator)
            rows = []
            for i in range(n):
                index = k * s.shard_size + i
                rel = f"images/{_safe(name)}/{index:05d}.png"
                atomic_write_bytes(workdir / rel, _png(images[i]))
                rows.append([rel, name, cfg.method, seed, round(float(confidence[i]), 6)])
            atomic_write_json(marker, rows)
            bar.update(n)
            bar.set_postfix(mean_conf=f"{float(confidence.float().mean()):.3f}")
    bar.close()
    rows = []
    for marker in sorted(shard_dir.glob("*.json")):
        rows += read_json(marker)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "class", "method", "seed", "aux_confidence"])
    writer.writerows(rows)
    atomic_write_text(workdir / "synthetic.csv", buffer.getvalue())
    conf = np.array([r[4] for r in rows])
    return {"n_images": len(rows), "mean_aux_confidence": float(conf.mean()) if len(conf) else None,
            "reused_shards": reused}


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
                atomic_write_bytes(workdir / row[0], (manifest.parent / row[0]).read_bytes())
            atomic_write_json(target, rows)
            copied += 1
    return copied


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def read_synthetic(artifact_dir: Path, class_names: list[str], data: DataConfig,
                   per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images (uint8 at the classifier's size) and labels from a ``synthesize`` artifact.

    ``per_class`` keeps the first that many images of each class (file order = shard order, and shards are
    seeded by (seed, class, shard), so the first 50 of a 200-image set are the images a 50-image set holds);
    None keeps them all."""
    from ..data.decode import decode_file
    path = Path(artifact_dir) / "synthetic.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted({r["class"] for r in rows} - set(index))
    if unknown:
        raise TailsynthError(f"{path}: unknown classes {unknown}; known: {class_names}")
    if per_class is not None:
        by_class: dict[str, list[dict]] = {}
        for r in rows:
            by_class.setdefault(r["class"], []).append(r)
        short = {c: len(rs) for c, rs in by_class.items() if len(rs) < per_class}
        if short:
            raise TailsynthError(f"{path}: asked for {per_class} synthetic images per class, but it holds only "
                                 f"{short}")
        rows = [r for rs in by_class.values() for r in rs[:per_class]]
    images = np.stack([decode_file(Path(artifact_dir) / r["file"], data.image_size, data.channels) for r in rows]) \
        if rows else np.zeros((0, data.image_size, data.image_size, data.channels), np.uint8)
    return images, np.array([index[r["class"]] for r in rows], dtype=np.int64)


TRAIN_DIFFUSION = Stage("train_diffusion", "1", run_train_diffusion, "base denoiser on the head classes")
ADAPT_LORA = Stage("adapt_lora", "1", run_adapt_lora, "LoRA (+ tail tokens) on the tail images")
SYNTHESIZE = Stage("synthesize", "2", run_synthesize, "synthetic tail images")
