"""The paper-scale dry run: every stage of ``pbc-lt-paper`` at real size on random weights, timed, and from it an
estimate of a full ``pbc-lt-paper`` run on this CPU.

Phases (each resumable; ``--phases`` picks some):

1. ``weights`` -- the random SD-1.4 folder and ResNet-50 file (``tailsynth weights``; kept when already written).
2. ``run``     -- ``tailsynth run pbc-lt-paper-dryrun`` in ``--runs`` (cached stages are skipped, so a killed run resumes).
3. ``units``   -- the CPU cost of the units a paper-scale run is made of, each measured once at real size: a UNet call
   (batch 1, and batch 2 as classifier-free guidance makes it), its backward, the VAE's encode and decode at 512 px and
   the decode's backward, one DiG-IN Adam step at 512 px (2 DDIM steps, the loss on both x0-hats), ResNet-50 training and
   inference at 224 px; peak memory of each (``units.json`` in the runs folder; kept unless ``--redo-units``).
4. ``report``  -- ``benchmarks/results/pbc-lt-paper/dryrun.json``: every stage's wall time and peak memory (from its
   manifest), the units, the machine, and the ESTIMATED CPU-hours of a full ``pbc-lt-paper`` run (its stages' work
   counted from its plan and settings, times the units; an estimate, not a measurement); and ``README.md`` beside it.

    python benchmarks/paper_dryrun.py                  # all phases (hours on 2 CPU cores)
    python benchmarks/paper_dryrun.py --phases report   # rewrite the JSON and README from what is on disk
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG, PAPER = "pbc-lt-paper-dryrun", "pbc-lt-paper"
SD, RESNET = "weights/sd-1.4-random", "weights/resnet50-random.pth"
OUT = ROOT / "benchmarks" / "results" / "pbc-lt-paper"
PHASES = ("weights", "run", "units", "report")


def stamp(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def phase_weights(args) -> None:
    from tailsynth.diffusion.random_sd import write_random_sd
    from tailsynth.models.pretrained import write_random_backbone
    if not (Path(args.sd) / "tailsynth-random.json").is_file() and not Path(args.sd).is_dir():
        stamp(f"writing random SD-1.4 weights to {args.sd}")
        write_random_sd(args.sd, "sd-1.4", seed=0, dtype="float16")
    if not Path(args.resnet).is_file():
        stamp(f"writing random ResNet-50 weights to {args.resnet}")
        write_random_backbone(args.resnet, "resnet50", seed=0)


def overrides(args) -> list[str]:
    extra = [f"diffusion.sd_path={args.sd}", f"classifier.pretrained={args.resnet}", f"threads={args.threads}"]
    return extra + ([f"methods=[{','.join(args.methods)}]"] if args.methods else [])


def phase_run(args) -> None:
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    cfg = load_experiment(CONFIG, overrides(args))
    result = run_experiment(cfg, args.runs, log=stamp, command=f"python benchmarks/paper_dryrun.py --runs {args.runs}")
    stamp(f"run done in {result.wall_time_s:.0f} s; report {result.report_dir}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--runs", default="runs-paper-dryrun")
    p.add_argument("--sd", default=SD)
    p.add_argument("--resnet", default=RESNET)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=None, help="run only these rows (the report phase reads them all)")
    p.add_argument("--redo-units", action="store_true")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TAILSYNTH_PROGRESS", "0")
    os.chdir(ROOT)
    for phase in args.phases:
        stamp(f"phase {phase}")
        {"weights": phase_weights, "run": phase_run, "units": phase_units, "report": phase_report}[phase](args)


# --- units ---------------------------------------------------------------------------------------------------
def measure(units: dict, name: str, fn, out: Path, note: str = "") -> object:
    """Run ``fn`` once; record its wall time and the process's peak RSS while it ran under ``name``."""
    import gc

    from tailsynth.engine.memory import PeakRss
    gc.collect()
    with PeakRss() as peak:
        started = time.time()
        value = fn()
        seconds = time.time() - started
    units[name] = {"seconds": round(seconds, 2), "peak_rss_gib": round(peak.bytes / 2 ** 30, 2), "note": note,
                   "load_average_1min": round(os.getloadavg()[0], 1)}  # other processes on the machine
    stamp(f"unit {name}: {seconds:.1f} s, peak {peak.bytes / 2 ** 30:.1f} GiB")
    out.write_text(json.dumps(units, indent=1) + "\n")
    return value


