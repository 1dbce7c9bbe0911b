"""One-command GPU check (at most ~10 minutes on one CUDA GPU): writes one JSON and prints a table.

Sections, each timed and isolated (a failure is recorded with its traceback; later sections still run,
and a section that would start after ``--budget-s`` is skipped):

1. ``code_paths``  -- every code path the pipeline uses on a GPU runs there: bf16 autocast through the
   pixel UNet, a checkpointed DDIM chain's backward, batched DiG-IN, FG-Entropy on the sampler hook, the
   guide's antialiased bicubic resize, one classifier epoch with bf16 autocast, the tail scores.
2. ``dig_in``      -- DiG-IN batched (bf16, no checkpointing) vs the faithful batch-1 fp32 reference with
   per-step checkpointing at 64 px: accepted images per second, their ratio (target >= 5x) and the
   acceptance rates (target: within 5 points).
3. ``memory``      -- peak GPU memory of one guidance iteration at batch 16, 64 px, with and without per-step
   gradient checkpointing.
4. ``throughput``  -- base-diffusion training (the pbc-lt-cpu UNet at 64 px) and classifier training
   (ResNet-18 at 64 px) in images per second.
5. ``sd_512``      -- one DiG-IN optimisation step at 512 px with a randomly initialised UNet and VAE of the
   Stable Diffusion 1.x configuration (20 DDIM steps, CFG, checkpointing, bf16): seconds and peak memory,
   so the paper-scale cost can be estimated without SD weights.
6. ``paper_dryrun`` -- ``pbc-lt-paper-dryrun`` on this device (``benchmarks/paper_dryrun.py``: every stage at real
   size, counts cut) for one row of each family (CE, only LoRA, LoGex with bf16 DiG-IN, FG-Entropy, minority
   guidance, LDMLR, Dream-OOD), on random SD-1.4 / ResNet-50 weights written to a temporary folder; on PBC when
   ``../shared/data/pbc`` is there, else on the built-in MNIST-5k-LT at the same sizes: per-stage wall times, peak
   host memory and the peak GPU memory. Sections run in the order code_paths, sd_512, paper_dryrun, dig_in, memory,
   throughput, so the paper-scale ones come first when the budget runs out.

On a bare GPU machine with this repository:

    pip install torch && pip install -e . && python benchmarks/gpu_check.py   # -> benchmarks/results/speed/gpu-check.json

``--quick --device cpu`` runs every section at toy sizes (the test suite does, to keep this script working).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_guidance  # noqa: E402  (setup / config / timed of the DiG-IN benchmark)

from tailsynth.diffusion import (DenoiserTrainConfig, PixelBackend, ddim_sample, initial_noise,  # noqa: E402
                                 train_denoiser)
from tailsynth.diffusion.guidance import (ClassifierGuide, DigInConfig, FgEntropyConfig, dig_in,  # noqa: E402
                                          dig_in_reference, fg_entropy_sample)
from tailsynth.diffusion.guidance.common import frozen  # noqa: E402
from tailsynth.diffusion.guidance.dig_in import evaluate  # noqa: E402
from tailsynth.models import create_model  # noqa: E402
from tailsynth.training import ArrayData, CriterionObjective, ImageBatches, TrainConfig, fit  # noqa: E402

SIZES = {  # full run on a GPU / --quick smoke run
    "full": dict(px=64, n_images=32, steps=20, opt=20, batch=16, unet="32,64,64", train_steps=100,
                 clf_images=4096, sd_px=512, sd="sd1"),
    "quick": dict(px=16, n_images=2, steps=3, opt=1, batch=2, unet="16,32,32", train_steps=3,
                  clf_images=128, sd_px=32, sd="tiny"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def bench_args(size: dict, device: torch.device) -> argparse.Namespace:
    return bench_guidance.parse(["--device", str(device), "--n-images", str(size["n_images"]), "--steps",
                                 str(size["steps"]), "--size", str(size["px"]), "--max-opt-steps", str(size["opt"]),
                                 "--batch-size", str(size["batch"]), "--channels", size["unet"]])


# --- 1. code paths -------------------------------------------------------------------------------------------
def check_code_paths(size: dict, device: torch.device) -> dict:
    results = {}

    def attempt(name, fn):
        try:
            fn()
            results[name] = "ok"
        except Exception:  # recorded, the next check still runs
            results[name] = traceback.format_exc(limit=3)

    args = bench_args({**size, "n_images": 2, "batch": 2, "opt": 1}, device)
    backend, guide, targets, cond, uncond, x_T = bench_guidance.setup(args)

    def unet_bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = backend.eps(x_T.requires_grad_(True), torch.full((2,), 500, device=device), cond)
        out.float().sum().backward()

    def ddim_checkpointed():
        x = x_T.detach().clone().requires_grad_(True)
        out = ddim_sample(backend.eps, x, cond, uncond, backend.alphas_cumprod, num_steps=args.steps, checkpoint=True)
        (g,) = torch.autograd.grad(out.sample.sum(), [x])
        assert torch.isfinite(g).all()

    def dig_in_bf16():
        res = dig_in(backend, guide, targets, cond, uncond, x_T.detach(),
                     DigInConfig(num_steps=args.steps, max_opt_steps=1, batch_size=2, bf16=True))
        assert torch.isfinite(res.images).all()

    def fg_hook():
        res = fg_entropy_sample(backend, guide, cond, uncond, x_T.detach(),
                                FgEntropyConfig(num_steps=args.steps, every=1, bf16=True))
        assert torch.isfinite(res.entropy).all()

    def guide_resize():
        images = torch.rand(2, 3, 4 * size["px"], 4 * size["px"], device=device, requires_grad=True)
        (g,) = torch.autograd.grad(guide(images).sum(), [images])
        assert torch.isfinite(g).all()

    def classifier_epoch():
        data = ArrayData(np.random.default_rng(0).integers(0, 255, (64, size["px"], size["px"], 3), dtype=np.uint8),
                         np.arange(64) % 4)
        cfg = TrainConfig(epochs=1, batch_size=32, amp=True, selection="last")
        model = create_model("resnet18", 4, width=0.25, small_input=True)
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, CriterionObjective(torch.nn.CrossEntropyLoss()), ImageBatches(data, cfg.augment), data, cfg,
                Path(tmp), seed=0, device=device, select=None, log=lambda m: None, progress=False)

    def scores():
        from tailsynth.ood import evaluate as evaluate_scores
        rng = np.random.default_rng(0)
        logits, feats, labels = rng.normal(size=(40, 4)), rng.normal(size=(40, 8)), np.arange(40) % 4
        res = evaluate_scores(logits, feats, labels, [0, 1], [2, 3], feats, labels)
        assert 0 <= res["fpr95"] <= 1

    for name, fn in [("unet_bf16_autocast", unet_bf16), ("ddim_checkpointed_backward", ddim_checkpointed),
                     ("dig_in_batched_bf16", dig_in_bf16), ("fg_entropy_sampler_hook", fg_hook),
                     ("guide_bicubic_antialias", guide_resize), ("classifier_epoch_amp", classifier_epoch),
                     ("tail_scores", scores)]:
        attempt(name, fn)
    return {"checks": results, "all_ok": all(v == "ok" for v in results.values())}


# --- 2. DiG-IN batched vs reference ---------------------------------------------------------------------------
def check_dig_in(size: dict, device: torch.device) -> dict:
    args = bench_args(size, device)
    backend, guide, targets, cond, uncond, x_T = bench_guidance.setup(args)
    fast_cfg = bench_guidance.config(args, False).model_copy(update={"bf16": True})
    ref_cfg = bench_guidance.config(args, True).model_copy(update={"bf16": False})
    ours, t_ours = bench_guidance.timed(lambda: dig_in(backend, guide, targets, cond, uncond, x_T, fast_cfg), device)
    ref, t_ref = bench_guidance.timed(lambda: dig_in_reference(backend, guide, targets, cond, uncond, x_T, ref_cfg),
                                      device)
    rate = lambda res, t: float(res.accepted.sum()) / t  # noqa: E731
    return {"images": size["n_images"], "px": size["px"], "ddim_steps": size["steps"],
            "batched_bf16_s": t_ours, "reference_fp32_s": t_ref,
            "batched_accepted": int(ours.accepted.sum()), "reference_accepted": int(ref.accepted.sum()),
            "speedup_accepted_per_s": rate(ours, t_ours) / max(rate(ref, t_ref), 1e-12),
            "acceptance_diff_points": 100 * float(ours.accepted.float().mean() - ref.accepted.float().mean()),
            "target": ">= 5x, acceptance within 5 points"}


# --- 3. memory ------------------------------------------------------------------------------------------------
def check_memory(size: dict, device: torch.device) -> dict:
    args = bench_args(size, device)
    backend, guide, targets, cond, uncond, x_T = bench_guidance.setup(args)
    b, S = min(size["batch"], size["n_images"]), size["steps"]
    out = {}
    for mode, ckpt in (("full_backprop", False), ("per_step_checkpointing", True)):
        cfg = bench_guidance.config(args, ckpt)
        x = x_T[:b].clone().requires_grad_(True)
        d_c = torch.zeros(S, b, *cond.shape[1:], device=device, requires_grad=True)
        with frozen(backend, guide):
            reset_peak(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            conf = evaluate(backend, guide, x, [cond[:b] + d_c[s] for s in range(S)], [uncond[:b]] * S,
                            targets[:b], cfg, ckpt, device.type == "cuda").weighted
            torch.autograd.grad(-conf.sum(), [x, d_c])
            sync(device)
        peak = peak_bytes(device)
        out[mode + "_mib"] = None if peak is None else (peak - base) / 2**20
    if out["full_backprop_mib"]:
        out["checkpointing_share"] = out["per_step_checkpointing_mib"] / out["full_backprop_mib"]
    return out


# --- 4. training throughput -----------------------------------------------------------------------------------
def check_throughput(size: dict, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    px, n = size["px"], size["clf_images"]
    images = rng.integers(0, 255, (n, px, px, 3), dtype=np.uint8)
    labels = (np.arange(n) % 4).astype(np.int64)
    channels = [int(c) for c in size["unet"].split(",")]
    backend = PixelBackend({"num_classes": 4, "image_size": px, "block_out_channels": channels,
                            "attention_levels": [False, True, True], "cross_attention_dim": 64,
                            "norm_num_groups": min(32, channels[0]), "attention_head_dim": 32, "tokens_per_class": 4,
                            "prediction": "v"}, seed=0)
    cfg = DenoiserTrainConfig(steps=size["train_steps"], batch_size=32, checkpoint_every=10**9, progress=False,
                              mixed_precision="bf16", ema_decay=0.999)
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        train_denoiser(backend, images, labels, cfg, Path(tmp), device, 0)
        sync(device)
        diffusion_s = time.perf_counter() - t0
    train_cfg = TrainConfig(epochs=1, batch_size=128, amp=True, selection="last")
    model = create_model("resnet18", 4, small_input=True)
    data = ArrayData(images, labels)
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        fit(model, CriterionObjective(torch.nn.CrossEntropyLoss()), ImageBatches(data, train_cfg.augment), data,
            train_cfg, Path(tmp), seed=0, device=device, select=None, log=lambda m: None, progress=False)
        sync(device)
        classifier_s = time.perf_counter() - t0
    return {"px": px, "diffusion_images_per_s": size["train_steps"] * 32 / diffusion_s,
            "classifier_images_per_s": n / classifier_s, "classifier": "resnet18 width 1, bf16 autocast"}


# --- 5. one DiG-IN step at SD scale ---------------------------------------------------------------------------
def sd_modules(kind: str, device: torch.device):
    """A randomly initialised UNet + VAE in the SD-1.x configuration (``sd1``) or a toy one (``tiny``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    torch.manual_seed(0)
    if kind == "sd1":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        dim = 768
    else:
        unet = UNet2DConditionModel(sample_size=4, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=2)
        vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        dim = 32
    return unet.to(device).eval().requires_grad_(False), vae.to(device).eval().requires_grad_(False), dim


def check_sd_step(size: dict, device: torch.device) -> dict:
    from tailsynth.diffusion import make_alphas_cumprod
    unet, vae, dim = sd_modules(size["sd"], device)
    latent_px = size["sd_px"] // (2 ** (len(vae.config.block_out_channels) - 1))
    acp = make_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
    eps_fn = lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample.float()  # noqa: E731
    cond = torch.randn(1, 77, dim, device=device)
    x = initial_noise((1, 4, latent_px, latent_px), torch.Generator().manual_seed(0), device=device).requires_grad_(True)
    clf = create_model("resnet50", 4).to(device).eval().requires_grad_(False)
    guide = ClassifierGuide(clf, 224, 3)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = ddim_sample(eps_fn, x, cond, torch.zeros_like(cond), acp, num_steps=size["steps"], guidance_scale=3.0,
                          checkpoint=True)
        images = ((vae.decode(out.sample / 0.18215).sample.float() + 1) / 2).clamp(0, 1)
        loss = -guide(images).softmax(1)[:, 0].sum()
    loss.backward()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"px": size["sd_px"], "config": size["sd"], "ddim_steps": size["steps"], "one_step_s": seconds,
            "peak_mib": None if peak_bytes(device) is None else peak_bytes(device) / 2**20,
            "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
            "estimate_400_images_x_20_steps_h": seconds * 400 * 20 / 3600}


