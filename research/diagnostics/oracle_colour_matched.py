"""Diagnosis (not a method): is the synthetic images' colour what the oracle rejects?
Oracle accuracy on each synthetic set as generated, and after matching each image's per-channel mean/std
to the mean/std of the real tail TRAINING images of its class (Reinhard-style colour transfer)."""
import glob
import json
from pathlib import Path
import numpy as np, torch
from tailsynth.data.synthetic import SyntheticSet
from tailsynth.engine.artifacts import load_classifier, read_split, split_data
from tailsynth.engine.store import Artifact
from tailsynth.data import DataConfig
from tailsynth.training.trainer import predict

data = DataConfig(image_size=32, channels=3)
p = Path(glob.glob("runs/split/*/manifest.json")[0]).parent
split = read_split(Artifact("split", p.name, p))
train = split_data(split, data, "train")
oracle, _ = load_classifier(Path(glob.glob("runs/train_oracle/*/manifest.json")[0]).parent)
dev = torch.device("cpu")
for synth in sorted(glob.glob("runs/synthesize/*/manifest.json")):
    d = Path(synth).parent
    method = json.load(open(synth))["config"]["method"]
    imgs, labels = SyntheticSet.read(d).select(100).load_images(split.class_names, data.image_size, data.channels)
    fixed = imgs.astype(np.float32).copy()
    for c in np.unique(labels):
        real = train.images[train.labels == c].astype(np.float32)
        mu_r, sd_r = real.mean((0, 1, 2)), real.std((0, 1, 2))
        sel = labels == c
        x = fixed[sel]
        mu_s, sd_s = x.mean((0, 1, 2)), x.std((0, 1, 2))
        fixed[sel] = (x - mu_s) / sd_s * sd_r + mu_r
    fixed = fixed.clip(0, 255).round().astype(np.uint8)
    for label, arr in (("as generated", imgs), ("colour-matched", fixed)):
        logits, _ = predict(oracle, arr, dev)
        pred = logits.argmax(1)
        per = {split.class_names[c]: round(100 * float((pred[labels == c] == c).mean()), 1) for c in np.unique(labels)}
        print(f"{method:8s} {label:15s} oracle acc {100 * (pred == labels).mean():5.1f}  {per}  mean RGB "
              f"{(arr.reshape(-1, 3).mean(0) / 255).round(3)}")
real_rgb = train.images[np.isin(train.labels, split.tail_classes)].reshape(-1, 3).mean(0) / 255
print("real tail train mean RGB", real_rgb.round(3))
