"""The cost model behind ``paper_dryrun.py``'s estimate: every stage of an experiment's plan priced in the measured
units (``units.json``: seconds of one UNet call, one VAE decode at 512 px, one ResNet-50 step, ...), times the counts
its settings and split give. Applied to ``pbc-lt-paper-dryrun`` it predicts the dry run's measured stage times (the
check of the model); applied to ``pbc-lt-paper`` it is the ESTIMATE of a full run on the same CPU. Nothing here is a
measurement of a full run.

What each stage costs (S = DDIM / ancestral steps, n = images, u.x = the unit x in seconds):

- classifier training: epochs x (training images x u.resnet50_train_b32 / 32 + val images x u.resnet50_eval_b64 / 64);
  cRT and LDMLR train a head on fixed features (cRT: one forward per image and epoch; LDMLR: ~0);
- evaluation: forward of train + val + test, plus the fixed cost of fitting the scores on 2048-d features (the dry
  run's median evaluation time less its forwards: eigendecompositions, which do not grow with the image count);
- LoRA: steps x (batch x u.vae_encode + batch / 2 x u.unet_b2_fwd_bwd);
- synthesis per image: only LoRA S x u.unet_b2 + u.vae_decode; DiG-IN one pass E = S x u.unet_b2 + (k + 1) u.vae_decode
  and per Adam step S x u.unet_b2_fwd_bwd + k x u.vae_decode_fwd_bwd + E (k = last_k); FG-Entropy S x u.unet_b2 +
  ceil(S / every) x (u.unet_b2_fwd_bwd / 2 + u.vae_decode_fwd_bwd) + u.vae_decode; minority guidance S x (u.unet_b2 +
  u.unet_encoder_b1_fwd_bwd) + u.vae_decode; Dream-OOD / BOOD outliers S x u.unet_b2 + u.vae_decode;
- minority scores per image: u.vae_encode + draws x (u.unet_b1 + 2 u.vae_decode); the minority classifier: every
  training image encoded under each flip, then steps x batch x u.unet_encoder_b1;
- LDMLR: denoiser steps x u.feature_denoiser_step_b128 / 10, sampling steps x that / 3 per 128 vectors;
- every stage that loads Stable Diffusion: + u.sd_load.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

SD_STAGES = ("adapt_lora", "synthesize", "minority_score", "train_minority_classifier", "decode_outliers",
             "minority_figures")
SYNTHETIC_METHODS = ("logex-lora", "logex", "fg-entropy", "minority")


def plan_of(name: str, overrides: list[str]):
    """(experiment config, planned stages with their configs) of ``name``, nothing run."""
    import tempfile

    from tailsynth.engine import ArtifactStore, Runner
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import _walk
    from tailsynth.pipeline.graph import StageGraph
    cfg = load_experiment(name, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        graph = StageGraph(cfg, Runner(ArtifactStore(tmp), log=lambda _m: None), plan_only=True)
        _walk(graph, cfg)
    return cfg, graph.planned


def split_counts(cfg) -> dict[str, Any]:
    from tailsynth.config import flatten_mapping
    from tailsynth.data import build_split, load_benchmark_config
    from tailsynth.data.index import index_source
    bench = load_benchmark_config(cfg.benchmark, flatten_mapping(cfg.benchmark_overrides))
    split = build_split(bench, seed=cfg.split_seed)
    counts = split.counts()
    head = [split.class_names[c] for c in split.head_classes]
    per = {s: sum(c[s] for c in counts.values()) for s in ("train", "val", "test")}
    n_source = len(index_source(bench.source).ids)
    cap = bench.max_per_class.oracle if bench.max_per_class is not None else None
    pool = n_source - per["test"] if cap is None else cap * len(counts)
    return {**per, "head_train": sum(counts[h]["train"] for h in head), "tail_classes": len(split.tail_classes),
            "oracle_pool": pool}


def stage_seconds(p, cfg, n: dict, u: dict[str, float], eval_fixed: float) -> float:
    """The modelled seconds of one planned stage (module docstring)."""
    name, c = p.stage.name, p.config
    r50_train, r50_eval = u["resnet50_train_b32"] / 32, u["resnet50_eval_b64"] / 64
    load = u["sd_load"] if name in SD_STAGES else 0.0
    if name == "train_classifier":
        method, epochs = c.method, c.train.epochs
        if method == "ldmlr":
            return 0.0
        if method == "crt":
            return epochs * n["train"] * r50_eval
        images = {"vmf-encoder": n["head_train"], "dream-ood": 2 * n["head_train"], "bood": 2 * n["head_train"]
                  }.get(method, n["train"])
        if method in SYNTHETIC_METHODS:
            images += (c.synthetic_per_class or cfg.synthesis.n_per_class) * n["tail_classes"]
        return epochs * (images * r50_train + n["val"] * r50_eval)
    if name == "train_oracle":
        return c.train.epochs * n["oracle_pool"] * r50_train
    if name == "evaluate":
        return (n["train"] + n["val"] + n["test"]) * r50_eval + eval_fixed
    if name == "encode_features":
        return (2 * n["train"] + n["val"] + n["test"]) * r50_eval
    if name == "label_shift":
        return (n["train"] + n["val"]) * r50_eval
    if name == "train_feature_diffusion":
        return c.diffusion.steps * u["feature_denoiser_step_b128"] / 10
    if name == "sample_pseudo_features":
        vectors = max(1, round(c.pseudo.ratio * n["train"]))
        return c.pseudo.sampling.num_steps * math.ceil(vectors / 128) * u["feature_denoiser_step_b128"] / 30
    if name == "adapt_lora":
        t = c.diffusion.lora.train
        return load + t.steps * (t.batch_size * u["vae_encode"] + t.batch_size / 2 * u["unet_b2_fwd_bwd"])
    if name == "synthesize":
        return load + c.synthesis.n_per_class * n["tail_classes"] * per_image(c, u)
    if name == "minority_score":
        images = sum(n[s] for s in c.splits)
        return load + images * (u["vae_encode"] + c.score.num_draws * (u["unet_b1"] + 2 * u["vae_decode"]))
    if name == "train_minority_classifier":
        k = c.classifier
        views = (1 + k.hflip) * (1 + k.vflip)
        return load + n["train"] * views * u["vae_encode"] + k.steps * k.batch_size * u["unet_encoder_b1"]
    if name == "decode_outliers":
        outliers = cfg.method_config(c.kind).outliers.n_per_class * (n_classes(cfg) - n["tail_classes"])
        return load + outliers * (c.decode.num_steps * u["unet_b2"] + u["vae_decode"])
    if name == "minority_figures":
        m, f = c.minority, c.minority.figures
        guided = m.num_steps * (u["unet_b2"] + u["unet_encoder_b1_fwd_bwd"]) + u["vae_decode"]
        plain = m.num_steps * u["unet_b2"] + u["vae_decode"]
        ancestral = (f.n_per_class or c.n_per_class) * n["tail_classes"] * (guided + plain) if f.ancestral else 0.0
        grids = min(f.grid_classes, n["tail_classes"]) * 3 * len(f.grid_scales) * f.per_cell * guided
        return load + ancestral + grids
    return 0.0  # split, base diffusion (a path), outlier embeddings, quality: seconds


def n_classes(cfg) -> int:
    from tailsynth.config import flatten_mapping
    from tailsynth.data import load_benchmark_config
    bench = load_benchmark_config(cfg.benchmark, flatten_mapping(cfg.benchmark_overrides))
    return len(bench.head or []) + len(bench.tail or [])


def per_image(c, u: dict[str, float]) -> float:
    """Seconds of one synthetic image of generator ``c.method`` (a SynthStageConfig)."""
    from tailsynth.methods import generator_named
    gen = generator_named(c.method)
    params = gen.params(c.synthesis)
    if c.method == "lora":
        return c.synthesis.num_steps * u["unet_b2"] + u["vae_decode"]
    if c.method == "logex":
        passes = dig_in_pass(params.num_steps, params.last_k, u)
        return passes + params.max_opt_steps * dig_in_step(params.num_steps, params.last_k, u)
    if c.method == "fg-entropy":
        feedback = math.ceil(params.num_steps / params.every) if params.every else 0
        return (params.num_steps * u["unet_b2"] + feedback * (u["unet_b2_fwd_bwd"] / 2 + u["vae_decode_fwd_bwd"])
                + u["vae_decode"])
    if c.method == "minority":
        return params.num_steps * (u["unet_b2"] + u["unet_encoder_b1_fwd_bwd"]) + u["vae_decode"]
    raise ValueError(f"no cost model for generator {c.method!r}")


def dig_in_pass(steps: int, last_k: int, u: dict[str, float]) -> float:
    """One pass of DiG-IN's chain: S CFG UNet calls, the last k x0-hats and the final image decoded."""
    return steps * u["unet_b2"] + (last_k + 1) * u["vae_decode"]


