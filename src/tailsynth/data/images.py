"""``load_images``: decode every image of a source once (to a fixed size and channel count) and cache it.

Folders and CSV manifests are decoded with PIL (see :mod:`tailsynth.data.decode` for the conversion
rules), in a pool of up to ``TAILSYNTH_WORKERS`` processes (default 2) for large sources; npz, IDX and
built-in arrays are converted in memory. The result is cached (:mod:`tailsynth.data.cache`). :func:`find_corrupt`
runs the same decoder, at a tiny size, in-process and uncached, to list the undecodable files of a source
(``tailsynth data build`` checks a source with it before writing a split).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TailsynthError
from .builtin import BUILTINS
from .cache import cache_path, load_cached, save_cached
from .decode import convert_array, decode_many
from .idx import read_idx
from .index import MEDMNIST_KEYS, SPLIT_NAMES, SourceIndex, idx_parts, index_source, open_npz
from .sources import BuiltinSource, IdxSource, NpzSource, SourceConfig, describe_source, resolve_data_path

POOL_MIN_IMAGES = 2000  # below this, decoding in-process is faster than starting workers
CHUNK = 500
CHECK_SIZE = 8  # find_corrupt decodes to 8 x 8 gray: JPEG draft mode then decodes at 1/8 scale
RUN_REMEDY = ("to leave them out: tailsynth run CONFIG data.skip_corrupt=true "
              "(Python: load_images(..., skip_corrupt=True))")


@dataclass
class ImageArrays:
    """Decoded images uint8 (N, H, W, C), aligned with ``ids`` and ``labels`` (source label indices)."""

    images: np.ndarray
    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    corrupt: list[str] = field(default_factory=list)


def _workers() -> int:
    try:
        wanted = int(os.environ.get("TAILSYNTH_WORKERS", "2"))
    except ValueError:
        raise TailsynthError(f"TAILSYNTH_WORKERS must be an integer, got {os.environ['TAILSYNTH_WORKERS']!r}")
    return max(1, min(wanted, os.cpu_count() or 1))


def decode_files(files: list[str], image_size: int, channels: int) -> tuple[np.ndarray, list[int]]:
    """Decode image files (in a process pool when many); returns the stack and the corrupt positions."""
    workers = _workers()
    if workers == 1 or len(files) < POOL_MIN_IMAGES:
        return decode_many(files, image_size, channels)
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    corrupt: list[int] = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(decode_many, chunks, [image_size] * len(chunks), [channels] * len(chunks))
        for k, (stack, bad) in enumerate(results):
            out[k * CHUNK:k * CHUNK + len(stack)] = stack
            corrupt.extend(k * CHUNK + i for i in bad)
    return out, corrupt


def _npz_parts(src: NpzSource) -> list[np.ndarray]:
    data = open_npz(resolve_data_path(src.path), "source")
    if all(k in data.files for k in MEDMNIST_KEYS):
        parts = [np.asarray(data[f"{name}_images"]) for name in SPLIT_NAMES]
    else:
        parts = [np.asarray(data["images"])]
        if src.test_path:
            parts.append(np.asarray(open_npz(resolve_data_path(src.test_path), "test")["images"]))
    for part in parts:
        if part.ndim not in (3, 4) or (part.ndim == 4 and part.shape[3] not in (1, 3, 4)):
            raise TailsynthError(f"{src.path}: images must be (N,H,W) or (N,H,W,C) with C in 1, 3, 4; "
                                 f"got shape {part.shape}")
    return parts


def _decode(src: SourceConfig, index: SourceIndex, image_size: int, channels: int):
    if isinstance(src, NpzSource):
        parts = _npz_parts(src)
    elif isinstance(src, IdxSource):
        parts = [read_idx(images, 3) for _, images, _ in idx_parts(src)]
    elif isinstance(src, BuiltinSource):
        parts = [BUILTINS.get(src.name)(True).images]
    else:
        return decode_files(index.files, image_size, channels)
    if sum(len(p) for p in parts) != len(index.ids):
        raise TailsynthError(f"{describe_source(src)}: {sum(len(p) for p in parts)} images but "
                             f"{len(index.ids)} labels")
    return np.concatenate([convert_array(p, image_size, channels) for p in parts]), []


def load_images(src: SourceConfig, image_size: int, channels: int, cache_dir: str | Path | None = None,
                skip_corrupt: bool = False) -> ImageArrays:
    """All images of ``src`` as uint8 (N, image_size, image_size, channels), decoded once and cached.

    A corrupt or truncated file is a :class:`TailsynthError` naming it; with ``skip_corrupt`` such files
    are left out and listed in ``ImageArrays.corrupt`` (their source ids).
    """
    if channels not in (1, 3):
        raise TailsynthError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise TailsynthError(f"image_size must be positive, got {image_size}")
    index = index_source(src)
    path = cache_path(index.fingerprint, image_size, channels, cache_dir)
    cached = load_cached(path)
    if cached is None:
        images, bad = _decode(src, index, image_size, channels)
        cached = {"images": images, "ids": np.array(index.ids, dtype=str), "labels": index.labels,
                  "class_names": np.array(index.class_names, dtype=str), "corrupt": np.array(bad, dtype=np.int64)}
        save_cached(path, cached)
    bad = cached["corrupt"].tolist()
    ids = cached["ids"].tolist()
    if bad and not skip_corrupt:
        raise corrupt_error(src, [index.files[i] if index.files else ids[i] for i in bad], RUN_REMEDY)
    if not bad:  # no copy of the (possibly GBs of) images
        return ImageArrays(cached["images"], ids, cached["labels"], cached["class_names"].tolist(), [])
    keep = np.ones(len(ids), dtype=bool)
    keep[bad] = False
    return ImageArrays(cached["images"][keep], [i for i, k in zip(ids, keep) if k], cached["labels"][keep],
                       cached["class_names"].tolist(), [ids[i] for i in bad])


def corrupt_error(src: SourceConfig, files: list[str], remedy: str) -> TailsynthError:
    """The error for undecodable files of ``src``: how many, the first ten, and ``remedy`` (how to skip them)."""
    more = " ..." if len(files) > 10 else ""
    return TailsynthError(f"{len(files)} corrupt or truncated image file(s) in {describe_source(src)}: "
                          f"{', '.join(files[:10])}{more} ({remedy})")


def find_corrupt(src: SourceConfig) -> dict[str, str]:
    """``{source id: file path}`` of the image files of ``src`` that cannot be decoded completely.

    Every file is decoded once with the decoder of :func:`load_images` (same errors), at ``CHECK_SIZE`` px
    gray, in-process and uncached: PBC's 17,092 JPEGs take about 4 s, less than starting the worker pool.
    npz and built-in sources hold arrays: never corrupt.
    """
    index = index_source(src)
    if not index.files:
        return {}
    _, bad = decode_many(index.files, CHECK_SIZE, 1)
    return {index.ids[i]: index.files[i] for i in bad}
