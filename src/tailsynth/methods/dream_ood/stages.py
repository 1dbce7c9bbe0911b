"""Outlier stages of Dream-OOD (Du et al. 2023) and BOOD (Liao et al. 2025), after the encoder (stage 1: a
classifier with the ``anchor_cosine`` head, trained like any other on the in-distribution classes):

- ``imagine_outliers`` (stage 2): embeddings W f(x) of the in-distribution training images, then per class
  Dream-OOD's low-likelihood samples or BOOD's boundary-crossing features, rescaled to the norm of the class
  anchor (``outliers.npz``: vectors, source class, score), with a PCA plot;
- ``decode_outliers`` (stage 3): every outlier vector replaces its class's conditioning embedding in the base
  diffusion model (DDIM, CFG), written through the synthesis shard protocol (sharded, seeded, resumable) as a
  :class:`~tailsynth.data.synthetic.SyntheticSet` whose rows carry the role ``outlier``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...config import StrictConfig
from ...data import DataConfig
from ...diffusion import DiffusionConfig, sample_images
from ...engine import Artifact, Built, Stage
from ...engine.artifacts import load_base, load_classifier, read_split, split_data
from ...engine.shards import write_shards
from ...errors import TailsynthError
from ...models.heads import AnchorCosineHead
from ...outliers import BoodConfig, DecodeConfig, DreamOodSamplingConfig, boundary_outliers, low_likelihood_outliers
from ...training.augment import to_float
from ...utils import atomic_write_bytes, atomic_write_json, derive_seed, resolve_device
from .report import outlier_sections, pca_figure

OUTLIERS_FILE = "outliers.npz"


class OutlierStageConfig(StrictConfig):
    """Stage 2: ``kind`` dream-ood (``dream_ood`` settings) or bood (``bood`` settings)."""

    kind: Literal["dream-ood", "bood"]
    dream_ood: DreamOodSamplingConfig = DreamOodSamplingConfig()
    bood: BoodConfig = BoodConfig()
    data: DataConfig
    device: str = "auto"


class DecodeStageConfig(StrictConfig):
    kind: str  # the row family: dream-ood or bood (the SyntheticSet's method column)
    decode: DecodeConfig
    diffusion: DiffusionConfig
    data: DataConfig
    device: str = "auto"


@torch.no_grad()
def id_embeddings(model, images: np.ndarray, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """h = W f(x) (N, D) of the encoder (eval mode, unaugmented images)."""
    head = model.head
    if not isinstance(head, AnchorCosineHead):
        raise TailsynthError("the outlier stages need an encoder with the anchor_cosine head (method vmf-encoder)")
    model.eval()
    out = [head.embed(model.forward_features(to_float(torch.from_numpy(images[i:i + batch_size])).to(device))).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, head.dim)


def run_imagine_outliers(cfg: OutlierStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    model, card = load_classifier(inputs["encoder"].path)
    model.to(device)
    head: AnchorCosineHead = model.head
    train = split_data(split, cfg.data, "train")
    known = sorted(int(c) for c in torch.nonzero(head.present.cpu()).view(-1))
    keep = np.isin(train.labels, known)
    h = id_embeddings(model, train.images[keep], device).float()
    y = torch.as_tensor(train.labels[keep], dtype=torch.long)
    head.cpu()
    vectors, classes, scores, summary = [], [], [], {}
    for c in known:
        name = split.class_names[c]
        hc = h[y == c]
        generator = torch.Generator().manual_seed(derive_seed(cfg.dream_ood.seed, c))
        if cfg.kind == "dream-ood":
            unit, score = low_likelihood_outliers(hc, cfg.dream_ood, generator, name)
        else:
            unit, score = boundary_outliers(hc, y[y == c], head.logits_of_embedding, cfg.bood, name)
        anchor = head.anchors[c]
        with torch.no_grad():
            pred = head.logits_of_embedding(unit).argmax(1)
            id_cos = F.cosine_similarity(hc, anchor[None], dim=1)
            out_cos = F.cosine_similarity(unit, anchor[None], dim=1)
        summary[name] = {"n": len(unit), "id_cos_to_anchor": float(id_cos.mean()),
                         "outlier_cos_to_anchor": float(out_cos.mean()),
                         "outliers_still_own_class": float((pred == c).float().mean()),
                         "mean_score": float(score.float().mean())}
        vectors.append(unit * anchor.norm())
        classes.append(torch.full((len(unit),), c))
        scores.append(score.float())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, vectors=torch.cat(vectors).numpy().astype(np.float32),
                        classes=torch.cat(classes).numpy().astype(np.int64),
                        scores=torch.cat(scores).numpy().astype(np.float32),
                        id_vectors=F.normalize(h, dim=1).numpy().astype(np.float32),
                        id_classes=y.numpy().astype(np.int64), anchors=head.anchors.numpy().astype(np.float32))
    atomic_write_bytes(workdir / OUTLIERS_FILE, buffer.getvalue())
    atomic_write_json(workdir / "summary.json", summary)
    ids = F.normalize(h, dim=1).numpy()
    atomic_write_bytes(workdir / "pca.png", pca_figure(ids, y.numpy(), {"outliers": (torch.cat(vectors).numpy(),
                                                                                     torch.cat(classes).numpy())},
                                                       split.class_names, f"{cfg.kind}: ID embeddings (dots), outliers (x)"))
    return {"per_class": summary}


def read_outliers(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path) / OUTLIERS_FILE) as data:
        return {k: data[k] for k in data.files}


def run_decode_outliers(cfg: DecodeStageConfig, inputs: dict[str, Artifact], workdir: Path) -> dict[str, Any]:
    """One image per outlier vector, through the base diffusion model (no LoRA: the outliers are built around the
    in-distribution classes it was trained on)."""
    split = read_split(inputs["split"])
    device = resolve_device(cfg.device)
    backend = load_base(inputs["base"].path, cfg.diffusion, device)
    head = list(split.head_classes)
    if not backend.trains_base:  # Stable Diffusion: the ID classes are names in the prompt
        backend.add_classes([split.class_names[c] for c in head])
    backend.eval()
    cond_of = {c: i for i, c in enumerate(head)}  # base condition ids: positions in the head list
    data = read_outliers(inputs["outliers"].path)
    vectors = torch.as_tensor(data["vectors"])
    by_class = {c: vectors[data["classes"] == c] for c in sorted(set(data["classes"].tolist()))}
    unknown = [c for c in by_class if c not in cond_of]
    if unknown:
        raise TailsynthError(f"outliers of classes {unknown} that the base diffusion model was not trained on")
    d = cfg.decode
    size = cfg.diffusion.working_size(cfg.data.image_size)
    latent = backend.latent_shape(size)

    def make(c: int, k: int, x_T: torch.Tensor, generator: torch.Generator):
        v = by_class[c][k * d.shard_size:k * d.shard_size + len(x_T)].to(device)
        ids = torch.full((len(x_T),), cond_of[c], dtype=torch.long, device=device)
        with torch.no_grad():
            cond = backend.condition_from_anchor(v, ids)
        images = sample_images(backend, x_T, cond, backend.null_condition(len(x_T)).to(device), d.num_steps,
                               d.guidance_scale)
        return images, torch.zeros(len(x_T))

    jobs = [(c, split.class_names[c], len(v)) for c, v in by_class.items()]
    write_shards(workdir, jobs, make, latent, d.shard_size, d.seed, cfg.kind, "outlier", device,
                 f"decode {cfg.kind} outliers")
    return {"n_images": int(sum(len(v) for v in by_class.values()))}


def decoded_report(built: list[Built], context) -> tuple[list, dict[str, Any]]:
    """Per outlier set (Dream-OOD, BOOD): the embeddings' statistics and PCA plot, and the decoded images."""
    sets = {b.config.kind: (b.inputs["outliers"], b.artifact) for b in built}
    return outlier_sections(sets, context.split, context.config.data)


