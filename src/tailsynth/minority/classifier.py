"""The minority classifier p_psi(l~ | x_t, c) (Um et al. 2024, §3.3, App. B.2 and D).

The paper's classifiers are the encoder architecture of the ADM U-Net (App. B): trained from scratch on CelebA /
CIFAR-10, a small network on a frozen, noise-conditioned ADM classifier's features on LSUN / ImageNet (the
official code). Here the time-conditioned feature extractor is the diffusion model's own encoder half: conv_in,
the down blocks and the mid block of the (LoRA-adapted) UNet, with the timestep embedding, and -- for the
class-conditional classifier of Eq. 17 -- the class condition entering through the UNet's cross-attention. Why:
it exists for every backend (pixel UNet, Stable Diffusion), it already knows x_t at every noise level, and it is
the same network whose reconstruction defined the minority score. ``encoder`` chooses how it is used:

- ``finetune`` (default): a copy of that encoder half (the denoiser itself stays untouched) is trained with the
  head, i.e. the ADM-encoder classifier of the paper's CelebA / CIFAR-10 setting, started from the denoiser's
  weights instead of random ones. On MNIST-5k-LT (L = 10, chance 0.10) the held-out accuracy at t = 0.1 T is
  0.26 with it and 0.14 with a frozen encoder (docs/minority.md, research/results/minority-demo-classifier/).
- ``frozen``: the denoiser's encoder as a fixed feature extractor (the official code's ImageNet recipe) and
  only the head trained: cheaper, and the only choice when a copy of a large UNet does not fit in memory.

On top sits a small trained head: SiLU + global average pool of the mid-block map, concatenated with the time
embedding, then a 2-hidden-layer MLP to L logits.

Training (as the official code): x_t = q_sample(x0, t) with t ~ U{0..T-1}, CE against the sample's minority
level, AdamW (lr 3e-4, weight decay 0.05). It runs in the step loop (:class:`tailsynth.training.steps.StepLoop`)
with its checkpoints, so a killed run resumes exactly; a stratified 5 % of the samples is held
out to report the classifier's accuracy (no choice is made on it). Every training image is encoded once under each
flip the loss may draw (:func:`encode_views`), so a step costs no VAE call: with Stable Diffusion an encode at 512 px
per image per step cost more than the classifier itself, and 512-px float images of a whole training split do not
fit in memory (PBC: 9k images, 28 GB); the images stay uint8 at the data's size until a batch is encoded.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import field_validator
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import StrictConfig, to_dict
from ..diffusion.schedule import add_noise
from ..errors import TailsynthError
from ..training.steps import LossFn, StepLoop, batch_indices
from ..utils import atomic_write_json, read_json, stable_hash


class MinorityClassifierConfig(StrictConfig):
    num_levels: int = 10  # L (the official code: 100 on data sets of tens of thousands of images)
    # p(l~ | x_t, c) through the cross-attention (Eq. 17); False: the null condition, p(l~ | x_t) (Eq. 8). The
    # minority method sets it from its ``mode``, with the score's and the levels' (never a mix)
    conditional: bool = True
    # train a copy of the UNet's encoder half with the head (finetune) or keep the denoiser's frozen (frozen)
    encoder: Literal["finetune", "frozen"] = "finetune"
    hidden: int = 256
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    holdout: float = 0.05  # stratified share held out for the reported accuracy
    hflip: bool = True
    vflip: bool = False
    checkpoint_every: int = 250
    seed: int = 0

    @field_validator("num_levels")
    @classmethod
    def _levels(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"num_levels (L) must be >= 2, got {value}")
        return value


def encoder_features(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet2DConditionModel's encoder half: (mid-block feature map (B, C, h, w), time embedding (B, E))."""
    dtype = unet.dtype
    x = x_t.to(dtype)
    t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
    emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t), None)
    cond = cond.to(dtype)
    h = unet.conv_in(x)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=cond)
        else:
            h, _ = block(hidden_states=h, temb=emb)
    if unet.mid_block is not None:
        h = unet.mid_block(h, emb, encoder_hidden_states=cond)
    return h, emb