# --- 6. the paper-scale dry run --------------------------------------------------------------------------------
DRYRUN_METHODS = ["ce", "logex-lora", "logex", "fg-entropy", "minority", "ldmlr", "dream-ood"]


def check_paper_dryrun(size: dict, device: torch.device) -> dict:
    """pbc-lt-paper-dryrun on ``device`` for one row per family (see the module docstring); ``--quick``: the tiny
    random SD folder and a plan only (the CPU test of this script)."""
    from tailsynth.data import load_benchmark_config, resolve_data_path
    from tailsynth.diffusion.random_sd import write_random_sd
    from tailsynth.engine import ArtifactStore
    from tailsynth.models.pretrained import write_random_backbone
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    pbc = resolve_data_path(load_benchmark_config("pbc-lt").source.path).is_dir()
    with tempfile.TemporaryDirectory() as tmp:
        sd = write_random_sd(Path(tmp) / "sd", "sd-1.4" if size["sd"] == "sd1" else "tiny", seed=0, dtype="float16")
        write_random_backbone(Path(tmp) / "r50.pth", "resnet50", seed=0)
        overrides = [f"diffusion.sd_path={sd}", f"classifier.pretrained={Path(tmp) / 'r50.pth'}",
                     f"device={device}", f"methods=[{','.join(DRYRUN_METHODS)}]", "synthesis.params.logex.bf16=true",
                     "threads=null"] + ([] if pbc else ["benchmark=mnist5k-lt"])
        cfg = load_experiment("pbc-lt-paper-dryrun", overrides)
        runs = Path(tmp) / "runs"
        reset_peak(device)
        result = run_experiment(cfg, runs, plan_only=size["sd"] != "sd1", log=lambda m: None)
        if size["sd"] != "sd1":
            return {"benchmark": cfg.benchmark, "planned_stages": len(result.plan)}
        stages = [{"stage": r["stage"], "label": r["label"], "wall_time_s": m.get("wall_time_s"),
                   "peak_rss_gib": round((m.get("peak_rss_bytes") or 0) / 2**30, 2)}
                  for r in ArtifactStore(runs).list() for m in [_manifest(runs, r)] if m]
    return {"benchmark": cfg.benchmark, "methods": DRYRUN_METHODS, "stages": stages,
            "stages_wall_s": round(sum(s["wall_time_s"] or 0 for s in stages), 1),
            "peak_gpu_mib": None if peak_bytes(device) is None else peak_bytes(device) / 2**20}


