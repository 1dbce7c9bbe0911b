"""DiG-IN throughput and memory: the official batch-1 loop vs the batched implementation (LoGex §3 step 3).

In one process, on the same pixel UNet, classifier, seeds and settings:
  (a) ``dig_in_reference`` -- batch 1, fp32, per-step gradient checkpointing, torch.optim.Adam;
  (b) ``dig_in`` -- shrinking/refilled batch, per-sample Adam, no checkpointing (its best setting when the
      memory fits; bf16 autocast on CUDA).
Prints accepted images per second for both, their ratio, mean Adam steps and acceptance rates. Peak memory
of one guidance iteration (forward through the DDIM chain + backward) with and without checkpointing is
measured in fresh subprocesses (CPU: increase of the peak RSS, VmHWM reset after a warmed-up no-grad pass; CUDA:
torch.cuda.max_memory_allocated).

The UNet is a randomly initialised tiny pixel UNet (channels 16, 32, 32); the classifier is a random ResNet-32 (width 0.25)
whose head is rescaled so its logits on unguided samples have standard deviation ``--logit-std``: a tempered
random classifier on which reaching ``--threshold`` takes a realistic, non-trivial number of steps.

    OMP_NUM_THREADS=2 python -u benchmarks/bench_guidance.py --n-images 16 --steps 20 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from tailsynth.diffusion import PixelBackend, initial_noise
from tailsynth.diffusion.guidance import ClassifierGuide, DigInConfig, dig_in, dig_in_reference
from tailsynth.diffusion.guidance.common import frozen
from tailsynth.diffusion.guidance.dig_in import evaluate
from tailsynth.models import create_model


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--max-opt-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--channels", default="16,32,32", help="UNet block_out_channels (tiny pixel backend)")
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=99)  # LoGex's synthesis seed
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="also time the batched loop under bf16 autocast (CPUs with native bf16: AVX512-BF16 / AMX)")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    p.add_argument("--memory-child", choices=["ckpt", "full"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def setup(args):
    """Backend, guide, targets, cond, uncond, x_T -- identical for every run with the same args."""
    dev = torch.device(args.device)
    unet = dict(block_out_channels=tuple(int(c) for c in args.channels.split(",")), norm_num_groups=8,
                attention_head_dim=16, cross_attention_dim=32)
    backend = PixelBackend(dict(num_classes=args.num_classes, image_size=args.size, **unet), seed=args.seed)
    backend = backend.to(dev).eval()
    torch.manual_seed(args.seed)
    clf = create_model("resnet32", args.num_classes, in_channels=3, width=0.25).to(dev)
    guide = ClassifierGuide(clf, args.size, 3)
    targets = torch.arange(args.n_images, device=dev) % args.num_classes
    cond, uncond = backend.encode_condition(targets).detach(), backend.null_condition(args.n_images).detach()
    x_T = initial_noise((args.n_images, *backend.latent_shape(args.size)), torch.Generator().manual_seed(args.seed),
                        device=dev)
    with torch.no_grad():  # temper the random head: logits of unguided samples get std = logit_std
        cfg = DigInConfig(num_steps=args.steps, max_opt_steps=0, threshold=2.0, batch_size=args.batch_size,
                          checkpoint=False)
        images = dig_in(backend, guide, targets, cond, uncond, x_T, cfg).images
        std = guide(images).std()
        clf.head.weight.mul_(args.logit_std / std)
        clf.head.bias.mul_(args.logit_std / std)
    return backend, guide, targets, cond, uncond, x_T


def config(args, checkpoint: bool, cpu_bf16: bool = False) -> DigInConfig:
    return DigInConfig(num_steps=args.steps, max_opt_steps=args.max_opt_steps, threshold=args.threshold,
                       batch_size=args.batch_size, checkpoint=checkpoint, cpu_bf16=cpu_bf16)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    res = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return res, time.perf_counter() - t0


def _rss(field: str) -> int | None:
    """VmRSS / VmHWM of this process in bytes from /proc (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs "5"); ru_maxrss cannot be reset and is inherited
    across fork/exec from the parent's peak, so it is only a fallback."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> dict:
    """Peak memory of one guidance iteration at batch ``batch_size`` (this process only)."""
    backend, guide, targets, cond, uncond, x_T = setup(args)
    b, S, dev = min(args.batch_size, args.n_images), args.steps, x_T.device
    cfg = config(args, args.memory_child == "ckpt")
    x = x_T[:b].clone().requires_grad_(True)
    d_c = torch.zeros(S, b, *cond.shape[1:], device=dev, requires_grad=True)
    d_u = torch.zeros(S, b, *uncond.shape[1:], device=dev, requires_grad=True)

    def once():
        conds = [cond[:b] + d_c[s] for s in range(S)]
        unconds = [uncond[:b] + d_u[s] for s in range(S)]
        conf = evaluate(backend, guide, x, conds, unconds, targets[:b], cfg, cfg.checkpoint, cfg.bf16).weighted
        return conf

    with frozen(backend, guide):
        with torch.no_grad():
            once()  # warm the allocator with everything but the autograd graph
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        elif _reset_peak_rss():
            base = _rss("VmRSS")
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        torch.autograd.grad(-once().sum(), [x, d_c, d_u])
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            peak = _rss("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": args.memory_child, "peak_increase_bytes": peak - base}


