"""Batched DiG-IN (LoGex §3 step 3) with a shrinking and refilled batch; same mathematics as
:func:`~tailsynth.diffusion.guidance.dig_in.dig_in_reference`.

Per image b the problem is independent: loss_b = -conf_b, so the batch loss is the SUM of the per-sample
losses (each sample gets exactly its batch-1 gradient) and Adam runs per sample (:class:`PerSampleAdam`,
moments and step counters sliced along the batch axis). When a sample reaches the threshold (or its
``max_opt_steps``) its kept iterate is frozen, its rows leave the batch, and the next queued samples join
with fresh Adam state, so every forward/backward pass runs at ``batch_size`` while work remains.
"""
from __future__ import annotations

import torch

from .adam import PerSampleAdam
from .classifier_guide import ClassifierGuide
from .common import frozen
from .dig_in import (DigInConfig, GuidanceResult, evaluate, prepare_inputs, reproject_to_norm, view_base,
                     view_seeds)


class _Batch:
    """The optimisation state of the samples in flight: x_T (b, C, h, w) and deltas (S, b, L, D)."""

    def __init__(self, x_T: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cfg: DigInConfig):
        S, dev = cfg.num_steps, x_T.device
        self.idx = torch.zeros(0, dtype=torch.long, device=dev)  # which input sample each row is
        self.x = x_T[:0].detach().clone()
        self.d_c = torch.zeros(S, 0, *cond.shape[1:], device=dev)
        self.d_u = torch.zeros(S, 0, *uncond.shape[1:], device=dev)
        self.steps = torch.zeros(0, dtype=torch.long, device=dev)
        self.norm0 = torch.zeros(0, device=dev)
        self.best = torch.zeros(0, device=dev)
        self.best_img: torch.Tensor | None = None
        self.best_x = self.x.clone()
        self.opt = [PerSampleAdam(self.x, cfg.lr_latent, 0), PerSampleAdam(self.d_c, cfg.lr_embed, 1),
                    PerSampleAdam(self.d_u, cfg.lr_embed, 1)]

    def __len__(self) -> int:
        return int(self.idx.numel())

    def admit(self, new: torch.Tensor, x_T: torch.Tensor) -> None:
        n = new.numel()
        x_new = x_T[new].detach().clone()
        self.idx = torch.cat([self.idx, new])
        self.x = torch.cat([self.x.detach(), x_new])
        self.d_c = torch.cat([self.d_c.detach(), self.d_c.new_zeros(self.d_c.shape[0], n, *self.d_c.shape[2:])], 1)
        self.d_u = torch.cat([self.d_u.detach(), self.d_u.new_zeros(self.d_u.shape[0], n, *self.d_u.shape[2:])], 1)
        self.steps = torch.cat([self.steps, self.steps.new_zeros(n)])
        self.norm0 = torch.cat([self.norm0, x_new.flatten(1).norm(dim=1)])
        self.best = torch.cat([self.best, self.best.new_full((n,), -1.0)])
        self.best_x = torch.cat([self.best_x, x_new])
        if self.best_img is not None:
            self.best_img = torch.cat([self.best_img, self.best_img.new_zeros(n, *self.best_img.shape[1:])])
        for opt in self.opt:
            opt.append(n)

    def keep(self, rows: torch.Tensor) -> None:
        self.idx, self.x, self.steps = self.idx[rows], self.x.detach()[rows], self.steps[rows]
        self.d_c, self.d_u = self.d_c.detach()[:, rows], self.d_u.detach()[:, rows]
        self.norm0, self.best, self.best_img = self.norm0[rows], self.best[rows], self.best_img[rows]
        self.best_x = self.best_x[rows]
        for opt in self.opt:
            opt.select(rows)

    def leaves(self) -> list[torch.Tensor]:
        for t in (self.x, self.d_c, self.d_u):
            t.requires_grad_(True)
        return [self.x, self.d_c, self.d_u]


def dig_in(backend, guide: ClassifierGuide, target_classes: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
           x_T: torch.Tensor, cfg: DigInConfig, generator: torch.Generator | None = None,
           prototypes: torch.Tensor | None = None) -> GuidanceResult:
    """Batched DiG-IN for N images: x_T (N, C, h, w) seeded, cond/uncond (N, L, D), target classes (N,).

    Returns per input sample the kept iterate's images (N, C, H, W) in [0, 1], clean confidences, Adam step
    counts and acceptance. ``generator`` seeds the augmented views when ``cfg.cutouts > 0`` (each sample's views
    depend only on its index and Adam step, so they equal :func:`dig_in_reference`'s). ``prototypes``: the
    realism term's (:func:`~tailsynth.diffusion.guidance.dig_in.evaluate`).
    """
    targets, cond, uncond = prepare_inputs(backend, guide, target_classes, cond, uncond, x_T, "dig_in")
    n, S, dev = x_T.shape[0], cfg.num_steps, x_T.device
    images: torch.Tensor | None = None
    conf = torch.zeros(n, device=dev)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    latents = torch.zeros_like(x_T)
    trace = torch.full((cfg.max_opt_steps + 1, n), float("nan"), device=dev)
    batch, queued = _Batch(x_T, cond, uncond, cfg), 0
    base = view_base(cfg, generator)
    with frozen(backend, guide):
        while len(batch) or queued < n:
            room = min(cfg.batch_size - len(batch), n - queued)
            if room > 0:
                batch.admit(torch.arange(queued, queued + room, device=dev), x_T)
                queued += room
            x, d_c, d_u = batch.leaves()
            c_rows, u_rows = cond[batch.idx], uncond[batch.idx]
            conds = [c_rows + d_c[s] for s in range(S)]
            unconds = [u_rows + d_u[s] for s in range(S)]
            last = bool((batch.steps >= cfg.max_opt_steps).all())  # no Adam step follows: no graph needed
            with torch.set_grad_enabled(not last):
                ev = evaluate(backend, guide, x, conds, unconds, targets[batch.idx], cfg, checkpoint=cfg.checkpoint,
                              bf16=cfg.bf16, seeds=view_seeds(base, batch.idx, batch.steps), prototypes=prototypes)
            weighted, clean, img = ev.weighted, ev.clean, ev.images
            trace[batch.steps, batch.idx] = weighted.detach()
            better = clean > batch.best  # keep the iterate with the highest clean confidence
            batch.best = torch.where(better, clean, batch.best)
            batch.best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), batch.best_x)
            batch.best_img = img if batch.best_img is None else torch.where(
                better.view(-1, 1, 1, 1), img, batch.best_img)
            done = (weighted.detach() >= cfg.threshold) | (batch.steps >= cfg.max_opt_steps)
            if images is None:
                images = img.new_zeros(n, *img.shape[1:])
            rows = done.nonzero().view(-1)
            out = batch.idx[rows]
            images[out], conf[out], steps[out] = batch.best_img[rows], batch.best[rows], batch.steps[rows]
            latents[out] = batch.best_x[rows]
            stay = (~done).nonzero().view(-1)
            if stay.numel() == 0:
                batch.keep(stay)
                continue
            grads = torch.autograd.grad(-ev.objective[stay].sum(), [x, d_c, d_u])
            batch.keep(stay)
            batch.steps += 1
            t = batch.steps.float()
            for opt, param, grad, dim in zip(batch.opt, (batch.x, batch.d_c, batch.d_u), grads, (0, 1, 1)):
                opt.step(param, grad.index_select(dim, stay), t)
            reproject_to_norm(batch.x, batch.norm0)
    return GuidanceResult(images, conf, steps, conf >= cfg.threshold, latents, trace)
