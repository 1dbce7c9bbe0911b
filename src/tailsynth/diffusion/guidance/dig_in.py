"""DiG-IN guidance (Augustin et al. 2023) as LoGex uses it (LoGex §2.1, §3 step 3).

For each image, the starting latent x_T and per-timestep additive deltas on the conditional AND the
unconditional embeddings are optimised by backpropagating through the complete deterministic DDIM chain
(20 steps, eta 0, CFG w = 3; Song et al. 2021 eq. 12):

    L = - sum_{j=1..k} w_j softmax(f(D(x0_hat_{S-k+j})))[y],   w_j = j / (k (k+1) / 2)   (k = 3: 1/6, 2/6, 3/6)

with f the auxiliary classifier (:class:`ClassifierGuide`), D the decoder and x0_hat the Tweedie estimate of
the last k DDIM steps. One Adam with two groups: x_T (lr 1e-3) and the deltas (num_steps, B, L, D) on cond
and uncond (lr 1e-2). After every Adam step x_T is re-projected to its initial L2 norm (it stays on the
Gaussian shell). A sample stops when its weighted confidence reaches ``threshold`` (LoGex: 0.4) or after
``max_opt_steps`` Adam steps; the iterate with the highest *clean* confidence (target softmax on the final
decoded image of that iterate) is kept, and ``accepted = confidence >= threshold``. Settings follow the
official code (mueller-mp/logex AEDG/src/utils/sd_backprop_pipe.py; see notes/methods-as-implemented.md).

Two implementations with identical per-sample mathematics:

* :func:`dig_in_reference` -- the official settings: batch 1, fp32, per-step gradient checkpointing,
  ``torch.optim.Adam``, one image after the other.
* :func:`dig_in` -- batched: samples that reach the threshold leave the batch and queued samples take their
  place (the batch stays full); Adam is written out per sample (:class:`PerSampleAdam`) so its moments are
  sliced exactly; bf16 autocast on CUDA; checkpointing optional.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import model_validator
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ...config import StrictConfig
from ...errors import TailsynthError
from ..samplers import ddim_sample
from .classifier_guide import ClassifierGuide
from .common import as_batch, autocast_for, check_targets, frozen


class DigInConfig(StrictConfig):
    num_steps: int = 20  # DDIM steps, eta 0
    guidance_scale: float = 3.0  # CFG w
    lr_latent: float = 1e-3  # Adam lr for x_T (official: 0.01 * 0.1)
    lr_embed: float = 1e-2  # Adam lr for the cond / uncond deltas
    max_opt_steps: int = 20  # Adam steps at most
    threshold: float = 0.4  # stop (and accept) at this target confidence
    last_k: int = 3  # loss on the x0-hats of the last k steps, linear weights j / sum(1..k)
    checkpoint: bool = True  # per-DDIM-step gradient checkpointing (official: on)
    batch_size: int = 8  # images optimised together (dig_in only)
    bf16: bool = True  # bf16 autocast on CUDA
    # and on CPUs with native bf16 (AVX512-BF16 / AMX; fp32 elsewhere); off by default: 0.71x of float32 on the
    # 0.43 M-parameter benchmark UNet on 2 AVX512-BF16 cores (benchmarks/results/speed/bench-guidance-cpu.json)
    cpu_bf16: bool = False
    # DiG-IN's expectation over transformations (ClassifierGuide.augmented_target_prob): the guided confidence is
    # the mean over `cutouts` random crops (side U[cutout_min_scale, 1]) + N(0, cutout_noise^2) of each x0-hat.
    # 0 = off, as in LoGex's copy (whose cutout flags have no effect); DiG-IN's code: 16 cutouts, noise 0.005.
    cutouts: int = 0
    cutout_min_scale: float = 0.75
    cutout_noise: float = 0.0
    # realism term (tailsynth's, in neither DiG-IN nor LoGex): the loss adds realism_weight x the cosine distance of
    # each x0-hat's auxiliary features to its class's prototype (mean normalised features of the real training
    # images of the class), with the confidence's last-k weights. 0 = off (LoGex).
    realism_weight: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "DigInConfig":
        if self.num_steps < 1 or not 1 <= self.last_k <= self.num_steps:
            raise ValueError(f"need 1 <= last_k ({self.last_k}) <= num_steps ({self.num_steps})")
        if self.max_opt_steps < 0 or self.batch_size < 1:
            raise ValueError(f"max_opt_steps ({self.max_opt_steps}) must be >= 0 and "
                             f"batch_size ({self.batch_size}) >= 1")
        if self.realism_weight < 0:
            raise ValueError(f"realism_weight ({self.realism_weight}) must be >= 0")
        if self.cutouts < 0 or not 0.0 < self.cutout_min_scale <= 1.0 or self.cutout_noise < 0:
            raise ValueError(f"need cutouts ({self.cutouts}) >= 0, 0 < cutout_min_scale ({self.cutout_min_scale}) "
                             f"<= 1 and cutout_noise ({self.cutout_noise}) >= 0")
        return self


@dataclass
class GuidanceResult:
    images: torch.Tensor  # (B, C, H, W) float in [0, 1], the kept iterate's final decoded image
    confidence: torch.Tensor  # (B,) clean target softmax of the kept iterate
    opt_steps: torch.Tensor  # (B,) Adam steps taken before the sample stopped
    accepted: torch.Tensor  # (B,) bool, confidence >= threshold
    x_T: torch.Tensor  # (B, C, h, w) the kept iterate's optimised x_T (on the initial L2 norm shell)
    trace: torch.Tensor  # (max_opt_steps + 1, B) weighted confidence of every iterate (NaN after stopping)


def last_k_weights(k: int) -> list[float]:
    """Linear weights j / (k(k+1)/2), j = 1..k (the last DDIM step weighs most)."""
    total = k * (k + 1) / 2
    return [j / total for j in range(1, k + 1)]


SAMPLE_STRIDE, STEP_STRIDE = 1_000_003, 1_009  # view seeds: base + sample * SAMPLE_STRIDE + step * STEP_STRIDE + j


def view_base(cfg: DigInConfig, generator: torch.Generator | None) -> int:
    """The base seed of the augmented views: one draw from the shard's generator (none when cutouts are off,
    so runs without cutouts consume exactly the random numbers they did before)."""
    if cfg.cutouts == 0 or generator is None:
        return 0
    return int(torch.randint(0, 2 ** 40, (1,), generator=generator).item())


def view_seeds(base: int, sample: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """(B,) seeds of the views of Adam iterate ``step`` of input sample ``sample`` (independent of batching)."""
    return base + sample.long().cpu() * SAMPLE_STRIDE + step.long().cpu() * STEP_STRIDE


@dataclass
class Evaluation:
    """One pass through the DDIM chain: the weighted confidence (B,) and the objective (B,) DiG-IN ascends (both
    with graph), the clean confidence (B,) and the final images."""
    weighted: torch.Tensor
    objective: torch.Tensor
    clean: torch.Tensor
    images: torch.Tensor


def evaluate(backend, guide: ClassifierGuide, x: torch.Tensor, conds: list[torch.Tensor], unconds: list[torch.Tensor],
             targets: torch.Tensor, cfg: DigInConfig, checkpoint: bool, bf16: bool,
             seeds: torch.Tensor | None = None, prototypes: torch.Tensor | None = None) -> Evaluation:
    """One pass through the DDIM chain.

    With ``cfg.cutouts > 0`` the weighted confidence is over augmented views (seeded by ``seeds + j`` for the
    j-th of the last k x0-hats); the clean confidence is always that of the un-augmented final image. The
    objective is the weighted confidence minus ``cfg.realism_weight`` x the weighted prototype distance
    (:meth:`ClassifierGuide.prototype_distance`; ``prototypes`` (M, K, D) needed when the weight is > 0); the
    stopping rule reads the weighted confidence alone.
    """
    realism = cfg.realism_weight > 0
    if realism and prototypes is None:
        raise TailsynthError("DiG-IN: realism_weight > 0 needs the class prototypes of the real images")

    def score(z: torch.Tensor, j: int) -> torch.Tensor:  # D then f: (target softmax, prototype distance)
        img = backend.decode(z)
        if cfg.cutouts == 0:
            p = guide.target_prob(img, targets)
        else:
            p = guide.augmented_target_prob(img, targets, seeds + j, cfg.cutouts, cfg.cutout_min_scale,
                                            cfg.cutout_noise)
        d = guide.prototype_distance(img, targets, prototypes) if realism else torch.zeros_like(p)
        return torch.stack([p.float(), d.float()])

    with autocast_for(x.device, bf16, cpu=cfg.cpu_bf16):
        out = ddim_sample(backend.eps, x, conds, unconds, backend.alphas_cumprod, num_steps=cfg.num_steps,
                          guidance_scale=cfg.guidance_scale, eta=0.0, checkpoint=checkpoint, return_x0_hats=True,
                          clip_x0=backend.clip_x0)
        conf = torch.zeros(x.shape[0], device=x.device)
        dist = torch.zeros(x.shape[0], device=x.device)
        for j, (w, x0) in enumerate(zip(last_k_weights(cfg.last_k), out.x0_hats[-cfg.last_k:])):
            p, d = torch_checkpoint(score, x0, j, use_reentrant=False) if checkpoint else score(x0, j)
            conf, dist = conf + w * p, dist + w * d
        with torch.no_grad():
            images = backend.decode(out.sample.detach()).float()
            clean = guide.target_prob(images, targets).float()
    objective = conf - cfg.realism_weight * dist if realism else conf
    return Evaluation(conf, objective, clean, images)


def prepare_inputs(backend, guide, target_classes, cond, uncond, x_T, where):
    """Checked (targets (N,), cond (N, L, D), uncond (N, L, D)) for a DiG-IN run on x_T (N, C, h, w); errors name
    ``where``."""
    n = x_T.shape[0]
    if x_T.dim() != 4 or n < 1:
        raise TailsynthError(f"{where}: x_T must be (N >= 1, C, h, w), got {tuple(x_T.shape)}")
    num_classes = getattr(guide.model, "num_classes", None) if isinstance(guide, ClassifierGuide) else None
    targets = check_targets(target_classes, n, num_classes, where).to(x_T.device)
    return targets, as_batch("cond", cond, n, where), as_batch("uncond", uncond, n, where)


@torch.no_grad()
def reproject_to_norm(x: torch.Tensor, norm0: torch.Tensor) -> None:
    """x <- x * ||x_T^(0)|| / ||x||, per sample."""
    norm = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    x.mul_((norm0 / norm).view(-1, *([1] * (x.dim() - 1))))


def dig_in_reference(backend, guide: ClassifierGuide, target_classes: torch.Tensor, cond: torch.Tensor,
                     uncond: torch.Tensor, x_T: torch.Tensor, cfg: DigInConfig,
                     generator: torch.Generator | None = None, prototypes: torch.Tensor | None = None) -> GuidanceResult:
    """The official loop: one image at a time, batch 1, fp32, per-step checkpointing, torch.optim.Adam.

    ``generator`` seeds the augmented views when ``cfg.cutouts > 0`` (DDIM with eta 0 is deterministic; x_T
    carries the seed of the chain). ``prototypes``: the realism term's (:func:`evaluate`).
    """
    targets, cond, uncond = prepare_inputs(backend, guide, target_classes, cond, uncond, x_T, "dig_in_reference")
    S, n = cfg.num_steps, x_T.shape[0]
    base = view_base(cfg, generator)
    images, latents, conf = [], [], torch.empty(n)
    steps = torch.zeros(n, dtype=torch.long)
    trace = torch.full((cfg.max_opt_steps + 1, n), float("nan"))
    with frozen(backend, guide):
        for i in range(n):
            x = x_T[i:i + 1].detach().clone().requires_grad_(True)
            d_c = torch.zeros(S, 1, *cond.shape[1:], device=x.device, requires_grad=True)
            d_u = torch.zeros(S, 1, *uncond.shape[1:], device=x.device, requires_grad=True)
            opt = torch.optim.Adam([{"params": [x], "lr": cfg.lr_latent}, {"params": [d_c, d_u], "lr": cfg.lr_embed}])
            norm0 = x.detach().flatten(1).norm(dim=1)
            best, best_img, best_x = -1.0, None, None
            for k in range(cfg.max_opt_steps + 1):
                conds = [cond[i:i + 1] + d_c[s] for s in range(S)]
                unconds = [uncond[i:i + 1] + d_u[s] for s in range(S)]
                seeds = view_seeds(base, torch.tensor([i]), torch.tensor([k]))
                ev = evaluate(backend, guide, x, conds, unconds, targets[i:i + 1], cfg, checkpoint=True, bf16=False,
                              seeds=seeds, prototypes=prototypes)
                weighted, clean, img = ev.weighted, ev.clean, ev.images
                trace[k, i] = weighted.item()
                if clean.item() > best:
                    best, best_img, best_x = clean.item(), img, x.detach().clone()
                if trace[k, i] >= cfg.threshold or k == cfg.max_opt_steps:
                    break
                opt.zero_grad()
                (-ev.objective.sum()).backward()
                opt.step()
                reproject_to_norm(x, norm0)
                steps[i] = k + 1
            images.append(best_img)
            latents.append(best_x)
            conf[i] = best
    conf = conf.to(x_T.device)
    return GuidanceResult(torch.cat(images), conf, steps.to(x_T.device), conf >= cfg.threshold, torch.cat(latents),
                          trace.to(x_T.device))
