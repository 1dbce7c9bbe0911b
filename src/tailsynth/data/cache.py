"""The decoded-image cache: one uncompressed ``.npz`` per (source fingerprint, image size, channels).

Location: ``cache_dir`` if given, else ``$TAILSYNTH_CACHE``, else ``~/.cache/tailsynth``; files live in
``<cache>/images/``. A changed source has a new fingerprint and therefore a new key, so stale entries are
never read. Files are written to a temp file and renamed (``os.replace``): a crash leaves no half file.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ..utils import atomic_write_bytes

CACHE_VERSION = "1"  # bump when the decoding rules change


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("TAILSYNTH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tailsynth"


def cache_path(fingerprint: str, image_size: int, channels: int, cache_dir: str | Path | None = None) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{fingerprint}|{image_size}|{channels}".encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "images" / f"{key}-{image_size}px-{channels}ch.npz"


def save_cached(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError):
        return None