def dig_in_step(steps: int, last_k: int, u: dict[str, float]) -> float:
    """One DiG-IN Adam step: the checkpointed backward (recompute + backward of every UNet call and decode) and the
    next pass."""
    return steps * u["unet_b2_fwd_bwd"] + last_k * u["vae_decode_fwd_bwd"] + dig_in_pass(steps, last_k, u)


def priced(planned, cfg, u: dict[str, float], eval_fixed: float) -> list[dict[str, Any]]:
    n = split_counts(cfg)
    return [{"stage": p.stage.name, "label": p.label, "fingerprint": p.fingerprint,
             "seconds": stage_seconds(p, cfg, n, u, eval_fixed)} for p in planned]


def evaluation_fixed(measured: list[dict[str, Any]], cfg, u: dict[str, float]) -> float:
    """The dry run's median evaluation time less its forward passes (the score fits on 2048-d features)."""
    n = split_counts(cfg)
    forwards = (n["train"] + n["val"] + n["test"]) * u["resnet50_eval_b64"] / 64
    times = [r["wall_time_s"] for r in measured if r["stage"] == "evaluate" and r.get("wall_time_s")]
    return max(0.0, statistics.median(times) - forwards) if times else 0.0


def by_kind(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Hours per stage name, largest first."""
    out: dict[str, float] = {}
    for r in rows:
        out[r["stage"]] = out.get(r["stage"], 0.0) + r["seconds"] / 3600
    return dict(sorted(((k, round(v, 2)) for k, v in out.items()), key=lambda kv: -kv[1]))


def unit_seconds(units: dict[str, Any]) -> dict[str, float]:
    return {k: float(v["seconds"]) for k, v in units.items()}

