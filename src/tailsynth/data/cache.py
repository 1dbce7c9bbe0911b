"""The decoded-image cache: one uncompressed ``.npz`` per (source fingerprint, image size, channels).

Location: ``cache_dir`` if given, else ``$TAILSYNTH_CACHE``, else ``~/.cache/tailsynth``; files live in
``<cache>/images/``. A changed source has a new fingerprint and therefore a new key, so stale entries are
never read. Files are written to a temp file and renamed (``os.replace``): a crash leaves no half file.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import TailsynthError

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
    """Stream the arrays into a temp file beside ``path``, then rename it: no copy of the data in memory (a whole
    source at 224 px, PBC's 17,092 images, is 2.6 GB; an in-memory archive held it twice more)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise TailsynthError(f"cannot write {path}: {err.strerror or err}") from err


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when missing or unreadable (then it is rebuilt). ``images`` is memory-mapped from
    the file (copy-on-write), not read: a stage that selects a few hundred images of a source decoded at 224 px
    (2.6 GB for PBC) reads only those, and processes share the pages through the OS cache."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {key: data[key] for key in data.files if key != "images"}
            mapped = _mapped_member(path, data.zip, "images.npy") if "images" in data.files else None
            if "images" in data.files:
                out["images"] = mapped if mapped is not None else data["images"]
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _mapped_member(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """A member of an uncompressed ``.npz`` (what :func:`save_cached` writes) as a copy-on-write memory map of its
    bytes in the file; None when it cannot be mapped (compressed, or an object array)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the member's local file header: its name and extra field precede the data
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c", shape=shape, order="F" if fortran else "C", offset=offset)
