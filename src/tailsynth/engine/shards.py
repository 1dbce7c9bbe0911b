"""The shard protocol of every stage that generates images (synthesis, decoded outliers): seeded, resumable,
dealt over the ranks of a multi-process run; the result is a :class:`~tailsynth.data.synthetic.SyntheticSet`."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import distributed
from ..data.synthetic import SyntheticSet
from ..utils import atomic_write_bytes, atomic_write_json, derive_seed, progress_enabled, read_json, safe_file_name


def _png(image01: torch.Tensor) -> bytes:
    arr = (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


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
            n = shard_size_of(n_class, shard_size, k)
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


def shard_size_of(n_per_class: int, shard_size: int, k: int) -> int:
    """Images in shard ``k`` of a class of ``n_per_class`` images dealt in shards of ``shard_size``."""
    return min(shard_size, n_per_class - k * shard_size)
