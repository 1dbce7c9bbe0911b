"""Pretrained backbones from local files (nothing is downloaded).

:func:`load_backbone` maps a torchvision-layout ResNet state dict -- a ``.pth``/``.pt`` file (read with
``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a
``module.`` prefix from DataParallel are accepted) or a ``.safetensors`` file -- onto our ResNets, whose
parameter names and shapes equal torchvision's (``fc`` is our ``head``). The classifier layer is never
loaded: the benchmark has its own classes, so ``head`` keeps its fresh initialisation. Missing, unexpected
or mis-shaped tensors are an error that names them. ImageNet weights expect ImageNet-normalised inputs:
the caller stores :data:`IMAGENET_NORM` in the model card and the network applies it
(``FeatureClassifier.set_input_norm``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import TailsynthError

IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HEAD_PREFIXES = ("fc.", "head.")
SUFFIXES = (".pth", ".pt", ".safetensors")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, on the CPU, without any pickle code execution."""
    path = Path(path)
    if not path.is_file():
        raise TailsynthError(f"pretrained weights not found: {path}")
    if path.suffix not in SUFFIXES:
        raise TailsynthError(f"pretrained weights {path}: expected one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, a truncated file, ...
        raise TailsynthError(f"cannot read pretrained weights {path}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TailsynthError(f"pretrained weights {path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_backbone(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Copy every non-head tensor of ``path`` into ``model``; returns {"loaded": n, "head_skipped": m}."""
    state = read_state_dict(path)
    own = model.state_dict()
    backbone = {k for k in own if not k.startswith(HEAD_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing = sorted(backbone - set(given))
    unexpected = sorted(set(given) - backbone)
    mismatched = [f"{k} {tuple(given[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(backbone & set(given))
                  if given[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{name} ({len(items)}): {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                 if items]
        raise TailsynthError(f"pretrained weights {path} do not fit the model: " + "; ".join(parts)
                             + ". ImageNet ResNet weights need width 1.0, small_input false and 3 input channels.")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in given.items()}})
    return {"loaded": len(given), "head_skipped": len(state) - len(given)}
