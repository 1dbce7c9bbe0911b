"""Small shared helpers: atomic file writes, hashing, seeding, device choice."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import TailsynthError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder); ``wait=False`` raises
    ``BlockingIOError`` at once when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's CPU thread count set to ``n`` (None: unchanged), then restore the caller's."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + ``os.replace``; the old file survives a failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise TailsynthError(f"cannot write {path}: {err.strerror or err}") from err


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for numpy scalars and arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TailsynthError(f"file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise TailsynthError(f"corrupt JSON in {path}: {err}") from None


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), truncated to ``length`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, default=json_default, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from several parts (e.g. run seed and epoch), independent of call order."""
    return int(stable_hash([str(p) for p in parts], 15), 16)


def safe_file_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (class names in file names)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            from .distributed import local_cuda_device
            return local_cuda_device()  # cuda:LOCAL_RANK under a multi-process launcher, else cuda:0
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TailsynthError(f"unknown device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TailsynthError(f"device {name!r} requested but CUDA is not available")
    return device


def progress_enabled() -> bool:
    """Progress bars on a terminal only: in a log file their redraws flood it, and the runner's one line per
    stage (``[run]`` / ``[done] ... in 12.3s``) says what happened. ``TAILSYNTH_PROGRESS=1`` forces bars,
    ``TAILSYNTH_PROGRESS=0`` turns them off everywhere."""
    forced = os.environ.get("TAILSYNTH_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stderr  # where tqdm draws
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
