"""How close the CPU paths come to the machine's limit, measured in one run (one JSON):

1. ``peak``: a large fp32 matmul (GFLOP/s = 2 n^3 / t) and a 3x3 convolution of the pixel UNet's shapes;
2. ``unet_chain``: the pbc-lt-cpu pixel UNet (32 px, channels 32/64/64) through a 20-step DDIM chain with
   CFG, forward + backward to x_T (what one DiG-IN Adam step costs), FLOPs counted by
   ``torch.utils.flop_counter.FlopCounterMode`` -> achieved GFLOP/s and its share of the matmul peak;
3. ``trainer``: one epoch of the project's ``fit`` (ResNet-18 width 0.25, 32 px, batch 128, AdamW, the
   pipeline's augmentation) against a plain PyTorch loop on the same model, data, batches and optimizer ->
   the trainer's overhead (checkpoint writes, per-epoch bookkeeping).

    python benchmarks/bench_cpu_limits.py --out benchmarks/results/speed/cpu-limits.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tailsynth.diffusion import PixelBackend, ddim_sample, initial_noise
from tailsynth.models import create_model
from tailsynth.training import ArrayData, CriterionObjective, ImageBatches, TrainConfig, fit
from tailsynth.training.augment import augment, to_float
from tailsynth.training.samplers import SAMPLERS
from tailsynth.utils import derive_seed


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one warm-up call), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak(n: int = 2048) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = best_of(lambda: a @ b, 5)
    x = torch.randn(32, 64, 32, 32)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    with torch.no_grad():
        t_conv = best_of(lambda: conv(x), 5)
    conv_flops = 2 * 32 * 64 * 32 * 32 * 64 * 9
    return {"matmul_n": n, "matmul_gflops": 2 * n ** 3 / t / 1e9, "conv3x3_64ch_32px_b32_gflops": conv_flops / t_conv / 1e9}


def pbc_chain_step(batch: int = 8, steps: int = 20):
    """The pbc-lt-cpu pixel UNet (randomly initialised) and one DiG-IN step's work on it: a ``steps``-step DDIM
    chain with CFG 3 from fixed x_T, forward + backward to x_T; returns (backend, step), step() -> (sample, grad)."""
    backend = PixelBackend({"num_classes": 4, "image_size": 32, "block_out_channels": [32, 64, 64],
                            "attention_levels": [False, True, True], "cross_attention_dim": 64,
                            "attention_head_dim": 32, "tokens_per_class": 4, "prediction": "v"}, seed=0).eval()
    backend.requires_grad_(False)
    ids = torch.arange(batch) % 4
    cond, uncond = backend.encode_condition(ids).detach(), backend.null_condition(batch).detach()
    x_T = initial_noise((batch, 3, 32, 32), torch.Generator().manual_seed(0))

    def step():
        x = x_T.clone().requires_grad_(True)
        out = ddim_sample(backend.eps, x, cond, uncond, backend.alphas_cumprod, num_steps=steps, guidance_scale=3.0,
                          clip_x0=backend.clip_x0)
        out.sample.square().mean().backward()
        return out.sample.detach(), x.grad

    return backend, step


def unet_chain(batch: int = 8, steps: int = 20) -> dict:
    _, once = pbc_chain_step(batch, steps)

    counter = FlopCounterMode(display=False)
    with counter:
        once()
    flops = counter.get_total_flops()
    t = best_of(once, 2)
    return {"batch": batch, "ddim_steps": steps, "cfg": 3.0, "gflop_per_chain": flops / 1e9, "seconds": t,
            "gflops": flops / t / 1e9}


def plain_epoch(model, data: ArrayData, cfg: TrainConfig, seed: int) -> None:
    """The same batches, augmentation and AdamW step as ``fit``'s first epoch, without the trainer."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(derive_seed(seed, "epoch", 0))
    order = SAMPLERS.get("instance")(data.labels, g)
    model.train()
    for b in range(math.ceil(len(data.labels) / cfg.batch_size)):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x = augment(to_float(torch.from_numpy(data.images[idx])), cfg.augment, g)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(data.labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def trainer(n: int = 2048) -> dict:
    rng = np.random.default_rng(0)
    data = ArrayData(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), (np.arange(n) % 8).astype(np.int64))
    cfg = TrainConfig(epochs=1, batch_size=128, lr=1e-3, weight_decay=5e-4, selection="last")

    def run_fit():
        torch.manual_seed(0)
        model = create_model("resnet18", 8, width=0.25, small_input=True)
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, CriterionObjective(torch.nn.CrossEntropyLoss()), ImageBatches(data, cfg.augment), data, cfg,
                Path(tmp), seed=0, device=torch.device("cpu"), select=None, log=lambda m: None, progress=False)

    def run_plain():
        torch.manual_seed(0)
        plain_epoch(create_model("resnet18", 8, width=0.25, small_input=True), data, cfg, 0)

    t_fit, t_plain = best_of(run_fit, 2), best_of(run_plain, 2)
    return {"images": n, "fit_s": t_fit, "plain_loop_s": t_plain, "overhead": t_fit / t_plain - 1,
            "target": "within 10 %"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/speed/cpu-limits.json")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "kernels": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}}
    try:
        with open("/proc/cpuinfo") as f:
            report["machine"]["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report["peak"] = peak()
    report["unet_chain"] = unet_chain()
    report["unet_chain"]["share_of_matmul_peak"] = report["unet_chain"]["gflops"] / report["peak"]["matmul_gflops"]
    report["trainer"] = trainer()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for section in ("peak", "unet_chain", "trainer"):
        print(section, {k: round(v, 3) if isinstance(v, float) else v for k, v in report[section].items()})
    return report


if __name__ == "__main__":
    main()
