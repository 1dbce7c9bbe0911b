"""IDX sources (MNIST-like files): header parsing, gzip or raw, official test pair, errors that name the file."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from tailsynth.data import IdxSource, index_source, load_images
from tailsynth.data.idx import read_idx
from tailsynth.errors import TailsynthError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written from the format's description (big-endian sizes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, array: np.ndarray, compress: bool) -> str:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


@pytest.fixture
def idx_set(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    files = dict(path=write(tmp_path / "tr-img.gz", train, True), labels=write(tmp_path / "tr-lab.gz",
                 np.array([0, 1, 2, 0, 1, 2, 2]), True),
                 test_path=write(tmp_path / "te-img", test, False), test_labels=write(tmp_path / "te-lab",
                 np.array([2, 1, 0]), False))
    return files, train, test


def test_idx_index_and_pixels_with_official_test(idx_set, tmp_path):
    files, train, test = idx_set
    src = IdxSource(**files, class_names=["a", "b", "c"])
    index = index_source(src)
    assert index.ids[:2] == ["train/0", "train/1"] and index.ids[-1] == "test/2"
    assert index.official_split.tolist() == ["train"] * 7 + ["test"] * 3
    assert index.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 1, 0] and index.class_names == ["a", "b", "c"]
    # 5x6 images are centre-cropped to 5x5 (columns 0..4 of 6, the crop's left offset is (6 - 5) // 2 = 0)
    arrays = load_images(src, 5, 1, cache_dir=tmp_path / "c")
    assert arrays.images.shape == (10, 5, 5, 1)
    left = (6 - 5) // 2
    assert np.array_equal(arrays.images[0, :, :, 0], train[0, :, left:left + 5])
    assert np.array_equal(arrays.images[9, :, :, 0], test[2, :, left:left + 5])
    single = index_source(IdxSource(path=files["path"], labels=files["labels"]))
    assert single.ids[0] == "0" and single.official_split is None and single.class_names == ["0", "1", "2"]


def test_idx_fingerprint_follows_content(idx_set, tmp_path):
    files, train, _ = idx_set
    before = index_source(IdxSource(**files)).fingerprint
    write(tmp_path / "tr-img.gz", train[::-1].copy(), True)
    assert index_source(IdxSource(**files)).fingerprint != before


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01" + b[1:], "is not an IDX file"),
    (lambda b: b[:2] + b"\x0d" + b[3:], r"data type 0x0d, only unsigned bytes"),
    (lambda b: b[:-3], r"header says shape \(7, 5, 6\) \(210 bytes\) but 207 bytes"),
])
def test_idx_bad_files_are_named(tmp_path, mutate, message):
    raw = idx_bytes(np.zeros((7, 5, 6), dtype=np.uint8))
    bad = tmp_path / "bad-img"
    bad.write_bytes(mutate(raw))
    with pytest.raises(TailsynthError, match=message) as err:
        read_idx(bad, 3)
    assert str(bad) in str(err.value)


def test_idx_source_errors(idx_set, tmp_path):
    files, _, _ = idx_set
    with pytest.raises(TailsynthError, match=r"2 dimension\(s\), expected 1 for labels"):
        index_source(IdxSource(path=files["path"], labels=write(tmp_path / "l2", np.zeros((3, 2)), False)))
    with pytest.raises(TailsynthError, match="IDX file not found: .*missing-labels"):
        index_source(IdxSource(path=files["path"], labels=str(tmp_path / "missing-labels")))
    with pytest.raises(TailsynthError, match="IDX images file not found: .*missing-images"):
        index_source(IdxSource(path=str(tmp_path / "missing-images"), labels=files["labels"]))
    with pytest.raises(TailsynthError, match="labels range 0..2 is outside the 2 class names"):
        index_source(IdxSource(path=files["path"], labels=files["labels"], class_names=["a", "b"]))
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8)))[:-6])
    with pytest.raises(TailsynthError, match="corrupt gzip data"):
        read_idx(tmp_path / "trunc.gz", 1)
    with pytest.raises(ValueError, match="test_path and test_labels go together"):
        IdxSource(path=files["path"], labels=files["labels"], test_path=files["test_path"])


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_files_parse():
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 1)
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    assert read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 3).shape == (10000, 28, 28)
