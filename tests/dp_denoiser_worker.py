"""Worker for tests/test_distributed.py: train a tiny pixel denoiser (base) or LoRA with fit_denoiser, in one
process or under torchrun; rank 0 saves the trained parameters to OUT/params.safetensors.

usage: python dp_denoiser_worker.py OUT {base|lora} STEPS [MAX_NEW_STEPS]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tailsynth import distributed
from tailsynth.diffusion import DenoiserTrainConfig, LoraAdaptConfig, PixelBackend, adapt_lora, train_denoiser

TINY = dict(num_classes=3, image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8, tokens_per_class=2)


def main() -> None:
    out, kind, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    max_new = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    distributed.init()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(24) % 3
    torch.manual_seed(0)
    backend = PixelBackend(TINY, seed=0)
    train = dict(steps=steps, batch_size=7, lr=1e-2, checkpoint_every=4, progress=False, vflip=True)
    if kind == "base":
        result = train_denoiser(backend, images, labels, DenoiserTrainConfig(**train, ema_decay=0.9),
                                out / "work", "cpu", 5, max_new_steps=max_new)
        params = dict(backend.named_parameters())
    else:
        cfg = LoraAdaptConfig(rank=2, target="all_attention", train=train)
        result = adapt_lora(backend, images[:8], labels[:8] % 2, ["a", "b"], cfg, out / "work", "cpu", 5,
                            max_new_steps=max_new).train
        params = {k: p for k, p in backend.named_parameters() if p.requires_grad}
    if distributed.world()[0] == 0 and result.finished:
        save_file({k: v.detach().contiguous() for k, v in params.items()}, str(out / "params.safetensors"))
    print(f"rank {distributed.world()[0]} step {result.step} loss {result.losses[-1] if result.losses else None}")


if __name__ == "__main__":
    main()
