"""Benchmark configs and the long-tailed split builder: exact counts, disjointness, no leakage, determinism."""

import numpy as np
import pytest
from PIL import Image

from tailsynth.data import (BenchmarkConfig, FolderSource, NpzSource, Split, build_split, index_source,
                            load_benchmark_config, load_images, resolve_data_path, split_arrays)
from tailsynth.errors import TailsynthError

# where the shipped presets will look (TAILSYNTH_DATA_ROOT replaces a leading ../shared/data)
PBC = resolve_data_path("../shared/data/pbc")
CIFAR10 = resolve_data_path("../shared/data/cifar-lt/cifar10_lt_if100.npz")


def ids_of(split, which):
    return set(split.ids(which))


@pytest.fixture(scope="module")
def data_mnist_split():
    return build_split(load_benchmark_config("mnist5k-lt"))


def test_mnist5k_lt_exact_counts(data_mnist_split):
    split = data_mnist_split
    assert split.class_names == [str(d) for d in range(10)]
    assert split.head_classes == [0, 1, 2, 3] and split.tail_classes == [4, 5, 6, 7, 8, 9]
    counts = split.counts()
    for d in range(4):
        assert counts[str(d)] == {"train": 350, "val": 50, "test": 100}
    for d in range(4, 10):
        assert counts[str(d)] == {"train": 10, "val": 10, "test": 100}
    assert len(split) == 4 * 500 + 6 * 120
    assert set(split.roles[i] for i in range(len(split)) if split.labels[i] >= 4) == {"tail"}
    table = split.count_table()
    assert "total" in table and table.splitlines()[-1].split()[1:] == ["1460", "260", "1000"]


