"""Reading IDX files, the format MNIST, Fashion-MNIST, KMNIST and EMNIST are distributed in.

An IDX file (LeCun et al., "The MNIST database", http://yann.lecun.com/exdb/mnist/) is a big-endian header
(two zero bytes, a type code, the number of dimensions, one 4-byte size per dimension) followed by the data.
Images are unsigned bytes of shape (N, H, W) (magic ``0x00000803``), labels unsigned bytes of shape (N,)
(magic ``0x00000801``). Files may be gzip-compressed (``.gz``), as they are published.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import TailsynthError

UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of the IDX file ``path`` with ``ndim`` dimensions (3: images, 1: labels).

    A missing file, a wrong magic number, a type other than unsigned byte, another number of dimensions
    or a data length that disagrees with the header is a :class:`TailsynthError` naming the file.
    """
    if not path.is_file():
        raise TailsynthError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise TailsynthError(f"IDX file {path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TailsynthError(f"{path} is not an IDX file (it must start with two zero bytes)")
    kind, dims = raw[2], raw[3]
    if kind != UBYTE:
        raise TailsynthError(f"IDX file {path}: data type 0x{kind:02x}, only unsigned bytes (0x08) are supported")
    what = "images (N, H, W)" if ndim == 3 else "labels (N,)"
    if dims != ndim:
        raise TailsynthError(f"IDX file {path}: {dims} dimension(s), expected {ndim} for {what}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise TailsynthError(f"IDX file {path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise TailsynthError(f"IDX file {path}: the header says shape {shape} ({size} bytes) but "
                             f"{len(raw) - header} bytes of data follow (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
