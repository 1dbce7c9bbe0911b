"""The one step loop: N optimisation steps of named parameters, checkpointed and resumable.

The step trainers (the denoiser and its LoRA adaptation, LDMLR's feature denoiser, the minority classifier)
differ only in the loss of step k and in what they keep around it; :class:`StepLoop` does the rest. Step k:
the caller's loss, zeroed gradients, backward, under data parallelism the sum of the gradients (and of the
logged loss) over the ranks, clipping of the global gradient norm, the learning rates of step k, the optimizer
step and the EMA of the trained weights (decay min(ema_decay, (1+k)/(10+k)), the warm-up of diffusers'
EMAModel).

Every ``checkpoint_every`` steps (and at the last step of a call) the workdir gets the trained parameters and
their EMA (safetensors), the optimizer state (``torch.save`` of tensors and numbers only, read back with
``weights_only=True``), the state of the run's generator and ``train_state.json`` (written last, so a kill at
any moment leaves a complete checkpoint). The state records a fingerprint of the run's config, seed and data:
a workdir holding another run is refused. A resumed run reproduces the uninterrupted one exactly when the
loss of step k depends only on k and the generator (batch order as :func:`batch_indices`). After the last
step the EMA weights (if any) replace the trained ones and ``final.safetensors`` holds them.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from .. import distributed
from ..errors import TailsynthError
from ..utils import atomic_write_bytes, atomic_write_json, derive_seed, progress_enabled, read_json
from .checkpoint import STATE

LossFn = Callable[[int], torch.Tensor]  # k -> the loss of step k (under data parallelism: this rank's share)


@dataclass
class StepResult:
    step: int  # steps done in total
    finished: bool
    losses: list[float] = field(default_factory=list)  # this call's per-step losses


@dataclass
class StepLoop:
    """What the loop trains (``params``, by name in a fixed order, with ``optimizer``), where it checkpoints
    (``workdir``) and how (see the module doc). ``lr_at(k)`` gives each param group's learning rate at step k
    (None: the optimizer's stay); with ``data_parallel`` the loss of a step is this rank's share of the global
    batch's loss, whose gradients are summed over the ranks; only ``write`` (rank 0) writes files."""

    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the run's randomness, saved with every checkpoint
    workdir: Path
    steps: int
    fingerprint: str  # of the run's config, seed and data
    config: dict  # recorded in train_state.json
    checkpoint_every: int
    device: torch.device
    mismatch: str  # what a workdir with another fingerprint holds: "<workdir> holds <mismatch>"
    ema_decay: float = 0.0  # 0: no EMA
    grad_clip: float = 0.0  # max global gradient norm; 0: none
    lr_at: Callable[[int], Sequence[float]] | None = None
    data_parallel: bool = False
    write: bool = True
    module: torch.nn.Module | None = None  # in train mode during the steps, eval mode after
    desc: str = "steps"
    progress: bool = True  # and TAILSYNTH_PROGRESS is not 0

    def run(self, loss_at: LossFn, max_new_steps: int | None = None) -> StepResult:
        """Resume from the workdir and train up to ``steps`` (``max_new_steps``: at most that many in this call,
        then stop after a checkpoint, as a kill would). A finished workdir loads its final weights and returns."""
        ema = {k: p.detach().float().clone() for k, p in self.params.items()} if self.ema_decay > 0 else {}
        start = resume_from(self.workdir, self.fingerprint, self.params, ema, self.optimizer, self.generator,
                            self.device, self.mismatch)
        if start is None:
            return StepResult(int(read_json(self.workdir / STATE)["step"]), True)
        stop = self.steps if max_new_steps is None else min(self.steps, start + max_new_steps)
        losses: list[float] = []
        if self.module is not None:
            self.module.train()
        bar = tqdm(range(start, stop), desc=self.desc, disable=not (self.progress and progress_enabled()),
                   initial=start, total=self.steps)
        for step in bar:
            losses.append(self.take_step(step, loss_at(step), ema))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            done = step + 1
            if self.write and (done % self.checkpoint_every == 0 or done == stop):
                save_step_checkpoint(self.workdir, self.params, ema, self.optimizer, self.generator, done,
                                self.fingerprint, self.config)
        if self.module is not None:
            self.module.eval()
        finished = stop >= self.steps
        if finished:
            save_final(self.workdir, self.params, ema, stop, self.fingerprint, self.config, write=self.write)
        return StepResult(stop, finished, losses)

    def take_step(self, step: int, loss: torch.Tensor, ema: dict[str, torch.Tensor]) -> float:
        """One optimisation step on ``loss`` (step ``step``); returns the loss (summed over the ranks)."""
        params = list(self.params.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.data_parallel:  # gradients and the logged loss summed over the ranks
            loss = loss.detach().float().reshape(1).clone()
            distributed.all_reduce_gradients(params, [loss])
            loss = loss[0]
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.lr_at is not None:
            for group, lr in zip(self.optimizer.param_groups, self.lr_at(step)):
                group["lr"] = lr
        self.optimizer.step()
        if ema:
            _update_ema(ema, self.params, min(self.ema_decay, (1 + step) / (10 + step)))
        return float(loss.detach())


def _update_ema(ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * params, in float32."""
    with torch.no_grad():
        for k, p in params.items():
            ema[k].lerp_(p.detach().float(), 1.0 - decay)


def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Indices of batch ``step`` in the stream of per-epoch permutations (permutation e seeded by (seed, e))."""
    positions = torch.arange(step * batch, (step + 1) * batch)
    out = torch.empty(batch, dtype=torch.long)
    for epoch in positions.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch)))
        mask = positions.div(n, rounding_mode="floor") == epoch
        out[mask] = perm[positions[mask] % n]
    return out


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``tensors`` (moved to the CPU) as a safetensors file, written atomically."""
    atomic_write_bytes(path, st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU); a clear error when it is missing."""
    if not path.is_file():
        raise TailsynthError(f"checkpoint file missing: {path}")
    return st_load(path.read_bytes())


