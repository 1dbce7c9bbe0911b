"""Dream-OOD (Du et al., NeurIPS 2023, "Dream the Impossible: Outlier Imagination with Diffusion Models"),
four stages, each a cached artifact; the tail-detection protocol of LoGex §4.1.

1. ``vmf-encoder``: a classifier whose pooled features are projected to the diffusion model's conditioning
   width, logits = cos(W f(x), a_c) / tau (tau 0.1) with fixed anchors a_c = the class's conditioning
   embedding (:class:`~tailsynth.models.heads.AnchorCosineHead`; pixel backend: the class's learned tokens,
   concatenated; Stable Diffusion: the CLIP token-embedding row of the class name), CE on the
   in-distribution (head) classes only.
2. ``imagine_outliers``: low-likelihood sampling around each class's boundary
   (:mod:`tailsynth.outliers.dream_ood`), rescaled to the anchor's norm.
3. ``decode_outliers``: each outlier vector replaces the class's conditioning embedding in the base
   diffusion model (head-only, no LoRA), DDIM with CFG; images with role ``outlier``.
4. This method's classifier: a head-only network (tail logits absent) trained from scratch with the
   experiment's recipe on L = CE(ID) + w * CE(MLP(logsumexp(logits)), in/out), MLP 1 -> 512 -> 2 (the
   official code; w = 1 for ImageNet-100, 2.5 for CIFAR-100). As in the official loop, every step joins a batch
   of in-distribution images with as many outliers, drawn from a cycle over the outlier set that is reshuffled
   when it runs out (:class:`~tailsynth.training.batches.PairedBatches`); an epoch is one pass over the
   in-distribution images. Dream-OOD never sees a tail class, so the real tail training images join the
   generated outliers as out-of-distribution (LoGex §4.1: 1432 generated + 120 real). Test score: the energy
   over the in-distribution logits (``energy_head``); model selection on the validation split by
   bAcc-head - FPR@95 of that score (LoGex's criterion with this row's score).

BOOD (``bood.py``) shares stages 1, 3 and 4; only stage 2 differs. The stages 2-3 and their report section:
``stages.py``.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...config import StrictConfig, build_config
from ...data.synthetic import SyntheticSet
from ...diffusion import DiffusionConfig
from ...engine.artifacts import load_base, read_split
from ...errors import TailsynthError
from ...losses import build_criterion
from ...ood.metrics import balanced_accuracy_on
from ...outliers import DecodeConfig, DreamOodSamplingConfig
from ...outliers.dream_ood import k_of_class
from ...training import ArrayData
from ...training.batches import PairedBatches
from ...training.objectives import CriterionObjective, Objective
from ...utils import read_json
from ..base import Method
from ..registry import register
from .stages import outlier_embeddings, outlier_images

OUTLIER_LABEL = -1  # training label of an out-of-distribution image (generated outlier or real tail image)


def head_train_sizes(exp) -> dict[str, int] | None:
    """Training images per head class of the experiment's split (the split built from the source index alone, no
    pixels decoded); None when the source cannot be indexed on this machine (the split stage then says why)."""
    from ...config import flatten_mapping
    from ...data import load_benchmark_config
    try:
        bench = load_benchmark_config(exp.benchmark, flatten_mapping(exp.benchmark_overrides))
        return dict(_head_train_sizes(bench.model_dump_json(), exp.split_seed))
    except TailsynthError:
        return None


@functools.lru_cache(maxsize=8)
def _head_train_sizes(benchmark_json: str, seed: int) -> tuple[tuple[str, int], ...]:
    """(class name, training images) of each head class; cached per process (a config is checked at load and
    again when it runs)."""
    from ...data import BenchmarkConfig, build_split
    split = build_split(BenchmarkConfig.model_validate_json(benchmark_json), seed=seed)
    counts = split.counts()
    return tuple((split.class_names[c], counts[split.class_names[c]]["train"]) for c in split.head_classes)


class VmfEncoderConfig(StrictConfig):
    """``method_params.vmf-encoder``: Dream-OOD's temperature (Eq. 2; the paper and code: 0.1)."""

    tau: float = Field(0.1, gt=0)


def _head_only_bacc(split):
    head = list(split.head_classes)

    def select(logits: np.ndarray, labels: np.ndarray) -> float:
        keep = np.isin(labels, head)
        return float(balanced_accuracy_on(labels[keep], logits[keep].argmax(1), head))

    select.label = "bacc_head"
    return select


