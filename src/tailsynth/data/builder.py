"""``build_split``: the long-tailed benchmark split of a source, following LoGex (Mueller et al. 2024, Sec. 4.1).

Per class c (source class index), with a numpy Generator seeded by (seed, c, step) so nothing depends on
iteration order or on the other classes:

1. test  = the source's official test split if it has one, else round(test_fraction * n_c) random images
           (round half up). Nothing else ever changes the test set (no leakage from n_tail etc.).
2. pool  = the rest (the official train split when there is one), in random order;
           with ``imbalance_factor`` IF it is cut to n_c = int(n_max * IF^(-k/(K-1))) (Cao et al. 2019,
           k = the class's label position, n_max = the smallest pool).
3. val   = n_val_head / n_val_tail images (LoGex: 100 / 10), taken from the official val split when the
           source has one, else from the pool; for sources with an official train split but no val split
           (CIFAR-LT) and for ``imbalance_factor`` benchmarks: max(1, round(val_fraction * |pool|)).
4. train = the rest of the pool: every head image (at most ``max_per_head``), exactly ``n_tail`` per tail
           class (None: the whole rest).
5. ``max_per_class`` (a dry run's caps): train, val and test each cut to their cap, a seeded random subset.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import TailsynthError
from .benchmark import BenchmarkConfig
from .index import SourceIndex, index_source
from .sources import describe_source
from .split import SPLITS, Split


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resolve_classes(cfg: BenchmarkConfig, names: list[str]) -> tuple[list[int], list[int]]:
    """Source class indices of the head and tail classes, in config order (head=None: all non-tail)."""
    known = {n: i for i, n in enumerate(names)}
    for role, listed in (("head", cfg.head), ("tail", cfg.tail)):
        unknown = [n for n in listed or [] if n not in known]
        if unknown:
            raise TailsynthError(f"benchmark {cfg.name!r}: unknown {role} class(es) {unknown}; "
                                 f"the source has classes {names}")
        if len(set(listed or [])) != len(listed or []):
            raise TailsynthError(f"benchmark {cfg.name!r}: {role} lists a class twice: {listed}")
    overlap = sorted(set(cfg.head or []) & set(cfg.tail or []))
    if overlap:
        raise TailsynthError(f"benchmark {cfg.name!r}: classes {overlap} are in both head and tail")
    tail = [known[n] for n in cfg.tail or []]
    head = [known[n] for n in cfg.head] if cfg.head is not None else [i for i in range(len(names)) if i not in tail]
    if not head:
        raise TailsynthError(f"benchmark {cfg.name!r}: no head classes")
    return head, tail


def resolve_groups(cfg: BenchmarkConfig, kept: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for group, members in (cfg.groups or {}).items():
        unknown = [n for n in members if n not in kept]
        if unknown:
            raise TailsynthError(f"benchmark {cfg.name!r}: group {group!r} names classes {unknown} that are "
                                 f"not in the benchmark; its classes are {kept}")
        groups[group] = [kept.index(n) for n in members]
    return groups


def _rng(seed: int, cls: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, cls, step])


def test_and_pool(index: SourceIndex, cls: int, cfg: BenchmarkConfig, seed: int):
    """(test rows, pool rows in random order, official val rows or None) of source class ``cls``."""
    rows = np.flatnonzero(index.labels == cls)
    official = index.official_split
    if official is not None and (official == "test").any():
        test = rows[official[rows] == "test"]
        pool = _rng(seed, cls, 1).permutation(rows[official[rows] == "train"])
    else:
        candidates = rows if official is None else rows[official[rows] != "val"]
        order = _rng(seed, cls, 0).permutation(candidates)
        n_test = round_half_up(cfg.test_fraction * len(candidates))
        test, pool = np.sort(order[:n_test]), order[n_test:]
    has_val = official is not None and (official == "val").any()
    return test, pool, (rows[official[rows] == "val"] if has_val else None)


def profile_sizes(cfg: BenchmarkConfig, pools: list[np.ndarray]) -> list[int]:
    """Exponential long-tail profile n_k = int(n_max * IF^(-k/(K-1))) (Cao et al. 2019, LDAM code)."""
    n_max, k_all = min(len(p) for p in pools), len(pools)
    if cfg.imbalance_factor is None:
        return [len(p) for p in pools]
    return [max(1, int(n_max * cfg.imbalance_factor ** (-k / (k_all - 1)))) if k_all > 1 else n_max
            for k in range(k_all)]


def val_and_train(cfg: BenchmarkConfig, name: str, is_tail: bool, pool: np.ndarray,
                  official_val: np.ndarray | None, by_fraction: bool, seed: int, cls: int):
    n_val = cfg.n_val_tail if is_tail else cfg.n_val_head
    if official_val is not None:
        if len(official_val) < n_val:
            raise TailsynthError(f"benchmark {cfg.name!r}: class {name!r} has {len(official_val)} images in the "
                                 f"official val split, fewer than the {n_val} requested")
        val = np.sort(_rng(seed, cls, 2).permutation(official_val)[:n_val])
        rest = pool
    else:
        if by_fraction:
            n_val = max(1, round_half_up(cfg.val_fraction * len(pool))) if cfg.val_fraction > 0 else 0
        val, rest = np.sort(pool[:n_val]), pool[n_val:]
    want = cfg.n_tail if is_tail else cfg.max_per_head
    need = (want if is_tail and want is not None else 1)
    if len(rest) < need or len(val) < n_val:
        role = "tail" if is_tail else "head"
        what = f"n_tail + val = {need} + {n_val}" if is_tail and want is not None else f"{n_val} val + 1 train"
        raise TailsynthError(f"benchmark {cfg.name!r}: {role} class {name!r} has {len(pool)} images in its "
                             f"train pool (after the test split), fewer than {what}")
    return val, np.sort(rest[:want] if want is not None else rest)


def cap_per_class(cfg: BenchmarkConfig, parts: tuple[np.ndarray, ...], seed: int, cls: int) -> tuple[np.ndarray, ...]:
    """(train, val, test) rows of one class, each cut to its ``max_per_class`` cap (a seeded random subset, sorted)."""
    caps = cfg.max_per_class
    if caps is None:
        return parts
    out = []
    for step, (rows, cap) in enumerate(zip(parts, (caps.train, caps.val, caps.test)), start=4):
        if cap is not None and len(rows) > cap:
            rows = np.sort(_rng(seed, cls, step).permutation(rows)[:cap])
        out.append(rows)
    return tuple(out)


def build_split(cfg: BenchmarkConfig, seed: int | None = None) -> Split:
    """The long-tailed split of ``cfg.source`` (see the module docstring); same seed -> same split."""
    seed = cfg.seed if seed is None else seed
    index = index_source(cfg.source)
    head, tail = resolve_classes(cfg, index.class_names)
    order = head + tail
    kept = [index.class_names[c] for c in order]
    parts = [test_and_pool(index, c, cfg, seed) for c in order]
    sizes = profile_sizes(cfg, [pool for _, pool, _ in parts])
    by_fraction = cfg.val_fraction is not None and (cfg.imbalance_factor is not None or (
        index.official_split is not None and not (index.official_split == "val").any()))
    records: list[tuple[int, int, int]] = []  # (label, split position, source row)
    for label, c in enumerate(order):
        test, pool, official_val = parts[label]
        val, train = val_and_train(cfg, kept[label], c in tail, pool[:sizes[label]], official_val,
                                   by_fraction, seed, c)
        for position, rows in enumerate(cap_per_class(cfg, (train, val, test), seed, c)):
            records.extend((label, position, int(r)) for r in rows)
    records.sort()
    tail_set = set(range(len(head), len(order)))
    return Split(
        name=cfg.name, seed=seed, class_names=kept, head_classes=list(range(len(head))),
        tail_classes=sorted(tail_set), groups=resolve_groups(cfg, kept), source=cfg.source,
        source_fingerprint=index.fingerprint, source_ids=[index.ids[r] for _, _, r in records],
        labels=np.array([lab for lab, _, _ in records], dtype=np.int64),
        roles=["tail" if lab in tail_set else "head" for lab, _, _ in records],
        splits=[SPLITS[p] for _, p, _ in records], source_index=np.array([r for _, _, r in records], dtype=np.int64),
        meta={"benchmark": cfg.model_dump(mode="json"), "source_name": describe_source(cfg.source),
              "ignored_files": index.ignored_files})
