"""Artifact store: ``runs/<stage>/<fingerprint>/`` directories that appear only when complete.

A stage works in ``runs/<stage>/<fingerprint>.partial/`` (kept across interruptions, so long stages
checkpoint there and resume); when it returns, ``manifest.json`` is written and the directory is renamed
to its final name in one atomic step. A directory with a manifest is therefore always a finished artifact.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import TailsynthError
from ..utils import file_lock, read_json

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its stage name, fingerprint and directory."""

    stage: str
    fingerprint: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST)

    def file(self, name: str) -> Path:
        path = self.path / name
        if not path.exists():
            raise TailsynthError(f"artifact {self.stage}/{self.fingerprint} has no file {name!r} ({path})")
        return path


class ArtifactStore:
    """The directory tree of artifacts under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def final_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def partial_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / f"{fingerprint}.partial"

    def lookup(self, stage: str, fingerprint: str) -> Artifact | None:
        path = self.final_dir(stage, fingerprint)
        if (path / MANIFEST).is_file():
            return Artifact(stage, fingerprint, path)
        return None

    def remove(self, stage: str, fingerprint: str) -> None:
        """Delete an artifact and its partial work (``--force``): renamed away first, then deleted."""
        for path in (self.final_dir(stage, fingerprint), self.partial_dir(stage, fingerprint)):
            if path.exists():
                trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.time_ns()}")
                os.replace(path, trash)
                shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def lock(self, stage: str, fingerprint: str) -> Iterator[None]:
        """An exclusive lock so two processes never build the same artifact at once."""
        lock_path = self.root / stage / f".{fingerprint}.lock"
        with ExitStack() as held:
            try:
                held.enter_context(file_lock(lock_path, wait=False))
            except BlockingIOError:
                raise TailsynthError(
                    f"another process is building {stage}/{fingerprint} (lock {lock_path}); wait for it to finish"
                ) from None
            yield

    def commit(self, stage: str, fingerprint: str) -> Artifact:
        """Rename the finished partial directory to its final name (atomic on one file system)."""
        src, dst = self.partial_dir(stage, fingerprint), self.final_dir(stage, fingerprint)
        if not (src / MANIFEST).is_file():
            raise TailsynthError(f"refusing to commit {src}: it has no {MANIFEST}")
        os.replace(src, dst)
        return Artifact(stage, fingerprint, dst)

    def list(self) -> list[dict[str, Any]]:
        """Every artifact (complete or partial) under the root, for ``tailsynth status``: stage, fingerprint, state,
        wall time and the manifest's label (None for partial work, which has no manifest yet)."""
        rows = []
        if not self.root.is_dir():
            return rows
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(stage_dir.iterdir()):
                if not path.is_dir() or path.name.startswith("."):
                    continue
                if path.name.endswith(".partial"):
                    rows.append({"stage": stage_dir.name, "fingerprint": path.name[: -len(".partial")],
                                 "state": "partial", "wall_time_s": None, "label": None, "path": str(path)})
                elif (path / MANIFEST).is_file():
                    manifest = read_json(path / MANIFEST)
                    rows.append({"stage": stage_dir.name, "fingerprint": path.name, "state": "complete",
                                 "wall_time_s": manifest.get("wall_time_s"), "label": manifest.get("label") or None,
                                 "path": str(path)})
        return rows