@register
class VmfEncoder(Method):
    """Dream-OOD stage 1: the text-conditioned latent space (an artifact of Dream-OOD and BOOD, not a table row)."""

    name = "vmf-encoder"
    reference = "Dream-OOD stage 1: cos(W f(x), a_c) / tau with fixed conditioning-space anchors, CE on the head"
    primary_score = "energy_head"  # a head-only classifier: P(tail) is 0 for every image
    Config = VmfEncoderConfig

    def classifier(self, graph, seed, per_class=None):
        return graph.train(self, seed, {"base": graph.base_diffusion()})

    def trained_classes(self, split):
        return list(split.head_classes)

    def training_data(self, split, real, inputs, data_cfg, per_class, params):
        keep = np.isin(real.labels, split.head_classes)
        return ArrayData(real.images[keep], real.labels[keep])

    def head_spec(self, split, inputs, params):
        anchors = self.anchors(split, inputs)
        return {"kind": "anchor_cosine", "dim": int(anchors.shape[1]), "tau": params.tau,
                "classes": list(split.head_classes)}

    def anchors(self, split, inputs) -> torch.Tensor:
        """(K, D) anchors: row c = the base diffusion model's conditioning embedding of head class c, zeros for
        the tail (classes the base model never saw). Loaded once per base model (``head_spec`` needs the width,
        ``init_model`` the rows)."""
        key = (inputs["base"].fingerprint, tuple(split.head_classes))
        cache = self.__dict__.setdefault("_anchor_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self._load_anchors(split, inputs)
        return cache[key]

    @staticmethod
    def _load_anchors(split, inputs) -> torch.Tensor:
        record = read_json(inputs["base"].path / "manifest.json")["config"]["diffusion"]
        diffusion = build_config(DiffusionConfig, record, "base diffusion manifest")
        backend = load_base(inputs["base"].path, diffusion, torch.device("cpu"))
        head = list(split.head_classes)
        if not backend.trains_base:
            backend.add_classes([split.class_names[c] for c in head])
        with torch.no_grad():
            rows = backend.anchor_embeddings(torch.arange(len(head))).float()
        anchors = torch.zeros(len(split.class_names), rows.shape[1])
        anchors[torch.as_tensor(head)] = rows
        return anchors

    def init_model(self, model, inputs, seed):
        model.head.set_anchors(self.anchors(read_split(inputs["split"]), inputs))
        return "all"

    def objective(self, class_counts, split, params):
        return CriterionObjective(build_criterion("ce", class_counts))

    def selector(self, split, train):
        return _head_only_bacc(split)


class OutlierExposureConfig(StrictConfig):
    """Settings shared by Dream-OOD and BOOD's stages 3-4."""

    encoder_seed: int = 0  # one encoder and one outlier set for every seed of the row (as the synthetic rows' aux)
    decode: DecodeConfig = DecodeConfig()
    weight: float = Field(1.0, ge=0)  # w of the energy regulariser (ImageNet-100: 1, CIFAR-100: 2.5)
    mlp_hidden: int = Field(512, ge=1)
    real_tail_as_outliers: bool = True  # LoGex §4.1: the real tail images join the generated outliers


class DreamOodConfig(OutlierExposureConfig):
    """``method_params.dream-ood``."""

    outliers: DreamOodSamplingConfig = DreamOodSamplingConfig()


class EnergyRegularizedObjective(Objective):
    """Dream-OOD / VOS stage 4 on a batch {"x", "y"} with y = -1 for out-of-distribution images:
    CE over the in-distribution classes on the ID images + w * CE(MLP(E(x)), [x is ID]) with the energy
    E(x) = logsumexp over the ID logits and MLP 1 -> hidden -> 2 (trained with the network: its parameters are
    the objective's, optimised and checkpointed by the trainer)."""

    def __init__(self, id_classes: list[int], weight: float, hidden: int = 512):
        super().__init__()
        self.register_buffer("id_classes", torch.as_tensor(id_classes, dtype=torch.long), persistent=False)
        self.weight = float(weight)
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, model, batch):
        logits = model(batch["x"]).float()[:, self.id_classes.to(batch["x"].device)]
        y = batch["y"]
        is_id = y >= 0
        zero = logits.sum() * 0.0
        position = torch.searchsorted(self.id_classes.to(y.device), y.clamp_min(0))  # class -> column in logits
        ce = F.cross_entropy(logits[is_id], position[is_id]) if is_id.any() else zero
        energy = torch.logsumexp(logits, dim=1, keepdim=True)
        reg = F.cross_entropy(self.mlp(energy), is_id.long())
        return ce + self.weight * reg, {"ce_id": ce.detach(), "energy_reg": reg.detach()}