def measure_memory(argv: list[str]) -> dict[str, int]:
    out = {}
    for mode in ("full", "ckpt"):
        proc = subprocess.run([sys.executable, __file__, *argv, "--memory-child", mode], capture_output=True,
                              text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_increase_bytes"]
    return out


def report(name: str, res, seconds: float) -> float:
    acc = int(res.accepted.sum())
    rate = acc / seconds
    print(f"{name:10s} {seconds:8.1f} s  accepted {acc}/{res.accepted.numel()} "
          f"({100 * acc / res.accepted.numel():.1f} %)  mean Adam steps {res.opt_steps.float().mean():.2f}  "
          f"mean conf {res.confidence.mean():.3f}  -> {rate:.4f} accepted img/s")
    return rate


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return
    mem = None if args.skip_memory else measure_memory([a for a in argv if a != "--skip-memory"])
    backend, guide, targets, cond, uncond, x_T = setup(args)
    dev = x_T.device
    print(f"device {dev}, threads {torch.get_num_threads()}, {args.n_images} images at {args.size} px, "
          f"{args.steps} DDIM steps, threshold {args.threshold}, max {args.max_opt_steps} Adam steps, "
          f"batch {args.batch_size}, UNet {sum(p.numel() for p in backend.unet.parameters()) / 1e6:.2f} M params")
    ours, t_ours = timed(lambda: dig_in(backend, guide, targets, cond, uncond, x_T, config(args, False)), dev)
    r_ours = report("batched", ours, t_ours)
    figures = {"args": vars(args), "threads": torch.get_num_threads(), "batched_s": t_ours,
               "batched_accepted": int(ours.accepted.sum()), "batched_accepted_per_s": r_ours}
    if args.cpu_bf16:
        from tailsynth.diffusion.guidance.common import native_cpu_bf16
        if dev.type != "cpu" or not native_cpu_bf16():
            raise SystemExit("--cpu-bf16 needs a CPU device with native bf16 (AVX512-BF16 or AMX)")
        half, t_half = timed(lambda: dig_in(backend, guide, targets, cond, uncond, x_T, config(args, False, True)),
                             dev)
        r_half = report("batched bf16", half, t_half)
        figures.update({"batched_bf16_s": t_half, "batched_bf16_accepted": int(half.accepted.sum()),
                        "batched_bf16_accepted_per_s": r_half,
                        "bf16_vs_fp32": {
                            "wall_time_ratio": t_ours / t_half,
                            "same_accept_decision": float((half.accepted == ours.accepted).float().mean()),
                            "mean_adam_steps": [float(ours.opt_steps.float().mean()),
                                                float(half.opt_steps.float().mean())],
                            "max_confidence_diff": float((half.confidence - ours.confidence).abs().max()),
                            "max_image_diff": float((half.images - ours.images).abs().max())}})
        print(f"bf16 vs fp32 batched: {t_ours / t_half:.2f}x wall time; same accept decision for "
              f"{100 * figures['bf16_vs_fp32']['same_accept_decision']:.0f} % of images")
    if not args.skip_reference:
        ref, t_ref = timed(lambda: dig_in_reference(backend, guide, targets, cond, uncond, x_T,
                                                    config(args, True)), dev)
        r_ref = report("reference", ref, t_ref)
        figures.update({"reference_s": t_ref, "reference_accepted": int(ref.accepted.sum()),
                        "speedup_accepted_per_s": r_ours / max(r_ref, 1e-12),
                        "speedup_wall_time": t_ref / t_ours})
        if args.cpu_bf16:
            figures.update({"speedup_bf16_accepted_per_s": figures["batched_bf16_accepted_per_s"] / max(r_ref, 1e-12),
                            "speedup_bf16_wall_time": t_ref / figures["batched_bf16_s"]})
            print(f"speed-up with bf16 (accepted img/s) {figures['speedup_bf16_accepted_per_s']:.2f}x; "
                  f"wall-time ratio {figures['speedup_bf16_wall_time']:.2f}x")
        same = (ours.accepted == ref.accepted).float().mean()
        print(f"speed-up (accepted img/s) {r_ours / max(r_ref, 1e-12):.2f}x; wall-time ratio {t_ref / t_ours:.2f}x; "
              f"acceptance {100 * ours.accepted.float().mean():.1f} % vs {100 * ref.accepted.float().mean():.1f} %; "
              f"same accept decision for {100 * same:.0f} % of images; "
              f"max |image diff| {(ours.images - ref.images).abs().max():.2e}, "
              f"max |confidence diff| {(ours.confidence - ref.confidence).abs().max():.2e}")
    if mem is not None:
        figures["peak_memory_bytes"] = mem
        print(f"peak memory of one iteration at batch {min(args.batch_size, args.n_images)}: full backprop "
              f"{mem['full'] / 2**20:.1f} MiB, per-step checkpointing {mem['ckpt'] / 2**20:.1f} MiB "
              f"({100 * mem['ckpt'] / max(mem['full'], 1):.1f} % of full)")

    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
