"""A tiny, randomly initialised Stable Diffusion 1.x folder for tests and CPU smoke runs: the ``tiny`` variant of
:mod:`tailsynth.diffusion.random_sd` (same layout as a real SD-1.x diffusers folder, so
:class:`~tailsynth.diffusion.sd.SDBackend` exercises its real local-loading code path without any download)."""
from __future__ import annotations

from pathlib import Path

from .random_sd import write_random_sd


def build_tiny_sd_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny SD folder (UNet (32, 64) with cross-attention width 32, 4 latent channels; VAE with 2 levels;
    2-layer CLIP of width 32, 77 positions; byte-level tokenizer) in float32 to ``path`` and return the path."""
    return write_random_sd(path, "tiny", seed, dtype="float32", force=True)
