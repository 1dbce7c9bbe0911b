"""Content fingerprints of image files that survive copies, re-mounts and ``touch``.

A source's fingerprint keys the split stage and, through it, every downstream artifact, so it must change
exactly when the data change. File sizes and modification times are not enough (a copied or re-mounted data
set gets new mtimes and would invalidate every finished run), so each file's SHA-256 enters the digest.
Hashing is memoised per file on (size, mtime) in ``<cache>/hashes/``: a second run over an unchanged
folder only stats the files (PBC, 17,092 JPEGs / 68 MB: about 1.4 s to hash from scratch).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..utils import atomic_write_text
from .cache import cache_root


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_path(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return cache_root() / "hashes" / f"{key}.json"


def _read_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def content_digest(root: Path, entries: list[tuple[str, Path]]) -> str:
    """SHA-256 over ``relative id <tab> file SHA-256`` lines, in the order given.

    ``entries`` are (id, path) pairs; ``root`` only names the memo file. A memo that cannot be written
    (read-only cache) is skipped silently: the digest is still exact.
    """
    memo_file = _memo_path(root)
    memo = _read_memo(memo_file)
    fresh: dict[str, list] = {}
    digest = hashlib.sha256()
    for rel, path in entries:
        stat = path.stat()
        known = memo.get(rel)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            sha = known[2]
        else:
            sha = file_sha256(path)
        fresh[rel] = [stat.st_size, stat.st_mtime_ns, sha]
        digest.update(f"{rel}\t{sha}\n".encode())
    if fresh != memo:
        try:
            atomic_write_text(memo_file, json.dumps(fresh))
        except OSError:
            pass
    return digest.hexdigest()