@register
class DreamOod(Method):
    name = "dream-ood"
    reference = "Dream-OOD (Du et al. 2023): outliers imagined in the conditioning space, decoded, energy regulariser"
    kind: ClassVar[str] = "dream-ood"
    Config: ClassVar[type[OutlierExposureConfig]] = DreamOodConfig
    primary_score = "energy_head"

    def stage2_settings(self, cfg) -> dict[str, Any]:
        return {"dream_ood": cfg.outliers}

    def check_config(self, exp) -> None:
        """Stage 2's settings against the head classes' training-set sizes (from the source index, before any stage
        runs) when the experiment runs this method; settings of a method only named in ``method_params`` parse
        (a bad key fails) but are not held against the data (a user's own, smaller benchmark with the shipped
        ``method_params`` and other ``methods``)."""
        cfg = exp.method_config(self.name)
        sizes = head_train_sizes(exp) if self.name in exp.methods else {}
        if sizes:
            self.check_class_sizes(cfg, sizes)

    def check_class_sizes(self, cfg, sizes: dict[str, int]) -> None:
        """k-th nearest neighbours among the other training embeddings of a class: k <= n_c - 1 for every head
        class c (``k_fraction`` sets a k per class)."""
        o = cfg.outliers
        smallest = min(sizes.values())
        for name, n in sorted(sizes.items(), key=lambda item: item[1]):
            k = k_of_class(o, n)
            if k > n - 1:
                key, value = ("k", o.k) if o.k_fraction is None else ("k_fraction", o.k_fraction)
                raise TailsynthError(
                    f"key 'method_params.{self.name}.outliers.{key}' = {value}: k = {k} nearest neighbours asked of "
                    f"head class {name!r}, which has {n} training images (at most {n - 1} besides the image itself); "
                    f"allowed: k in 1..{smallest - 1} (the smallest head class has {smallest} training images), or "
                    f"k_fraction (k_c = min(k, round(k_fraction * n_c)))")

    def classifier(self, graph, seed, per_class=None):
        cfg = graph.method_config(self)
        encoder = graph.classifier("vmf-encoder", cfg.encoder_seed)
        embeddings = outlier_embeddings(graph, self.kind, encoder, self.stage2_settings(cfg))
        images = outlier_images(graph, self.kind, embeddings, cfg.decode)
        return graph.train(self, seed, {"outliers": images})

    def trained_classes(self, split):
        return list(split.head_classes)

    def training_data(self, split, real, inputs, data_cfg, per_class, params):
        cfg = params
        outliers = SyntheticSet.read(inputs["outliers"].path).select(role="outlier")
        images, _ = outliers.load_images(split.class_names, data_cfg.image_size, data_cfg.channels)
        is_tail = np.isin(real.labels, split.tail_classes)
        labels = np.where(is_tail, OUTLIER_LABEL, real.labels)
        keep = ~is_tail | cfg.real_tail_as_outliers
        return ArrayData(np.concatenate([real.images[keep], images]),
                         np.concatenate([labels[keep], np.full(len(images), OUTLIER_LABEL)]).astype(np.int64))

    def batches(self, train, cfg):
        """The official loop's steps: each batch of in-distribution images (label >= 0) joined by as many outliers
        (label -1: decoded outliers and, by default, the real tail images), cycled and reshuffled when used up."""
        is_out = train.labels == OUTLIER_LABEL
        return PairedBatches(ArrayData(train.images[~is_out], train.labels[~is_out]),
                             ArrayData(train.images[is_out], train.labels[is_out]), cfg.augment, self.sampler)

    def head_spec(self, split, inputs, params):
        return {"kind": "linear", "classes": list(split.head_classes)}

    def objective(self, class_counts, split, params):
        return EnergyRegularizedObjective(list(split.head_classes), params.weight, params.mlp_hidden)