def copy_into(params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``tensors`` into the parameters of the same names; an error naming ``where`` if the names differ."""
    if set(tensors) != set(params):
        raise TailsynthError(f"{where} does not hold the trained parameters (differs in "
                             f"{sorted(set(tensors) ^ set(params))[:5]})")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k].to(p.device, p.dtype))


def save_step_checkpoint(workdir: Path, params: dict[str, torch.nn.Parameter], ema: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, generator: torch.Generator, step: int, fingerprint: str,
                    config: dict) -> None:
    """The checkpoint after ``step`` steps (the files of the module doc), ``train_state.json`` last."""
    save_tensors(workdir / "ckpt_params.safetensors", dict(params))
    if ema:
        save_tensors(workdir / "ckpt_ema.safetensors", ema)
    save_tensors(workdir / "ckpt_rng.safetensors", {"noise_generator": generator.get_state()})
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    atomic_write_bytes(workdir / "ckpt_optimizer.pt", buffer.getvalue())
    atomic_write_json(workdir / STATE, {"step": step, "finished": False, "fingerprint": fingerprint,
                                        "config": config})


def resume_from(workdir: Path, fingerprint: str, params: dict[str, torch.nn.Parameter], ema: dict[str, torch.Tensor],
                optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device,
                mismatch: str) -> int | None:
    """Steps already done in ``workdir`` (0 for a fresh one, after loading its checkpoint otherwise), or None when
    the run there is finished (its final weights are then loaded into ``params``). A run with another
    ``fingerprint`` is an error: "<workdir> holds <mismatch>"."""
    if not (workdir / STATE).is_file():
        return 0
    state = read_json(workdir / STATE)
    if state.get("fingerprint") != fingerprint:
        raise TailsynthError(f"{workdir} holds {mismatch}")
    if state.get("finished"):
        copy_into(params, load_tensors(workdir / "final.safetensors"), workdir)
        return None
    copy_into(params, load_tensors(workdir / "ckpt_params.safetensors"), workdir)
    if ema:
        ema.update({k: v.to(device) for k, v in load_tensors(workdir / "ckpt_ema.safetensors").items()})
    generator.set_state(load_tensors(workdir / "ckpt_rng.safetensors")["noise_generator"])
    optimizer.load_state_dict(torch.load(workdir / "ckpt_optimizer.pt", map_location=device, weights_only=True))
    return int(state["step"])


def save_final(workdir: Path, params: dict[str, torch.nn.Parameter], ema: dict[str, torch.Tensor], step: int,
           fingerprint: str, config: dict, write: bool = True) -> None:
    """Copy the EMA weights (if any) into the parameters and (``write``: rank 0) write ``final.safetensors``."""
    if ema:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ema[k].to(p.dtype))
    if not write:
        return
    save_tensors(workdir / "final.safetensors", dict(params))
    atomic_write_json(workdir / STATE, {"step": step, "finished": True, "fingerprint": fingerprint,
                                        "config": config})
