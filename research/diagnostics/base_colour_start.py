"""Does the base model lose the image mean (DC) at the start of sampling? x_T with the data mean leaked in."""
import glob
import numpy as np, torch
from PIL import Image
from tailsynth.diffusion import PixelBackend, ddim_sample
torch.set_num_threads(1)
be = PixelBackend.from_pretrained(glob.glob("runs/train_diffusion/*/model")[0]).eval()
name, cid, n = "neutrophil", 0, 16
real = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BICUBIC)) / 255.0
                 for f in sorted(glob.glob(f"../shared/data/pbc/{name}/*.jpg"))[:200]])
mu = torch.tensor(real.mean((0, 1, 2)), dtype=torch.float32).view(1, 3, 1, 1) * 2 - 1
g = torch.Generator().manual_seed(0)
x_T = torch.randn((n, 3, 32, 32), generator=g)
cond = be.encode_condition(class_ids=torch.full((n,), cid, dtype=torch.long)); unc = be.null_condition(n)
a = be.alphas_cumprod[951]
for label, start in (("pure noise", x_T), ("noise + sqrt(abar)*mean", x_T * (1 - a).sqrt() + a.sqrt() * mu)):
    for steps in (20, 50):
        with torch.no_grad():
            img = be.decode(ddim_sample(be.eps, start, cond, unc, be.alphas_cumprod, num_steps=steps,
                                        guidance_scale=3.0, clip_x0=True).sample)
        print(f"{label:26s} {steps} steps: mean RGB {img.mean((0, 2, 3)).numpy().round(3)}  (real {real.mean((0,1,2)).round(3)})")
# the model's x0-hat at t=951 from pure noise: what DC does it predict?
with torch.no_grad():
    t = 951
    eps = be.eps(x_T, torch.tensor(t), cond)
    x0 = (x_T - (1 - a).sqrt() * eps) / a.sqrt()
    print("x0-hat at t=951 (unclipped) mean per channel", ((x0.mean((0, 2, 3)) + 1) / 2).numpy().round(3),
          "eps-hat mean", eps.mean((0, 2, 3)).numpy().round(4), "x_T mean", x_T.mean((0, 2, 3)).numpy().round(4))
