"""Diagnosis: mean RGB of base-model samples (head class) vs real head images, CFG 1 and 3, x0 clipping on/off.

Run from the project root after `tailsynth run pbc-lt-cpu --runs runs`:
`python research/diagnostics/base_colour.py [runs/train_diffusion/<fingerprint>/model]` (default: the only base
model under runs/train_diffusion). "clip True" clips x0-hat to the backend's image range (per channel when the
model was trained on centred data, diffusion.pixel.data_mean). """
import glob
import sys
import numpy as np, torch
from PIL import Image
from tailsynth.diffusion import PixelBackend, ddim_sample
torch.set_num_threads(1)
bases = sys.argv[1:] or glob.glob("runs/train_diffusion/*/model")
if len(bases) != 1:
    sys.exit(f"give one base model folder; found {bases}")
base = bases[0]
be = PixelBackend.from_pretrained(base).eval()
names = be.class_names if hasattr(be, "class_names") else None
print("classes", names)
g = torch.Generator().manual_seed(0)
n = 16
for cid, name in enumerate(names[:2]):
    real = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BICUBIC)) / 255.0
                     for f in sorted(glob.glob(f"../shared/data/pbc/{name}/*.jpg"))[:200]])
    print(name, "real mean RGB", real.mean((0, 1, 2)).round(3), "std", real.std((0,1,2)).round(3))
    x_T = torch.randn((n, *be.latent_shape(32)), generator=g)
    cond = be.encode_condition(class_ids=torch.full((n,), cid, dtype=torch.long))
    unc = be.null_condition(n)
    for w in (1.0, 3.0):
        for clip in (True, False):
            with torch.no_grad():
                out = ddim_sample(be.eps, x_T, cond, unc, be.alphas_cumprod, num_steps=20, guidance_scale=w, clip_x0=be.clip_x0 if clip else False)
                img = be.decode(out.sample).clamp(0, 1)
            m = img.mean((0, 2, 3)).numpy().round(3)
            s = img.permute(0,2,3,1).reshape(-1,3).std(0).numpy().round(3)
            print(f"  cfg {w} clip {clip}: sample mean RGB {m} std {s}")
