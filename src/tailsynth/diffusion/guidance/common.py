"""Helpers shared by the guidance methods: freezing the networks, autocast, input checks."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from ...errors import TailsynthError


@contextmanager
def frozen(*modules: torch.nn.Module):
    """Set ``requires_grad=False`` on every parameter of ``modules`` (base, LoRA, tokens, classifier) for the
    duration, then restore the flags: guidance optimises its own tensors and nothing else."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX through oneDNN); elsewhere bf16 is emulated
    and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast on CUDA when ``enabled``; on a CPU only when ``cpu`` is set too and the CPU has native
    bf16 (:func:`native_cpu_bf16`); float32 otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if enabled and cpu and device.type == "cpu" and native_cpu_bf16():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


def as_batch(name: str, cond: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    """A (B, L, D) condition, a (1, L, D) one expanded to B rows; detached from any encoder graph."""
    if not isinstance(cond, torch.Tensor) or cond.dim() != 3:
        raise TailsynthError(f"{where}: {name} must be a (B, L, D) tensor, got "
                             f"{tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__}")
    if cond.shape[0] == 1 and batch > 1:
        cond = cond.expand(batch, -1, -1)
    if cond.shape[0] != batch:
        raise TailsynthError(f"{where}: {name} has {cond.shape[0]} rows for {batch} samples")
    return cond.detach()


def check_targets(targets: torch.Tensor, batch: int, num_classes: int | None, where: str) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long).view(-1)
    if t.numel() != batch:
        raise TailsynthError(f"{where}: {t.numel()} target classes for {batch} samples")
    if num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise TailsynthError(f"{where}: target class out of range 0..{num_classes - 1}: "
                             f"min {int(t.min())}, max {int(t.max())}")
    return t