def test_splits_are_disjoint_and_labels_match_source(data_mnist_split):
    split = data_mnist_split
    train, val, test = (ids_of(split, w) for w in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == len(split)
    index = index_source(split.source)
    source_labels = index.labels[split.source_index]
    assert [split.class_names[lab] for lab in split.labels] == [index.class_names[s] for s in source_labels]
    assert [index.ids[i] for i in split.source_index] == split.source_ids


def test_test_and_val_do_not_depend_on_n_tail(data_mnist_split):
    fewer = build_split(load_benchmark_config("mnist5k-lt", ["n_tail=3"]))
    assert ids_of(fewer, "test") == ids_of(data_mnist_split, "test")
    assert ids_of(fewer, "val") == ids_of(data_mnist_split, "val")
    assert fewer.counts()["9"]["train"] == 3
    assert ids_of(fewer, "train") < ids_of(data_mnist_split, "train")  # a subset: the same random order


def test_max_per_class_caps_every_split_and_the_oracle_pool(data_mnist_split, tmp_path):
    """A dry run's caps: each split a seeded subset of the uncapped one, the oracle pool too; no cap = unchanged."""
    from tailsynth.data import DataConfig
    from tailsynth.engine.artifacts import oracle_pool
    caps = ["max_per_class.train=3", "max_per_class.val=2", "max_per_class.test=1", "max_per_class.oracle=4"]
    capped = build_split(load_benchmark_config("mnist5k-lt", caps))
    for counts in capped.counts().values():
        assert counts == {"train": 3, "val": 2, "test": 1}
    for which in ("train", "val", "test"):
        assert ids_of(capped, which) < ids_of(data_mnist_split, which)
    assert build_split(load_benchmark_config("mnist5k-lt", caps)).source_ids == capped.source_ids
    assert "max_per_class" not in data_mnist_split.meta["benchmark"]  # the default leaves sidecars unchanged
    capped.write(tmp_path / "s.csv")
    pool = oracle_pool(Split.read(tmp_path / "s.csv"), DataConfig(image_size=8, channels=1))
    assert np.bincount(pool.labels).tolist() == [4] * 10  # of 500 - 100 test images per digit
    full = oracle_pool(data_mnist_split, DataConfig(image_size=8, channels=1))
    assert np.bincount(full.labels).tolist() == [400] * 10
    with pytest.raises(TailsynthError, match="max_per_class.val"):
        load_benchmark_config("mnist5k-lt", ["max_per_class.val=0"])


def test_same_seed_byte_identical_different_seed_differs(tmp_path):
    cfg = load_benchmark_config("mnist5k-lt")
    build_split(cfg).write(tmp_path / "a.csv")
    build_split(cfg).write(tmp_path / "b.csv")
    build_split(cfg, seed=1).write(tmp_path / "c.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "source_id,class,label,role,split,source_index"


def test_write_read_roundtrip(tmp_path, data_mnist_split):
    data_mnist_split.write(tmp_path / "s.csv")
    back = Split.read(tmp_path / "s.csv")
    assert back.source == data_mnist_split.source and back.source_ids == data_mnist_split.source_ids
    assert np.array_equal(back.labels, data_mnist_split.labels) and back.splits == data_mnist_split.splits
    assert back.counts() == data_mnist_split.counts() and back.count_table() == data_mnist_split.count_table()
    assert (back.head_classes, back.tail_classes, back.seed) == ([0, 1, 2, 3], [4, 5, 6, 7, 8, 9], 0)
    with pytest.raises(TailsynthError, match="split sidecar not found"):
        (tmp_path / "s.json").unlink()
        Split.read(tmp_path / "s.csv")


def test_split_arrays_select_by_id(tmp_path):
    split = build_split(load_benchmark_config("digits-lt"))
    arrays = load_images(split.source, 8, 1, cache_dir=tmp_path / "c")
    images, labels = split_arrays(split, arrays, "val")
    assert images.shape == (5 * 20 + 5 * 5, 8, 8, 1) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [20] * 5 + [5] * 5
    first = split.ids("val")[0]
    assert np.array_equal(images[0], arrays.images[arrays.ids.index(first)])
    with pytest.raises(TailsynthError, match="unknown split 'dev'"):
        split_arrays(split, arrays, "dev")


def test_split_arrays_error_when_source_changed(tmp_path):
    root = tmp_path / "f"
    for name, n in (("a", 30), ("b", 30)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), i).save(root / name / f"{i}.png")
    cfg = BenchmarkConfig(name="tiny", source=FolderSource(path=str(root)), head=["a"], tail=["b"],
                          n_tail=5, n_val_head=3, n_val_tail=2)
    split = build_split(cfg)
    assert split.counts() == {"a": {"train": 21, "val": 3, "test": 6}, "b": {"train": 5, "val": 2, "test": 6}}
    removed = split.ids("train")[0]
    (root / removed).unlink()
    arrays = load_images(split.source, 4, 1, cache_dir=tmp_path / "c")
    with pytest.raises(TailsynthError, match=r"missing from the source .*" + removed):
        split_arrays(split, arrays, "train")


def test_config_errors():
    with pytest.raises(TailsynthError, match="unknown key 'n_tails'"):
        load_benchmark_config("mnist5k-lt", ["n_tails=3"])
    with pytest.raises(TailsynthError, match="unknown benchmark 'nope'.*mnist5k-lt.*pbc-lt"):
        load_benchmark_config("nope")
    with pytest.raises(TailsynthError, match="'kind'"):
        load_benchmark_config("mnist5k-lt", ["source.kind=zip"])
    with pytest.raises(TailsynthError, match=r"unknown tail class\(es\) \['eleven'\]; the source has classes "
                                             r"\['0', '1', '2'"):
        build_split(load_benchmark_config("mnist5k-lt", ["tail=[4, eleven]"]))
    with pytest.raises(TailsynthError, match=r"classes \['3'\] are in both head and tail"):
        build_split(load_benchmark_config("mnist5k-lt", ["tail=[3, 4]"]))
    with pytest.raises(TailsynthError, match=r"tail class '4' has 400 images .*fewer than n_tail \+ val = 395 \+ 10"):
        build_split(load_benchmark_config("mnist5k-lt", ["n_tail=395"]))
    with pytest.raises(TailsynthError, match=r"head class '0' has 400 images .*fewer than 400 val \+ 1 train"):
        build_split(load_benchmark_config("mnist5k-lt", ["n_val_head=400"]))
    with pytest.raises(TailsynthError, match="test_fraction"):
        load_benchmark_config("mnist5k-lt", ["test_fraction=1.5"])


def test_unnamed_classes_dropped_and_groups():
    split = build_split(load_benchmark_config("mnist5k-lt", [
        "head=[1, 0]", "tail=[7]", "groups={many: [1, 0], few: [7]}"]))
    assert split.class_names == ["1", "0", "7"] and split.groups == {"many": [0, 1], "few": [2]}
    assert "many" in split.count_table()
    with pytest.raises(TailsynthError, match=r"group 'few' names classes \['8'\]"):
        build_split(load_benchmark_config("mnist5k-lt", ["head=[0]", "tail=[7]", "groups={few: [8]}"]))


def test_imbalance_factor_profile():
    split = build_split(load_benchmark_config("mnist5k-lt", [
        "head=null", "tail=null", "imbalance_factor=10", "val_fraction=0.1"]))
    counts = split.counts()
    for k in range(10):
        n_k = int(400 * 10 ** (-k / 9))  # Cao et al. 2019 with n_max = 400 (the pool after the 20% test)
        c = counts[str(k)]
        assert c["train"] + c["val"] == n_k and c["val"] == max(1, int(np.floor(0.1 * n_k + 0.5)))
        assert c["test"] == 100
    assert split.tail_classes == []


def test_official_val_is_subsampled(tmp_path):
    parts = {}
    for name, n in (("train", 40), ("val", 20), ("test", 10)):
        parts[f"{name}_images"] = np.zeros((n, 4, 4), dtype=np.uint8)
        parts[f"{name}_labels"] = np.arange(n) % 2
    np.savez(tmp_path / "med.npz", **parts)
    cfg = BenchmarkConfig(name="med", source=NpzSource(path=str(tmp_path / "med.npz")), head=["0"], tail=["1"],
                          n_tail=4, n_val_head=6, n_val_tail=3)
    split = build_split(cfg)
    assert split.counts() == {"0": {"train": 20, "val": 6, "test": 5}, "1": {"train": 4, "val": 3, "test": 5}}
    assert all(sid.startswith("val/") for sid in split.ids("val"))
    assert all(sid.startswith("test/") for sid in split.ids("test"))


@pytest.mark.slow
@pytest.mark.skipif(not PBC.is_dir(), reason="shared PBC data not present")
def test_pbc_lt_split_counts():
    split = build_split(load_benchmark_config("pbc-lt"))
    index = index_source(split.source)
    totals = dict(zip(index.class_names, np.bincount(index.labels).tolist()))
    counts = split.counts()
    for name in split.class_names:
        n = totals[name]
        assert counts[name]["test"] == int(np.floor(0.2 * n + 0.5))
        if name in ("erythroblast", "monocyte", "basophil", "lymphocyte"):
            assert counts[name]["train"] == 10 and counts[name]["val"] == 10
        else:
            assert counts[name]["val"] == 100
            assert counts[name]["train"] == n - 100 - counts[name]["test"]


@pytest.mark.skipif(not CIFAR10.is_file(), reason="shared CIFAR-LT data not present")
def test_cifar10_lt_uses_official_test_and_val_fraction():
    split = build_split(load_benchmark_config("cifar10-lt"))
    per_class = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    for k, name in enumerate(split.class_names):
        c = split.counts()[name]
        assert c["test"] == 1000 and c["train"] + c["val"] == per_class[k]
        assert c["val"] == max(1, int(np.floor(0.1 * per_class[k] + 0.5)))
    assert all(sid.startswith("test/") for sid in split.ids("test"))
    assert split.tail_classes == [7, 8, 9] and split.groups["medium"] == [4, 5, 6]


@pytest.mark.skipif(not CIFAR10.is_file(), reason="shared CIFAR-LT data not present")
def test_cifar10_tail6_counts_val_per_class_from_the_train_file():
    """val_fraction: null takes n_val_head / n_val_tail (100 / 10) from the official train file; the 6 tail
    classes keep exactly 10 training images, the head at most 1000; test = the official 1000 per class."""
    split = build_split(load_benchmark_config("cifar10-tail6"))
    per_class = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    for k, name in enumerate(split.class_names):
        c = split.counts()[name]
        tail = k >= 4
        assert c["test"] == 1000 and c["val"] == (10 if tail else 100)
        assert c["train"] == (10 if tail else min(1000, per_class[k] - 100))
    assert len(split.tail_classes) == 6 and all(sid.startswith("test/") for sid in split.ids("test"))
