"""Per-epoch checkpoints: model weights in safetensors, optimizer state, JSON training state.

Every file is written atomically, the JSON state last, so a kill at any moment leaves either the previous
complete checkpoint or the new one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ..errors import TailsynthError
from ..utils import atomic_write_bytes, atomic_write_json, read_json

STATE = "train_state.json"


def save_weights(module: torch.nn.Module, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(module: torch.nn.Module, path: Path) -> None:
    if not Path(path).is_file():
        raise TailsynthError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise TailsynthError(f"cannot read weights {path}: {err}") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TailsynthError(f"weights {path} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_checkpoint(workdir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], extra: dict[str, torch.nn.Module] | None = None) -> None:
    """``extra``: further modules trained alongside the model (an objective's own parameters), saved as
    ``last_<name>.safetensors``."""
    save_weights(model, workdir / "last.safetensors")
    for name, module in (extra or {}).items():
        save_weights(module, workdir / f"last_{name}.safetensors")
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    atomic_write_bytes(workdir / "optimizer.pt", buffer.getvalue())
    atomic_write_json(workdir / STATE, state)


def load_checkpoint(workdir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, extra: dict[str, torch.nn.Module] | None = None) -> dict[str, Any] | None:
    """Restore the last complete checkpoint in ``workdir``; None when there is none."""
    if not (workdir / STATE).is_file():
        return None
    state = read_json(workdir / STATE)
    load_weights(model, workdir / "last.safetensors")
    for name, module in (extra or {}).items():
        load_weights(module, workdir / f"last_{name}.safetensors")
    opt_state = torch.load(workdir / "optimizer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(opt_state)
    return state
