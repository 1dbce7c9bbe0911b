"""The memorisation check of synthetic images (tailsynth.report.memorisation) against brute-force numpy loops,
and its tables in the report."""
from __future__ import annotations

import numpy as np
import pytest

from tailsynth.report.memorisation import (closest_pairs, distances, nearest_training, pixel_vectors, summarise,
                                           typical_real_distance)
from tailsynth.report.quality import memorisation_table, quality_table


def brute(syn, syn_y, train, train_y):
    """Per synthetic row: (distance, index) of the nearest same-label training row; per label: tau."""
    dist, idx, tau = [], [], {}
    for s, c in zip(syn, syn_y):
        best = (np.nan, -1)
        for j, (x, cx) in enumerate(zip(train, train_y)):
            d = float(np.sqrt(np.sum((s - x) ** 2)))
            if cx == c and not d >= best[0]:
                best = (d, j)
        dist.append(best[0])
        idx.append(best[1])
    for c in set(syn_y.tolist()):
        members = train[train_y == c]
        nn = [min(np.sqrt(np.sum((a - b) ** 2)) for j, b in enumerate(members) if j != i)
              for i, a in enumerate(members)] if len(members) > 1 else []
        tau[c] = float(np.median(nn)) if nn else None
    return np.array(dist), np.array(idx), tau


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    train_y = np.array([0] * 7 + [1] * 4 + [2] * 1 + [3] * 5)
    train = rng.normal(size=(len(train_y), 6)) + train_y[:, None]
    syn_y = np.array([0] * 5 + [1] * 6 + [2] * 2 + [4] * 2)  # class 2: one training image; class 4: none
    syn = rng.normal(size=(len(syn_y), 6)) + syn_y[:, None]
    syn[0] = train[3]  # an exact copy
    syn[5] = train[8] + 1e-3  # a near-copy
    return syn, syn_y, train, train_y


def test_distances_equal_the_brute_force_norm_in_any_chunking():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(13, 7)), rng.normal(size=(5, 7))
    want = np.array([[np.linalg.norm(x - y) for y in b] for x in a])
    for chunk in (1, 7 * 5 * 2, 1 << 24):
        assert np.allclose(distances(a, b, chunk_values=chunk), want, rtol=0, atol=1e-12)
    assert distances(a[:1], a[:1])[0, 0] == 0.0  # exact differences: a copy is at distance 0


def test_nearest_training_and_tau_match_brute_force(toy):
    syn, syn_y, train, train_y = toy
    got = nearest_training(syn, syn_y, train, train_y)
    dist, idx, tau = brute(syn, syn_y, train, train_y)
    assert np.allclose(got.distance, dist, atol=1e-12, equal_nan=True)
    assert np.array_equal(got.index, idx)
    assert got.typical.keys() == tau.keys()
    for c in tau:
        assert (got.typical[c] is None) == (tau[c] is None) and (tau[c] is None or np.isclose(got.typical[c], tau[c]))
    assert got.distance[0] == 0.0 and got.index[0] == 3
    assert got.typical[2] is None and np.isnan(got.distance[13]) and got.index[13] == -1
    d3 = train[train_y == 3]  # 5 training images: the median of their 5 leave-one-out nearest distances
    nn = [min(np.linalg.norm(d3[i] - d3[j]) for j in range(5) if j != i) for i in range(5)]
    assert typical_real_distance(d3) == pytest.approx(sorted(nn)[2])


def test_summary_counts_near_copies_below_tau(toy):
    syn, syn_y, train, train_y = toy
    nearest = nearest_training(syn, syn_y, train, train_y)
    dist, _, tau = brute(syn, syn_y, train, train_y)
    names = ["a", "b", "c", "d", "e"]
    s = summarise(nearest, syn_y, names)
    near = []
    for c, name in ((0, "a"), (1, "b")):
        m = syn_y == c
        share = np.mean(dist[m] < tau[c])
        near += list(dist[m] < tau[c])
        e = s["per_class"][name]
        assert e["n"] == m.sum() and e["typical"] == pytest.approx(tau[c])
        assert e["near_copies"] == pytest.approx(share) and e["median"] == pytest.approx(np.median(dist[m]))
        assert e["median_ratio"] == pytest.approx(np.median(dist[m] / tau[c]))
    assert s["per_class"]["a"]["near_copies"] >= 1 / 5 and s["per_class"]["b"]["near_copies"] >= 1 / 6  # the copies
    # class c: one training image, so a nearest distance but no tau; class e: no training image at all
    assert s["per_class"]["c"]["median"] == pytest.approx(np.median(dist[syn_y == 2]))
    assert s["per_class"]["c"]["near_copies"] is None and s["per_class"]["e"]["median"] is None
    assert s["overall"] == pytest.approx({"n": 11, "near_copies": np.mean(near),
                                          "median_ratio": np.median(np.concatenate(
                                              [dist[syn_y == c] / tau[c] for c in (0, 1)]))})