class MinorityHead(nn.Module):
    """[pool(SiLU(mid map)), time embedding] -> MLP -> L logits."""

    def __init__(self, channels: int, temb_dim: int, hidden: int, num_levels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels + temb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, num_levels))

    def forward(self, mid: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        pooled = F.silu(mid.to(dtype)).mean(dim=(2, 3))
        return self.net(torch.cat([pooled, temb.to(dtype)], dim=1))


def encoder_copy(unet) -> nn.Module:
    """A trainable copy of ``unet`` for :func:`encoder_features`: the up path and the output layers are dropped
    (never used by the classifier), every remaining parameter (LoRA layers included) requires grad."""
    set_aside = {name: getattr(unet, name) for name in ("up_blocks", "conv_norm_out", "conv_out")}
    for name in set_aside:  # not copied: detached from the UNet while the rest is deep-copied, then put back
        setattr(unet, name, nn.ModuleList() if name == "up_blocks" else None)
    try:
        enc = copy.deepcopy(unet)
    finally:
        for name, module in set_aside.items():
            setattr(unet, name, module)
    return enc.requires_grad_(True)


class MinorityClassifier(nn.Module):
    """``classifier(x_t, t, cond)`` -> logits (B, L) over minority levels. With ``encoder: frozen`` the backend's
    UNet is referenced, not owned (saving writes the head only); with ``finetune`` the classifier owns a copy of
    its encoder half (saved with the head)."""

    def __init__(self, backend, cfg: MinorityClassifierConfig, latent: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self._backend = [backend]  # a list, so the UNet is not registered as a submodule
        unet = backend.denoiser
        self.encoder = encoder_copy(unet) if cfg.encoder == "finetune" else None
        device = next(unet.parameters()).device
        with torch.no_grad():
            probe = torch.zeros((1, *latent), device=device)
            mid, emb = encoder_features(unet, probe, torch.zeros(1, dtype=torch.long, device=device),
                                        backend.null_condition(1).to(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.head = MinorityHead(mid.shape[1], emb.shape[1], cfg.hidden, cfg.num_levels).to(device)

    @property
    def backend(self):
        return self._backend[0]

    def condition(self, cond_ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The condition the classifier sees: the class tokens (conditional) or the null condition."""
        if self.cfg.conditional:
            if cond_ids is None:
                raise TailsynthError("a class-conditional minority classifier needs condition ids")
            return self.backend.encode_condition(class_ids=cond_ids)
        return self.backend.null_condition(batch)

    @property
    def feature_network(self):
        """The UNet whose encoder half gives the features: the owned copy (finetune) or the backend's (frozen)."""
        return self.encoder if self.encoder is not None else self.backend.denoiser

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        mid, emb = encoder_features(self.feature_network, x_t, t, cond)
        return self.head(mid, emb)

    def owned_parts(self) -> dict[str, nn.Module]:
        """The modules the classifier trains and saves (``<name>.safetensors``): the head, and the encoder copy."""
        return {"head": self.head, **({"encoder": self.encoder} if self.encoder is not None else {})}

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters of :meth:`owned_parts`, by ``part.name`` (sorted)."""
        return dict(sorted((f"{part}.{k}", p) for part, module in self.owned_parts().items()
                           for k, p in module.named_parameters()))

    def log_prob_grad(self, x_t: torch.Tensor, t: int, cond: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """grad_{x_t} log p(l~ = target | x_t, c), the classifier-guidance term of Eq. 8 / 17 (same shape as x_t)."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logp = self(x, torch.full((len(x),), int(t), dtype=torch.long, device=x.device), cond).log_softmax(1)
            target = torch.as_tensor(target, device=x.device).expand(len(x)).view(-1, 1)
            (grad,) = torch.autograd.grad(logp.gather(1, target).sum(), x)
        return grad.to(x_t.dtype)

    def log_mixture_grad(self, x_t: torch.Tensor, t: int, cond: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
        """grad_{x_t} log sum_i tau_i p(l~ = i | x_t, c): the mixture score of App. D.5 (Eq. 18); ``taus`` (L,) or
        (B, L) positive level values."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            p = self(x, torch.full((len(x),), int(t), dtype=torch.long, device=x.device), cond).softmax(1)
            (grad,) = torch.autograd.grad((p * taus.to(p)).sum(1).log().sum(), x)
        return grad.to(x_t.dtype)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in self.owned_parts().items():
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(directory / f"{name}.safetensors"))
        atomic_write_json(directory / "classifier.json", {"config": to_dict(self.cfg), **extra})

    @classmethod
    def load(cls, directory: Path, backend, latent: tuple[int, int, int] | None = None) -> tuple["MinorityClassifier", dict]:
        """The classifier saved in ``directory`` over ``backend`` (``latent``: None = as trained)."""
        meta_path = Path(directory) / "classifier.json"
        if not meta_path.is_file():
            raise TailsynthError(f"{directory} holds no minority classifier (classifier.json)")
        meta = read_json(meta_path)
        meta["config"].setdefault("encoder", "frozen")  # written before the encoder choice existed: a frozen one
        latent = tuple(meta["latent"]) if latent is None else latent
        model = cls(backend, MinorityClassifierConfig(**meta["config"]), latent)
        try:
            for name, module in model.owned_parts().items():
                module.load_state_dict(load_file(str(Path(directory) / f"{name}.safetensors")))
        except RuntimeError as err:
            raise TailsynthError(f"{directory}: the minority classifier does not fit this diffusion model "
                                 f"(was it trained on another benchmark or backend?): {err}") from None
        if meta.get("latent") is not None and tuple(meta["latent"]) != tuple(latent):
            raise TailsynthError(f"{directory}: minority classifier trained on latents {meta['latent']}, this model's "
                                 f"are {list(latent)}")
        return model.eval(), meta


def holdout_mask(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A stratified random ``share`` of each label (at least one sample of a label with >= 2) -> True."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    if share <= 0:
        return mask
    for y in np.unique(labels):
        idx = np.flatnonzero(labels == y)
        n = min(len(idx) - 1, max(1, int(round(share * len(idx)))))
        if n > 0:
            mask[rng.choice(idx, n, replace=False)] = True
    return mask


def flip_views(cfg: MinorityClassifierConfig) -> list[tuple[bool, bool]]:
    """The (hflip, vflip) combinations the loss may draw, in view-index order v = hflip + 2 * vflip."""
    return [(h, v) for v in ((False, True) if cfg.vflip else (False,)) for h in ((False, True) if cfg.hflip else (False,))]


@torch.no_grad()
def encode_views(backend, images: np.ndarray, cfg: MinorityClassifierConfig, device: torch.device,
                 working_size: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """z0 = E(x) of uint8 images (N, H, W, C) under every flip of :func:`flip_views`: float32 (N, V, C, h, w) on the
    CPU; each batch is first resized to ``working_size`` px RGB (the backend's; None: as given), as the score stage
    resizes, so an image flipped then encoded is exactly the image the loss would have encoded."""
    from ..data import convert_array
    views = flip_views(cfg)
    out = None
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if working_size is not None and chunk.shape[1] != working_size:
            chunk = convert_array(chunk, working_size, 3)
        x = torch.as_tensor(chunk).permute(0, 3, 1, 2).float().div(255.0)
        for v, (h, vf) in enumerate(views):
            xv = x.flip(-1) if h else x
            z = backend.encode((xv.flip(-2) if vf else xv).to(device)).float().cpu()
            if out is None:
                out = torch.empty((len(images), len(views), *z.shape[1:]), dtype=torch.float32)
            out[start:start + len(chunk), v] = z
    if out is None:
        raise TailsynthError("encode_views: no images")
    return out


def train_minority_classifier(backend, images: np.ndarray, cond_ids: np.ndarray, levels: np.ndarray,
                              cfg: MinorityClassifierConfig, workdir: Path, device: torch.device,
                              working_size: int | None = None) -> tuple[MinorityClassifier, dict]:
    """Train the head on uint8 images (N, H, W, C) with condition ids and minority levels; returns the classifier
    (final weights) and a summary with the held-out accuracy (top-1 and within one level). ``working_size``: the
    backend's image size when the images are stored smaller (each batch is resized before it is encoded)."""
    workdir = Path(workdir)
    if len(images) != len(levels) or len(images) != len(cond_ids):
        raise TailsynthError(f"{len(images)} images, {len(cond_ids)} condition ids, {len(levels)} minority levels")
    if int(levels.max()) >= cfg.num_levels or int(levels.min()) < 0:
        raise TailsynthError(f"minority levels must lie in 0..{cfg.num_levels - 1}")
    backend.denoiser.requires_grad_(False)
    z_all = encode_views(backend, np.asarray(images), cfg, device, working_size)
    latent = tuple(z_all.shape[2:])
    model = MinorityClassifier(backend, cfg, latent)
    hold = holdout_mask(levels * 10_000 + cond_ids, cfg.holdout, cfg.seed)
    train_idx = np.flatnonzero(~hold)
    named = model.trained_parameters()
    opt = torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    fingerprint = stable_hash({"cfg": to_dict(cfg), "n": len(levels), "levels": stable_hash(levels.tolist())})
    loop = StepLoop(named, opt, gen, workdir, cfg.steps, fingerprint, to_dict(cfg), cfg.checkpoint_every, device,
                    "another minority classifier run", module=model, desc="minority classifier")
    y_all = torch.as_tensor(levels, dtype=torch.long)
    c_all = torch.as_tensor(cond_ids, dtype=torch.long)
    done = loop.run(minority_loss(model, z_all, c_all, y_all, torch.as_tensor(train_idx), cfg, gen, device))
    model.eval()
    summary = {"steps": done.step, "n_train": int(len(train_idx)), "n_holdout": int(hold.sum()),
               "final_loss": float(np.mean(done.losses[-100:])) if done.losses else None, "latent": list(latent)}
    summary.update(holdout_accuracy(model, z_all[torch.as_tensor(hold), 0], c_all[hold], y_all[hold], device,
                                    cfg.seed))
    return model, summary


def minority_loss(model: MinorityClassifier, z_all: torch.Tensor, c_all: torch.Tensor, y_all: torch.Tensor,
                  train_idx: torch.Tensor, cfg: MinorityClassifierConfig, gen: torch.Generator,
                  device: torch.device) -> LossFn:
    """The loss of step k: CE of the minority levels of batch k (of the training samples) from x_t = q_sample(z0, t),
    z0 the encoded image under the random flips drawn (``z_all`` (N, V, C, h, w), :func:`encode_views`), with t and
    noise drawn from ``gen``."""
    backend = model.backend
    T = backend.alphas_cumprod.shape[0]
    acp = backend.alphas_cumprod.to(device)

    def loss_at(step: int) -> torch.Tensor:
        idx = train_idx[batch_indices(step, cfg.batch_size, len(train_idx), cfg.seed)]
        hflip = (torch.rand(len(idx), generator=gen) < 0.5) & cfg.hflip
        vflip = (torch.rand(len(idx), generator=gen) < 0.5) & cfg.vflip
        view = hflip.long() * int(cfg.hflip) + vflip.long() * (2 if cfg.hflip else 1)  # flip_views' order
        t = torch.randint(0, T, (len(idx),), generator=gen).to(device)
        with torch.no_grad():
            z0 = z_all[idx, view].to(device)
            noise = torch.randn(z0.shape, generator=gen).to(device)
            x_t = add_noise(z0, noise, t, acp)
            cond = model.condition(c_all[idx].to(device), len(idx))
        return F.cross_entropy(model(x_t, t, cond), y_all[idx].to(device))

    return loss_at


@torch.no_grad()
def holdout_accuracy(model: MinorityClassifier, z0: torch.Tensor, cond_ids: torch.Tensor, levels: torch.Tensor,
                     device: torch.device, seed: int, batch_size: int = 256) -> dict:
    """Accuracy on held-out samples (their unflipped latents ``z0``) at t = 0.1 T, 0.5 T and 0.9 T (top-1 and
    |pred - level| <= 1); the classifier sees ``batch_size`` of them at a time."""
    if len(levels) == 0:
        return {}
    T = model.backend.alphas_cumprod.shape[0]
    acp = model.backend.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for frac in (0.1, 0.5, 0.9):
        t = torch.full((len(levels),), int(frac * T), dtype=torch.long, device=device)
        x_t = add_noise(z0.to(device), torch.randn(z0.shape, generator=gen).to(device), t, acp)
        pred = torch.cat([model(x_t[i:i + batch_size], t[i:i + batch_size],
                                model.condition(cond_ids[i:i + batch_size].to(device), len(t[i:i + batch_size])))
                          .argmax(1).cpu() for i in range(0, len(levels), batch_size)])
        out[f"holdout_acc_t{frac:.1f}T"] = float((pred == levels).float().mean())
        out[f"holdout_within1_t{frac:.1f}T"] = float(((pred - levels).abs() <= 1).float().mean())
    out["chance"] = 1.0 / model.cfg.num_levels
    return out
