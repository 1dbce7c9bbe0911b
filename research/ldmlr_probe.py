"""Probe LDMLR's feature generator on the validation features (no test data): sample pseudo-features of the
chosen classes from a trained ``train_feature_diffusion`` artifact under several sampler settings and print
their distance to the real validation features (report/feature_quality.py), next to the train-vs-val floor.

    python research/ldmlr_probe.py runs/train_feature_diffusion/<fp> runs/encode_features/<fp> \
        --classes 3 4 6 7 --cfg 1 2 3 5 --steps 100
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from tailsynth.data.features import FeatureSet
from tailsynth.diffusion.feature_diffusion import FeatureSamplingConfig, load_feature_diffusion, sample_features
from tailsynth.report.feature_quality import distances


def probe(diffusion_dir: str, features_dir: str, classes: list[int], scales: list[float], steps: int, n: int = 100,
          sampler: str = "ddim") -> list[dict]:
    fs = FeatureSet.read(features_dir)
    z_val, y_val = fs.subset("val")
    z_tr, y_tr = fs.subset("train")
    model = load_feature_diffusion(diffusion_dir)
    rows = []
    for w in scales:
        labels = np.repeat(classes, n)
        gen = sample_features(model, labels, FeatureSamplingConfig(sampler=sampler, num_steps=steps, guidance_scale=w), 0)
        for c in classes:
            d = distances(gen[labels == c], z_val[y_val == c])
            floor = distances(z_tr[y_tr == c], z_val[y_val == c])
            rows.append({"cfg": w, "class": int(c), **d, **{f"floor_{k}": v for k, v in floor.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("diffusion")
    p.add_argument("features")
    p.add_argument("--classes", type=int, nargs="+", required=True)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--sampler", default="ddim")
    a = p.parse_args()
    rows = probe(a.diffusion, a.features, a.classes, a.cfg, a.steps, sampler=a.sampler)
    for w in a.cfg:
        sel = [r for r in rows if r["cfg"] == w]
        print(f"cfg {w}: mean_dist {np.mean([r['mean_dist'] for r in sel]):.3f} (floor "
              f"{np.mean([r['floor_mean_dist'] for r in sel]):.3f})  cov_dist {np.mean([r['cov_dist'] for r in sel]):.3f} "
              f"(floor {np.mean([r['floor_cov_dist'] for r in sel]):.3f})  frechet {np.mean([r['frechet'] for r in sel]):.1f} "
              f"(floor {np.mean([r['floor_frechet'] for r in sel]):.1f})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