IMAGINE_OUTLIERS = Stage("imagine_outliers", "2", run_imagine_outliers,
                         "outlier embeddings in the conditioning space (Dream-OOD / BOOD stage 2)")
DECODE_OUTLIERS = Stage("decode_outliers", "1", run_decode_outliers,
                        "outlier images decoded by the base diffusion model (Dream-OOD / BOOD stage 3)", sharded=True,
                        report=decoded_report)


# --- requests (the graph is the one the pipeline hands the method) ------------------------------------------------
def outlier_embeddings(graph, kind: str, encoder: Artifact, settings: dict) -> Artifact:
    """Stage 2 of Dream-OOD / BOOD on ``encoder``'s embeddings (``settings``: dream_ood= or bood= configs)."""
    cfg = OutlierStageConfig(kind=kind, data=graph.config.data, device=graph.config.device, **settings)
    return graph.run(IMAGINE_OUTLIERS, cfg, {"split": graph.split(), "encoder": encoder}, None,
                     f"{kind} outlier embeddings")


def outlier_images(graph, kind: str, embeddings: Artifact, decode: DecodeConfig) -> Artifact:
    """Stage 3: the outlier vectors decoded by the base diffusion model."""
    cfg = DecodeStageConfig(kind=kind, decode=decode, diffusion=graph.diffusion, data=graph.config.data,
                            device=graph.config.device)
    return graph.run(DECODE_OUTLIERS, cfg, {"split": graph.split(), "base": graph.base_diffusion(),
                                            "outliers": embeddings}, decode.seed, f"{kind} outlier images")
