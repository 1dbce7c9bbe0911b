"""Which code made a result: the git commit of the checkout tailsynth runs from, and the commit that last changed a
results file.

A report records :func:`code_commit` in its ``meta`` (``code_commit``), so a leaderboard can say which commit made
each experiment folder and which folders were made by an earlier commit than the others. Outside a git checkout
(a pip-installed package) both helpers return None: provenance is then the package version alone.
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _git(cwd: Path, *args: str) -> str | None:
    """``git args`` in ``cwd``: its stripped stdout, or None when git is missing, fails or says nothing."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


@lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The short commit of the checkout holding the tailsynth package, ``+dirty`` when its source folder has
    uncommitted changes (the numbers then come from code no commit holds); None outside a git checkout."""
    head = _git(_PACKAGE, "rev-parse", "--short=10", "HEAD")
    if head is None:
        return None
    dirty = _git(_PACKAGE, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return f"{head}+dirty" if dirty else head


def last_commit_of(path: str | Path) -> tuple[str, str] | None:
    """(short commit, ISO date) of the last commit that added or changed the content of ``path``, following renames
    (a commit that only moved the file is not it); None when it is not tracked by git."""
    path = Path(path).resolve()
    out = _git(path.parent, "log", "-1", "--follow", "--diff-filter=AM", "--format=%h %cs", "--abbrev=10", "--",
               path.name)
    if out is None:
        return None
    commit, _, date = out.partition(" ")
    return commit, date


__all__ = ["code_commit", "last_commit_of"]
