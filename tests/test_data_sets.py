"""Synthetic sets and feature sets as data: round trips, per-class prefixes, roles, encoder checks."""
import numpy as np
import pytest
from PIL import Image

from tailsynth.data.features import FeatureSet
from tailsynth.data.synthetic import SyntheticSet
from tailsynth.errors import TailsynthError


def _write_set(folder, per_class=3):
    rows = []
    for name, value in (("seven", 40), ("nine", 200)):
        for i in range(per_class):
            rel = f"images/{name}/{i:05d}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), value + i, np.uint8), "L").save(folder / rel)
            rows.append({"file": rel, "class": name, "role": "tail", "method": "lora", "seed": 7, "score": 0.5 + i / 10})
    SyntheticSet(folder, rows).write()


def test_synthetic_set_round_trip_prefixes_and_images(tmp_path):
    _write_set(tmp_path)
    syn = SyntheticSet.read(tmp_path)
    assert len(syn) == 6 and syn.scores().tolist() == [0.5, 0.6, 0.7] * 2
    first = syn.select(2)
    assert [r["file"] for r in first.rows] == ["images/seven/00000.png", "images/seven/00001.png",
                                               "images/nine/00000.png", "images/nine/00001.png"]
    images, labels = first.load_images(["zero", "seven", "nine"], 4, 1)
    assert images.shape == (4, 4, 4, 1) and labels.tolist() == [1, 1, 2, 2]
    assert images[1, 0, 0, 0] == 41 and images[3, 0, 0, 0] == 201
    with pytest.raises(TailsynthError, match="asked for 4 synthetic images per class.*'seven': 3"):
        syn.select(4)
    with pytest.raises(TailsynthError, match=r"unknown classes \['nine'\]"):
        syn.load_images(["seven"], 4, 1)
    assert len(syn.select(role="outlier")) == 0


def test_synthetic_set_refuses_missing_columns_and_unknown_roles(tmp_path):
    (tmp_path / "synthetic.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(TailsynthError, match="missing columns"):
        SyntheticSet.read(tmp_path)
    (tmp_path / "synthetic.csv").write_text("file,class,role,method,seed,score\nx.png,a,weird,m,0,0.1\n")
    with pytest.raises(TailsynthError, match=r"unknown roles \['weird'\]"):
        SyntheticSet.read(tmp_path)


def test_feature_set_round_trip_and_encoder_check(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(4, 3)
    fs = FeatureSet(feats, np.array([0, 1, 1, 0]), np.array(["a", "b", "c", "d"]),
                    np.array(["train", "train", "val", "test"]), np.array(["head", "tail", "tail", "head"]), "abc123")
    fs.write(tmp_path)
    back = FeatureSet.read(tmp_path, encoder="abc123")
    assert np.array_equal(back.features, feats) and back.ids.tolist() == ["a", "b", "c", "d"]
    z, y = back.subset("train")
    assert z.shape == (2, 3) and y.tolist() == [0, 1]
    with pytest.raises(TailsynthError, match="features of encoder abc123, but the head belongs to other"):
        FeatureSet.read(tmp_path, encoder="other")
    with pytest.raises(TailsynthError, match="3 labels for 4 feature vectors"):
        FeatureSet(feats, np.array([0, 1, 1]), fs.ids, fs.splits, fs.roles, "x")