def phase_units(args) -> None:
    """Each unit once, at real size, with ``--threads`` torch threads (module docstring)."""
    import numpy as np
    import torch

    from tailsynth.diffusion import SDBackend, initial_noise
    from tailsynth.diffusion.feature_diffusion import FeatureDiffusion, FeatureDiffusionConfig
    from tailsynth.diffusion.guidance import ClassifierGuide, DigInConfig, dig_in
    from tailsynth.minority.classifier import encoder_features
    from tailsynth.models import create_model
    from tailsynth.models.pretrained import IMAGENET_NORM, load_backbone
    out = Path(args.runs) / "units.json"
    units = json.loads(out.read_text()) if out.is_file() and not args.redo_units else {}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def todo(name: str) -> bool:
        return name not in units

    sd = measure(units, "sd_load", lambda: SDBackend({"path": args.sd, "class_names": ["neutrophil", "basophil"]}),
                 out, "SD-1.4 folder (fp16 on disk) loaded as float32")
    g = torch.Generator().manual_seed(0)
    z = initial_noise((2, 4, 64, 64), g)
    cond = torch.cat([sd.null_condition(1), sd.encode_condition(torch.tensor([1]))])
    t = torch.tensor([500, 500])
    image = torch.rand((1, 3, 512, 512), generator=g)

    def fwd_bwd(fn, x):
        x = x.detach().clone().requires_grad_(True)
        fn(x).float().sum().backward()

    with torch.no_grad():
        if todo("unet_b1"):
            measure(units, "unet_b1", lambda: sd.eps(z[:1], t[:1], cond[1:]), out, "one UNet call, 64x64 latents")
        if todo("unet_b2"):
            measure(units, "unet_b2", lambda: sd.eps(z, t, cond), out, "the CFG pair (uncond + cond) in one call")
        if todo("vae_encode"):
            measure(units, "vae_encode", lambda: sd.encode(image), out, "one 512-px image -> 4x64x64")
        if todo("vae_decode"):
            measure(units, "vae_decode", lambda: sd.decode(z[:1]), out, "4x64x64 -> one 512-px image")
        if todo("unet_encoder_b1"):
            measure(units, "unet_encoder_b1", lambda: encoder_features(sd.unet, z[:1], t[:1], cond[1:]), out,
                    "the UNet's down + mid blocks (the frozen minority classifier's features)")
    if todo("unet_b2_fwd_bwd"):
        measure(units, "unet_b2_fwd_bwd", lambda: fwd_bwd(lambda x: sd.eps(x, t, cond), z), out,
                "forward + backward to the latents (a DiG-IN step's recompute + backward; ~ a LoRA step of batch 2)")
    if todo("vae_decode_fwd_bwd"):
        measure(units, "vae_decode_fwd_bwd", lambda: fwd_bwd(sd.decode, z[:1]), out,
                "decode at 512 px with its backward to the latent (DiG-IN / FG-Entropy)")
    if todo("unet_encoder_b1_fwd_bwd"):
        measure(units, "unet_encoder_b1_fwd_bwd",
                lambda: fwd_bwd(lambda x: encoder_features(sd.unet, x, t[:1], cond[1:])[0], z[:1]), out,
                "minority guidance's classifier gradient (frozen encoder half)")
    resnet = create_model("resnet50", num_classes=8, in_channels=3, width=1.0, small_input=False)
    load_backbone(resnet, args.resnet)
    resnet.set_input_norm(IMAGENET_NORM["mean"], IMAGENET_NORM["std"])
    if todo("resnet50_train_b32"):
        opt = torch.optim.AdamW(resnet.parameters(), lr=1e-4)
        x = torch.rand((32, 3, 224, 224), generator=g) * 2 - 1
        y = torch.randint(0, 8, (32,), generator=g)

        def train_step():
            resnet.train()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(resnet(x), y).backward()
            opt.step()
        measure(units, "resnet50_train_b32", train_step, out, "one AdamW step of 32 images at 224 px")
    if todo("resnet50_eval_b64"):
        x = torch.rand((64, 3, 224, 224), generator=g) * 2 - 1
        resnet.eval()
        with torch.no_grad():
            measure(units, "resnet50_eval_b64", lambda: resnet(x), out, "inference on 64 images at 224 px")
    if todo("feature_denoiser_step_b128"):
        fd = FeatureDiffusion(FeatureDiffusionConfig(hidden=1024, blocks=3), 2048, 8,
                              FeatureDiffusion.statistics(np.random.default_rng(0).normal(size=(64, 2048)),
                                                          "standardize"))
        opt = torch.optim.AdamW(fd.parameters(), lr=1e-3)
        x = torch.randn((128, 2048), generator=g)
        y = torch.randint(0, 8, (128,), generator=g)

        def fd_steps():
            for _ in range(10):
                opt.zero_grad()
                fd.training_loss(x, y, g).backward()
                opt.step()
        measure(units, "feature_denoiser_step_b128", fd_steps, out, "10 LDMLR denoiser steps (2048-d, hidden 1024)")
    if todo("dig_in_adam_step"):  # one Adam step = (run with 1 step) - (run with 0 steps), 2 DDIM steps, last 2
        guide = ClassifierGuide(resnet.eval(), 224, 3)
        x_T = initial_noise((1, 4, 64, 64), torch.Generator().manual_seed(1))
        c, u = sd.encode_condition(torch.tensor([1])), sd.null_condition(1)

        def run(steps: int):
            cfg = DigInConfig(num_steps=2, last_k=2, max_opt_steps=steps, threshold=1.0, checkpoint=True,
                              batch_size=1, bf16=False)
            return dig_in(sd, guide, torch.tensor([5]), c, u, x_T, cfg, torch.Generator().manual_seed(0))
        measure(units, "dig_in_eval", lambda: run(0), out,
                "DiG-IN with 0 Adam steps: one pass of the 2-step chain (2 x0-hats and the final image decoded)")
        measure(units, "dig_in_one_step", lambda: run(1), out,
                "DiG-IN with 1 Adam step: the pass, its backward (checkpointed), the step, the second pass")
        units["dig_in_adam_step"] = {
            "seconds": round(units["dig_in_one_step"]["seconds"] - units["dig_in_eval"]["seconds"], 2),
            "peak_rss_gib": units["dig_in_one_step"]["peak_rss_gib"],
            "note": "one DiG-IN Adam step at 512 px, 2 DDIM steps, loss on 2 x0-hats: dig_in_one_step - dig_in_eval"}
        out.write_text(json.dumps(units, indent=1) + "\n")
    stamp(f"units written to {out}")