def test_pixel_distance_is_the_rms_difference_in_unit_range():
    black = np.zeros((1, 4, 4, 3), np.uint8)
    grey = np.full((1, 4, 4, 3), 51, np.uint8)
    half = black.copy()
    half[0, :2] = 255  # half the values differ by 1
    assert distances(pixel_vectors(black), pixel_vectors(grey))[0, 0] == pytest.approx(0.2)
    assert distances(pixel_vectors(black), pixel_vectors(half))[0, 0] == pytest.approx(np.sqrt(0.5))
    big = np.zeros((1, 32, 32, 3), np.uint8)
    assert distances(pixel_vectors(big), pixel_vectors(big + 51))[0, 0] == pytest.approx(0.2)  # size-free


def test_closest_pairs_are_the_smallest_distances_per_class(toy):
    syn, syn_y, train, train_y = toy
    nearest = nearest_training(syn, syn_y, train, train_y)
    pairs = closest_pairs(nearest, syn_y, 2)
    for c, found in pairs.items():
        rows = np.flatnonzero((syn_y == c) & (nearest.index >= 0))
        assert [s for s, _ in found] == list(rows[np.argsort(nearest.distance[rows])][:2])
        assert all(t == nearest.index[s] and train_y[t] == c for s, t in found)
    assert pairs[0][0] == (0, 3) and pairs[4] == []


def test_tables_show_the_shares(toy):
    syn, syn_y, train, train_y = toy
    names = ["a", "b", "c", "d", "e"]
    nearest = nearest_training(syn, syn_y, train, train_y)
    summary = summarise(nearest, syn_y, names)
    memorisation = {"lora": {"features": summary, "pixels": summary}}
    quality = {"real_tail_test": {"overall": 0.9, "per_class": {"a": 0.9}},
               "lora": {"overall": 0.5, "per_class": {"a": 0.5}}}
    table = quality_table(quality, memorisation)
    assert table.headers[-2:] == ["near-copies, oracle features", "near-copies, pixels"]
    share = f"{100 * summary['overall']['near_copies']:.1f}"
    assert [c for c, _ in table.rows[1][-2:]] == [share, share] and [c for c, _ in table.rows[0][-2:]] == ["–", "–"]
    assert quality_table(quality).headers[-1] == "aux right, oracle wrong"  # without memorisation: as before
    mem = memorisation_table(memorisation)
    by_class = {row[1][0]: [c for c, _ in row] for row in mem.rows}
    assert list(by_class) == ["a", "b", "c", "e", "all"]
    assert by_class["a"][2] == "5" and by_class["a"][6] == f"{100 * summary['per_class']['a']['near_copies']:.1f}"
    assert by_class["all"][2] == "11" and by_class["all"][6] == share and by_class["c"][6] == "–"


def test_duplicated_training_images_give_tau_zero_and_no_infinite_figure():
    train = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])  # a duplicate: nearest distances 0, 0, 5 -> tau 0
    syn = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    nearest = nearest_training(syn, np.zeros(3, int), train, np.zeros(3, int))
    assert nearest.typical[0] == 0.0
    s = summarise(nearest, np.zeros(3, int), ["a"])
    assert s["per_class"]["a"]["near_copies"] == pytest.approx(2 / 3)  # nothing is below 0; two exact copies
    assert s["per_class"]["a"]["median_ratio"] is None  # ratios 0/0 (left out), inf, 0/0: median inf -> None
    import json
    json.dumps(s, allow_nan=False)


def test_a_tau_cache_gives_the_same_result_and_is_filled(toy):
    syn, syn_y, train, train_y = toy
    cache = {}
    first = nearest_training(syn, syn_y, train, train_y, cache)
    assert cache == first.typical
    again = nearest_training(syn[::-1], syn_y[::-1], train, train_y, cache)
    assert again.typical == first.typical and np.allclose(again.distance[::-1], first.distance, equal_nan=True)
