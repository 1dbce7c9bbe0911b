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

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import TailsynthError

IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HEAD_PREFIXES = ("fc.", "head.")
SUFFIXES = (".pth", ".pt", ".safetensors")


class WeightsMismatchError(TailsynthError):
    """A readable state dict whose names or shapes do not fit the network."""


def _not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file (a zip archive, or a legacy pickle), or None."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and head[1] <= 5):
        return None
    if not head:
        return "the file is empty"
    text = head.decode("utf-8", errors="ignore")  # "ignore": a character cut at byte 64
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is text, starting {text.strip().splitlines()[0][:40]!r}"
    return f"it starts with the bytes {head[:8]!r}"


def _load_failure(err: Exception) -> str:
    """A one-line reason from torch.load's (weights_only) error."""
    message = str(err)
    if "Unsupported global: GLOBAL " in message:
        name = message.split("Unsupported global: GLOBAL ", 1)[1].split()[0]
        return (f"it holds pickled Python objects ({name}), not only tensors (a whole model saved with "
                f"torch.save(model)? save model.state_dict() instead; weights are read with weights_only=True, so "
                f"no pickled code runs)")
    if "WeightsUnpickler error:" in message or "magic number" in message:
        reason = message.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0]
        return f"it is a pickle that torch.save did not write ({reason})"
    return f"{type(err).__name__}: {message.splitlines()[0] if message else 'truncated or corrupt'}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, on the CPU, without any pickle code execution. A file that is not a weights file
    (text, a pickle of something else, a whole pickled model) is an error that says what it is."""
    path = Path(path)
    if not path.is_file():
        raise TailsynthError(f"pretrained weights not found: {path}")
    if path.suffix not in SUFFIXES:
        raise TailsynthError(f"pretrained weights {path}: expected one of {', '.join(SUFFIXES)}")
    if path.suffix != ".safetensors" and (why := _not_torch_file(path)):
        raise TailsynthError(f"pretrained weights {path} is not a PyTorch weights file: {why} (torch.save writes a "
                             f"zip archive; a torchvision-layout state dict is expected)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # a plain pickle's protocol warning would precede our error
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, a truncated file, ...
        why = f"not a safetensors file ({err})" if path.suffix == ".safetensors" else _load_failure(err)
        raise TailsynthError(f"cannot read pretrained weights {path}: {why}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TailsynthError(f"pretrained weights {path}: not a state dict of tensors (it holds a "
                             f"{type(state).__name__}; save model.state_dict())")
    odd = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise TailsynthError(f"pretrained weights {path}: not a state dict of tensors (non-tensor entries: "
                             f"{', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_backbone(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Copy every non-head tensor of ``path`` into ``model``; returns {"loaded": n, "head_skipped": m}."""
    state = read_state_dict(path)
    own = model.state_dict()
    backbone = {k for k in own if not k.startswith(HEAD_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    # BatchNorm's num_batches_tracked is absent from older torchvision files; the model keeps its own (unused in eval)
    missing = sorted(k for k in backbone - set(given) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(given) - backbone)
    mismatched = [f"{k} {tuple(given[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(backbone & set(given))
                  if given[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{name} ({len(items)}): {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                 if items]
        raise WeightsMismatchError(f"pretrained weights {path} do not fit the model: " + "; ".join(parts)
                             + ". ImageNet ResNet weights need width 1.0, small_input false and 3 input channels.")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in given.items()}})
    return {"loaded": len(given), "head_skipped": len(state) - len(given)}


def write_random_backbone(path: str | Path, model: str = "resnet50", seed: int = 0) -> dict[str, int]:
    """Seeded random weights of ``model`` (width 1, ImageNet stem) as a torchvision-layout state dict with the
    1000-class ``fc`` -- what ``torchvision.models.resnet50().state_dict()`` holds, with our initialisation -- to
    ``path`` (``.pth``/``.pt``: ``torch.save``; ``.safetensors``). For exercising the pretrained-weights path at
    real size without a download; not ImageNet weights. Returns {"tensors": n, "parameters": numel of the
    parameters} (ResNet-50: 320 tensors, 25,557,032 parameters)."""
    from ..utils import atomic_write_bytes
    from .registry import create_model
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise TailsynthError(f"random weights {path}: expected one of {', '.join(SUFFIXES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_model(model, num_classes=1000, small_input=False)
    state = {("fc." + k[len("head."):] if k.startswith("head.") else k): v.contiguous()
             for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save
        data = save(state, metadata={"random": "true", "model": model, "seed": str(seed)})
    else:
        import io
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return {"tensors": len(state), "parameters": sum(p.numel() for p in net.parameters())}