def measured_stages(args, planned) -> list[dict]:
    """Each planned dry-run stage with what its manifest recorded (None where it has not been built)."""
    from tailsynth.engine import ArtifactStore
    store, rows = ArtifactStore(args.runs), []
    for p in planned:
        art = store.lookup(p.stage.name, p.fingerprint)
        m = art.manifest if art is not None else {}
        peak = m.get("peak_rss_bytes")
        rows.append({"stage": p.stage.name, "label": p.label, "fingerprint": p.fingerprint,
                     "wall_time_s": m.get("wall_time_s"), "peak_rss_gib": round(peak / 2 ** 30, 2) if peak else None,
                     "peak_rss_scope": m.get("peak_rss_scope"), "machine_key": m.get("machine_key")})
    return rows


def phase_report(args) -> None:
    import paper_estimate as est
    from tailsynth.engine.machine import machine_description, machine_key
    units = json.loads((Path(args.runs) / "units.json").read_text())
    u = est.unit_seconds(units)
    dry_cfg, dry_plan = est.plan_of(CONFIG, overrides(argparse.Namespace(**{**vars(args), "methods": None})))
    stages = measured_stages(args, dry_plan)
    fixed = est.evaluation_fixed(stages, dry_cfg, u)
    for row, model in zip(stages, est.priced(dry_plan, dry_cfg, u, fixed)):
        row["modelled_s"] = round(model["seconds"], 1)
    paper_overrides = [f"diffusion.sd_path={args.sd}", f"classifier.pretrained={args.resnet}"]
    paper_cfg, paper_plan = est.plan_of(PAPER, paper_overrides)
    paper = est.priced(paper_plan, paper_cfg, u, fixed)
    from tailsynth.methods import generator_named
    dig = generator_named("logex").params(paper_cfg.synthesis)
    steps, last_k, adam = dig.num_steps, dig.last_k, dig.max_opt_steps
    logex_images = paper_cfg.synthesis.n_per_class * est.split_counts(paper_cfg)["tail_classes"]
    per_step = est.dig_in_step(steps, last_k, u)
    total = sum(r["seconds"] for r in paper) / 3600
    built = [r for r in stages if r["wall_time_s"] is not None]
    result = {
        "command": "python benchmarks/paper_dryrun.py",
        "experiment": CONFIG, "estimated_experiment": PAPER,
        "machine": machine_description(), "machine_key": machine_key(),
        "note": ("CPU only, random weights of the real architectures; most stages were built while other "
                 "CPU-heavy processes shared the 2 cores (load average up to 8), so their wall times are upper bounds "
                 "for an idle machine of this kind; the units ran with nothing else on the machine (1-minute load "
                 "average 2.0 = their own 2 threads, recorded per unit in dryrun.json), and the estimate uses only them"),
        "dry_run": {"stages": stages, "stages_built": len(built), "stages_planned": len(stages),
                    "wall_time_s": round(sum(r["wall_time_s"] for r in built), 1),
                    "peak_rss_gib": max((r["peak_rss_gib"] or 0) for r in built) if built else None},
        "units": units,
        "dig_in_adam_step_512px": {
            "measured_s": units["dig_in_adam_step"]["seconds"],
            "measured_at": "2 DDIM steps, loss on 2 x0-hats, batch 1, checkpointed, float32",
            "modelled_s_at_that_setting": round(est.dig_in_step(2, 2, u), 1),
            "estimated_s_paper": round(per_step, 1),
            "paper_setting": f"{steps} DDIM steps, loss on the last {last_k} x0-hats (an estimate from the units)"},
        "estimate": {
            "what": (f"ESTIMATED wall-clock hours of a full {PAPER} run on this CPU with {args.threads} torch threads "
                     "(core-hours: x2): every planned stage priced in the measured units; not a measurement"),
            "hours": round(total, 1), "core_hours": round(total * args.threads, 1),
            "hours_by_stage": est.by_kind(paper),
            "logex_assumption": (f"every one of the {logex_images} LoGex images takes all {adam} Adam steps (the cap); "
                                 f"each Adam step fewer per image saves {logex_images * per_step / 3600:.1f} h"),
            "gpu": "no GPU estimate: benchmarks/gpu_check.py has not run on a GPU (benchmarks/results/speed/)"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dryrun.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(readme(result))
    stamp(f"wrote {out / 'dryrun.json'} and README.md")


def readme(r: dict) -> str:
    d, e, g = r["dry_run"], r["estimate"], r["dig_in_adam_step_512px"]
    lines = [f"# {r['estimated_experiment']}: the dry run at real size, and an estimate", "",
             f"`{r['command']}` (about {d['wall_time_s'] / 3600:.1f} h of stages here) ran `{r['experiment']}`: every "
             f"stage of `{r['estimated_experiment']}` at its real dimensions (Stable Diffusion 1.4 at 512 px with "
             "77-token conditioning, ResNet-50 at 224 px, 2048-d LDMLR features, 768-d Dream-OOD / BOOD anchors) on "
             "random weights of the real architectures (`tailsynth weights`), with only the counts cut (2-3 images "
             "per class, 1 synthetic image per tail class, 2 DDIM steps, 1 DiG-IN Adam step, 2 LoRA steps, 1 epoch, "
             "1 seed). Its metrics mean nothing; its times and memory are the point.", "",
             f"Machine: {r['machine']}. {r['note'][0].upper()}{r['note'][1:]}.", "",
             "## Every stage of the dry run", "",
             "Wall time and peak resident memory of the process while the stage ran (its manifest), and the time the "
             "cost model (`benchmarks/paper_estimate.py`) gives it from the units below: the check of the model.", "",
             "| stage | label | wall time s | modelled s | peak memory GiB |", "|---|---|---|---|---|"]
    for s in d["stages"]:
        wall = "-" if s["wall_time_s"] is None else f"{s['wall_time_s']:.0f}"
        lines.append(f"| {s['stage']} | {s['label']} | {wall} | {s['modelled_s']:.0f} | "
                     f"{'-' if s['peak_rss_gib'] is None else s['peak_rss_gib']} |")
    lines += ["", f"{d['stages_built']} of {d['stages_planned']} stages built; largest peak {d['peak_rss_gib']} GiB.", "",
              "## Units (each measured once, at real size)", "", "| unit | seconds | peak GiB | what |", "|---|---|---|---|"]
    for name, v in r["units"].items():
        lines.append(f"| {name} | {v['seconds']} | {v['peak_rss_gib']} | {v['note']} |")
    lines += ["", "## One DiG-IN Adam step at 512 px", "",
              f"Measured: {g['measured_s']:.0f} s ({g['measured_at']}; the model gives "
              f"{g['modelled_s_at_that_setting']:.0f} s). At the paper's setting ({g['paper_setting']}): "
              f"{g['estimated_s_paper']:.0f} s per image and step.", "",
              "## Estimate of a full run (an estimate, not a measurement)", "",
              f"{e['what'][0].upper()}{e['what'][1:]}: **{e['hours']:.0f} h** ({e['core_hours']:.0f} core-hours). "
              f"Assumption: {e['logex_assumption']}. {e['gpu'][0].upper()}{e['gpu'][1:]}.", "",
              "| stage | hours |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in e["hours_by_stage"].items() if v >= 0.05]
    lines += ["", "Rewrite this file and `dryrun.json` from the runs folder: `python benchmarks/paper_dryrun.py "
              "--phases report`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