def _manifest(runs: Path, row: dict) -> dict:
    path = runs / row["stage"] / row["fingerprint"] / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


SECTIONS = [("code_paths", check_code_paths), ("sd_512", check_sd_step), ("paper_dryrun", check_paper_dryrun),
            ("dig_in", check_dig_in), ("memory", check_memory), ("throughput", check_throughput)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results/speed/gpu-check.json")
    p.add_argument("--quick", action="store_true", help="toy sizes (smoke test, any device)")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip sections that would start after this")
    p.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = p.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick for a smoke test")
    size = SIZES["quick" if args.quick else "full"]
    report = {"env": {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                      "bf16": bool(device.type == "cuda" and torch.cuda.is_bf16_supported()),
                      "quick": args.quick}}
    started = time.perf_counter()
    for name, fn in SECTIONS:
        if args.only is not None and name not in args.only:
            continue
        if time.perf_counter() - started > args.budget_s:
            report[name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
            continue
        t0 = time.perf_counter()
        try:
            report[name] = fn(size, device)
        except Exception:
            report[name] = {"error": traceback.format_exc(limit=5)}
        report[name]["section_s"] = round(time.perf_counter() - t0, 2)
        Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")  # partial results survive
        print(f"{name:12s} {report[name]['section_s']:8.1f} s  " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in report[name].items()
            if k not in ("section_s", "checks") and not (isinstance(v, str) and "\n" in v)), flush=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


if __name__ == "__main__":
    main()
