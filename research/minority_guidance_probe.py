"""Does minority guidance do what it is built to do? Guided vs plain DDIM from the same x_T (issue 40, "the experiments
that tell a scale limit from a defect", minority).

    nice -n 5 python research/minority_guidance_probe.py --runs runs-pbc --modes conditional unconditional \
        --out-dir research/results/pbc-lt-minority-guidance

For each of the paper's two settings (``synthesis.params.minority.mode``) whose stages are already built in
``--runs`` (this script builds nothing: it finds the artifacts the experiment's stage graph names, in plan mode,
and stops where one is missing), and for each tail class, the first ``--n`` x_T of the shipped synthesis (the shard
protocol's seeds, :func:`tailsynth.engine.shards.write_shards`) are sampled twice through the minority generator's
own ``generate``: with the shipped guidance (scale w, target level) and with w = 0 (plain DDIM, CFG as shipped).
On both sets (quantised to uint8 as the synthetic set stores them):

1. the minority score with the score stage's own scorer and settings (same t, draws, distance, condition, perceptual
   network); the guided and the plain image of a pair get the same noise draws;
2. the minority classifier at t = 0.1 T (``--eps-draws`` seeded eps, the same for both images of a pair):
   expected level sum_l l p(l | x_t[, c]) and p(target level);
3. p(target level | x_t[, c]) at the guidance's own timesteps, read along both sampling chains (the hook's answer is
   passed on unchanged).

Reported per tail class and over all images: guided - plain per pair, its mean and the 95 % percentile bootstrap
interval over pairs. The rule (issue 40): interval above 0 -> the guidance works, and what fails at this scale is the
score's link to rarity; otherwise a guidance defect. The oracle and the test split are not used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

STAGES_NEEDED = ("split", "train_diffusion", "adapt_lora", "train_classifier", "minority_score",
                 "train_minority_classifier")
NOTES_MARK = "<!-- notes: kept when the script rewrites this file -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="pbc-lt-cpu")
    ap.add_argument("--runs", default="runs-pbc")
    ap.add_argument("--modes", nargs="+", default=["conditional"], choices=["conditional", "unconditional"])
    ap.add_argument("--n", type=int, default=50, help="x_T per tail class (the synthesis's first n)")
    ap.add_argument("--eps-draws", type=int, default=4, help="seeded eps draws of the classifier's level at 0.1 T")
    ap.add_argument("--boot", type=int, default=10000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0, help="seed of the level eps and of the bootstrap")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the experiment's)")
    ap.add_argument("--wait", type=float, default=0, help="poll every WAIT s until the stages are built (0: stop)")
    ap.add_argument("--out-dir", default="research/results/pbc-lt-minority-guidance")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "probe.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    command = "python research/minority_guidance_probe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for mode in args.modes:
        found = probe(mode, args)
        if found is None:
            print(f"[{mode}] stages missing in {args.runs}; nothing measured")
            continue
        result[mode] = {**found, "command": command}
        path.write_text(json.dumps(result, indent=1))
        write_readme(out_dir, result)
        print_table(mode, found)


def find_artifacts(cfg, runs: str, wait: float):
    """The stage graph in plan mode (nothing is built): the artifacts the minority generator's synthesis needs, or
    None when one of them is not built yet (``wait`` > 0: poll until it is)."""
    from tailsynth.engine.runner import Runner
    from tailsynth.engine.store import ArtifactStore
    from tailsynth.methods import generator_named
    from tailsynth.methods.minority.stages import minority_classifier
    from tailsynth.pipeline.graph import StageGraph
    while True:
        graph = StageGraph(cfg, Runner(ArtifactStore(runs), log=lambda _: None), plan_only=True)
        gen = generator_named("minority")
        settings = gen.params(graph.synthesis)
        found = {"split": graph.split(), "base": graph.base_diffusion(), "lora": graph.lora(),
                 "minority": minority_classifier(graph, settings),
                 "aux": graph.auxiliary(gen.aux_method(graph.synthesis)),
                 "synthetic:minority": graph.synthetic(gen), "synthetic:lora": graph.synthetic(generator_named("lora"))}
        missing = [f"{p.stage.name}/{p.fingerprint} ({p.label}): {p.state}" for p in graph.planned
                   if p.stage.name in STAGES_NEEDED and p.state != "cached"]
        if not missing:
            states = {p.fingerprint: p.state for p in graph.planned}
            return graph, settings, found, states
        print("not built yet:\n  " + "\n  ".join(missing), flush=True)
        if wait <= 0:
            return None
        time.sleep(wait)


@contextlib.contextmanager
def recording_hooks(records: list):
    """While inside: every minority hook the generator builds (:func:`tailsynth.methods.minority.config.class_hook`)
    first appends (t, p(target level | x_t[, c])) of the step to ``records``, then answers as it would."""
    from tailsynth.methods.minority import method as minority_method
    from tailsynth.minority import resolve_target
    original = minority_method.class_hook

    def class_hook(classifier, levels, names, backend, cond, targets, guidance):
        hook = original(classifier, levels, names, backend, cond, targets, guidance)
        c_cond = cond if classifier.cfg.conditional else backend.null_condition(len(cond)).to(cond.device)
        target = resolve_target(guidance.target, classifier.cfg.num_levels)

        def recorded(step):
            with torch.no_grad():
                t = torch.full((len(step.x_t),), int(step.t), dtype=torch.long, device=step.x_t.device)
                records.append((int(step.t), classifier(step.x_t, t, c_cond).softmax(1)[:, target].cpu().numpy()))
            return hook(step)
        return recorded

    minority_method.class_hook = class_hook
    try:
        yield
    finally:
        minority_method.class_hook = original


def probe(mode: str, args) -> dict | None:
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.diffusion.schedule import add_noise
    from tailsynth.engine.artifacts import load_adapted, read_split
    from tailsynth.engine.machine import machine_key
    from tailsynth.engine.shards import shard_size_of
    from tailsynth.methods import generator_named
    from tailsynth.methods.minority.sampling import to_uint8
    from tailsynth.methods.minority.stages import _perceptual, condition_ids, read_scores
    from tailsynth.minority import minority_scores, resolve_target, score_timestep
    from tailsynth.pipeline.diffusion_stages import aux_guide, aux_keys
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import check_experiment
    from tailsynth.utils import derive_seed, resolve_device

    cfg = load_experiment(args.experiment, [*args.overrides, f"synthesis.params.minority.mode={mode}"])
    check_experiment(cfg)
    torch.set_num_threads(args.threads or cfg.threads or torch.get_num_threads())
    located = find_artifacts(cfg, args.runs, args.wait)
    if located is None:
        return None
    graph, settings, art, states = located
    started = time.time()
    s = graph.synthesis
    if args.n > s.n_per_class:
        raise SystemExit(f"--n {args.n} is more than the synthesis's {s.n_per_class} images per class")
    split = read_split(art["split"])
    names, tail = split.class_names, list(split.tail_classes)
    device = resolve_device(cfg.device)
    backend, cond_of = load_adapted(art["base"].path, art["lora"].path, graph.diffusion, split, device)
    gen = generator_named("minority")
    params = gen.params(s)
    plain = params.model_copy(update={"guidance": params.guidance.model_copy(update={"scale": 0.0})})
    prepared = gen.prepare({"minority": art["minority"], "split": art["split"]}, backend, device, params)
    classifier = prepared[0]
    guide = aux_guide([art["aux"][k].path for k in aux_keys(art["aux"])], device, s.guide_resize)
    score_stage = graph.built("minority_score")[0]  # the score stage's own config and inputs
    score_cfg = score_stage.config.score
    perceptual = _perceptual(score_stage.config, score_stage.inputs, split, device)
    L = classifier.cfg.num_levels
    target = resolve_target(params.guidance.target, L)
    acp = backend.alphas_cumprod.to(device)
    T = len(acp)
    t_level = int(0.1 * T)
    latent = backend.latent_shape(graph.diffusion.working_size(cfg.data.image_size))
    real = read_scores(score_stage.artifact)
    t_score = score_timestep(backend.schedule, T, score_cfg.t, backend.alphas_cumprod)
    train = real["split"] == "train"
    stored = {key: SyntheticSet.read(art[key].path) if states.get(art[key].fingerprint) == "cached" else None
              for key in ("synthetic:minority", "synthetic:lora")}

    per: dict[str, dict[str, list]] = {}
    chain_steps: list[int] = []
    checks: dict[str, dict] = {}
    for c in tail:
        cid = int(condition_ids(split, cond_of, np.array([c]))[0])
        sets: dict[str, np.ndarray] = {}
        chain_p: dict[str, list] = {}
        for tag, p in (("guided", params), ("plain", plain)):
            images, chains = [], []
            for k in range(-(-args.n // s.shard_size)):
                full = shard_size_of(s.n_per_class, s.shard_size, k)  # the shipped shard's x_T, then its first rows
                take = min(full, args.n - k * s.shard_size)
                generator = torch.Generator().manual_seed(derive_seed(s.seed, c, k))
                x_T = torch.randn((full, *latent), generator=generator).to(device)
                targets = torch.full((full,), c, dtype=torch.long, device=device)
                cond = backend.encode_condition(class_ids=torch.full((full,), cond_of[c], dtype=torch.long,
                                                                     device=device))
                uncond = backend.null_condition(full).to(device)
                records: list = []
                with recording_hooks(records):
                    x, _ = gen.generate(backend, guide, targets, cond, uncond, x_T, s, p, generator, prepared)
                images.append(to_uint8(x)[:take])
                chains.append(np.stack([r[1] for r in records], 1)[:take])  # (take, steps)
                chain_steps = [r[0] for r in records]
            sets[tag] = np.concatenate(images)
            chain_p[tag] = np.concatenate(chains)
        for key, tag in (("synthetic:minority", "guided"), ("synthetic:lora", "plain")):
            if stored[key] is not None:
                ref = stored[key].select(args.n)
                ref_x, ref_y = ref.load_images(names, cfg.data.image_size, cfg.data.channels)
                ref_x = ref_x[ref_y == c]
                diff = np.abs(ref_x.astype(int) - sets[tag].astype(int))
                checks.setdefault(tag, {})[names[c]] = {"vs": art[key].fingerprint,
                                                        "identical_images": int((diff.reshape(len(diff), -1).max(1) == 0).sum()),
                                                        "n": int(len(diff)), "max_abs_uint8": int(diff.max())}
        # 1. the minority score: the score stage's scorer, the same noise draws for both images of a pair
        x01 = {tag: torch.as_tensor(x).permute(0, 3, 1, 2).float().div(255.0) for tag, x in sets.items()}
        ids = torch.full((args.n,), cid, dtype=torch.long)
        scores = {tag: minority_scores(backend, x, ids, score_cfg, perceptual, chunk_index=100_000 + c)
                  for tag, x in x01.items()}
        group = train & ((real["labels"] == c) if score_cfg.conditional else True)
        ref_scores = np.sort(real[settings.distance][group])
        # 2. the classifier at 0.1 T, the same eps for both images of a pair
        level = {}
        for tag, x in x01.items():
            with torch.no_grad():
                z0 = backend.encode(x.to(device))
                tt = torch.full((len(z0),), t_level, dtype=torch.long, device=device)
                cond_c = classifier.condition(ids.to(device), len(z0))
                probs = []
                for d in range(args.eps_draws):
                    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(
                        derive_seed(args.seed, "guidance-probe-level", c, d))).to(device)
                    probs.append(classifier(add_noise(z0, eps, tt, acp), tt, cond_c).softmax(1).cpu().numpy())
            level[tag] = np.mean(probs, 0)  # (n, L), averaged over the eps draws
        row = {}
        for tag in ("guided", "plain"):
            sc = scores[tag][settings.distance]
            rank = np.searchsorted(ref_scores, sc, side="left")  # training scores of the group below it
            row[tag] = {"score": sc, **{f"score_{d}": scores[tag][d] for d in scores[tag] if d != settings.distance},
                        "score_level": np.minimum(L - 1, rank * L // len(ref_scores)),
                        "expected_level_0.1T": level[tag] @ np.arange(L),
                        "p_target_0.1T": level[tag][:, target],
                        "argmax_is_target_0.1T": (level[tag].argmax(1) == target).astype(float),
                        "p_target_chain_mean": chain_p[tag].mean(1)}
        per[names[c]] = {tag: {k: np.asarray(v, dtype=float).tolist() for k, v in row[tag].items()} for tag in row}
        per[names[c]]["chain_p_target_per_step"] = {tag: chain_p[tag].mean(0).tolist() for tag in chain_p}
        print(f"[{mode}] {names[c]}: score guided {row['guided']['score'].mean():.4f} plain "
              f"{row['plain']['score'].mean():.4f}; E[level] 0.1T guided {row['guided']['expected_level_0.1T'].mean():.3f} "
              f"plain {row['plain']['expected_level_0.1T'].mean():.3f}", flush=True)

    quantities = [q for q in per[names[tail[0]]]["guided"]]
    rng = np.random.default_rng(args.seed)
    summary = {}
    for q in quantities:
        rows = {}
        for name in [names[c] for c in tail] + ["all"]:
            keys = [names[c] for c in tail] if name == "all" else [name]
            g = np.concatenate([per[k]["guided"][q] for k in keys])
            p = np.concatenate([per[k]["plain"][q] for k in keys])
            rows[name] = {"guided": float(g.mean()), "plain": float(p.mean()), **bootstrap(g - p, args.boot, rng)}
        summary[q] = rows
    holdout = json.loads((art["minority"].path / "manifest.json").read_text()).get("result", {})
    return {"mode": mode, "experiment": cfg.name, "runs": args.runs, "n_per_class": args.n,
            "tail_classes": [names[c] for c in tail], "distance": settings.distance, "score": score_cfg.model_dump(), "score_t": t_score,
            "num_levels": L, "target": target, "scale": params.guidance.scale, "guidance_mode": params.guidance.mode,
            "sampler": params.sampler, "num_steps": params.num_steps, "cfg": params.guidance_scale,
            "level_t": t_level, "eps_draws": args.eps_draws, "boot": args.boot, "chain_timesteps": chain_steps,
            "artifacts": {k: (v.fingerprint if not isinstance(v, dict) else {a: b.fingerprint for a, b in v.items()})
                          for k, v in art.items()},
            "score_stage": score_stage.artifact.fingerprint, "classifier_holdout": holdout,
            "checks_vs_stored_sets": checks, "summary": summary, "per_image": per,
            "machine_key": machine_key(), "wall_s": round(time.time() - started, 1)}


def bootstrap(d: np.ndarray, boot: int, rng: np.random.Generator) -> dict:
    """Mean of the paired differences ``d`` and its 95 % percentile bootstrap interval over pairs."""
    means = d[rng.integers(0, len(d), (boot, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(d))}


LABELS = {"score": "minority score ({distance})", "score_level": "level of that score among the training scores",
          "expected_level_0.1T": "classifier E[level] at 0.1 T", "p_target_0.1T": "classifier p(target) at 0.1 T",
          "argmax_is_target_0.1T": "classifier argmax = target at 0.1 T",
          "p_target_chain_mean": "p(target) along the chain (mean over the DDIM steps)"}


def table(result: dict) -> list[str]:
    tail = result["tail_classes"]
    lines = ["| quantity | " + " | ".join(tail) + " | all: guided / plain | all: guided - plain [95 % CI] |",
             "|---|" + "---|" * (len(tail) + 2)]
    for q, label in LABELS.items():
        rows = result["summary"][q]
        cells = [f"{rows[n]['diff']:+.4g} [{rows[n]['lo']:+.3g}, {rows[n]['hi']:+.3g}]" for n in tail]
        a = rows["all"]
        lines.append(f"| {label.format(distance=result['distance'])} | " + " | ".join(cells) +
                     f" | {a['guided']:.4g} / {a['plain']:.4g} | **{a['diff']:+.4g} [{a['lo']:+.3g}, {a['hi']:+.3g}]** |")
    return lines


def verdict(result: dict) -> str:
    def side(q):
        a = result["summary"][q]["all"]
        return "above 0" if a["lo"] > 0 else "below 0" if a["hi"] < 0 else "contains 0"
    return (f"Overall interval of the minority score: {side('score')}; of the classifier's E[level] at 0.1 T: "
            f"{side('expected_level_0.1T')}; of p(target) at 0.1 T: {side('p_target_0.1T')}; of p(target) along "
            f"the chain: {side('p_target_chain_mean')}.")


def write_readme(out_dir: Path, result: dict) -> None:
    path = out_dir / "README.md"
    notes = ""
    if path.is_file() and NOTES_MARK in path.read_text():
        notes = path.read_text().split(NOTES_MARK, 1)[1]
    any_mode = next(iter(result.values()))
    lines = [f"# Minority guidance: guided vs plain DDIM from the same x_T ({any_mode['experiment']})", "",
             "Issue 40's experiment that tells a scale limit from a defect: the minority score and the minority "
             "classifier's level of the images the shipped guidance draws, against the plain DDIM images from the "
             "same x_T. Per cell: mean of guided - plain over pairs and its 95 % percentile bootstrap interval "
             "over pairs. Rule: interval above 0 -> the guidance works and what fails at this scale is the score's "
             "link to rarity; otherwise a guidance defect. No oracle, no test images.", ""]
    for mode, r in result.items():
        lines += [f"## mode {mode} ({'Eq. 16/17' if mode == 'conditional' else 'Eq. 7/8'})", "",
                  f"Command: `{r['command']}`", "",
                  f"Machine: `{r['machine_key']}`; probe wall time {r['wall_s']} s.",
                  "",
                  f"{r['n_per_class']} x_T per tail class (the first of the shipped synthesis's shards), "
                  f"{r['sampler'].upper()} {r['num_steps']} steps, CFG {r['cfg']}, guidance w = {r['scale']} toward "
                  f"level {r['target']} of L = {r['num_levels']} ({r['guidance_mode']}); plain = the same with w = 0. "
                  f"Score: {r['distance']}, {r['score']['num_draws']} draws at t = {r['score_t']}, "
                  f"{'class' if r['score']['conditional'] else 'null'} condition (the score stage's, "
                  f"`{r['score_stage']}`). Classifier level: t = {r['level_t']} (0.1 T), mean over "
                  f"{r['eps_draws']} seeded eps (the same for both images of a pair); the classifier's held-out "
                  f"accuracy at 0.1 T: {r['classifier_holdout'].get('holdout_acc_t0.1T', float('nan')):.3f} "
                  f"(chance {r['classifier_holdout'].get('chance', float('nan')):.2f}). Minority classifier "
                  f"`{r['artifacts']['minority']}`.", ""]
        lines += table(r)
        lines += ["", verdict(r), ""]
        for tag, per_class in r["checks_vs_stored_sets"].items():
            same = sum(v["identical_images"] for v in per_class.values())
            n = sum(v["n"] for v in per_class.values())
            worst = max(v["max_abs_uint8"] for v in per_class.values())
            lines.append(f"- {tag} images vs the stored synthetic set `{next(iter(per_class.values()))['vs']}`: "
                         f"{same} / {n} identical, largest pixel difference {worst} / 255.")
        steps = r["chain_timesteps"]
        chain = {tag: np.mean([r["per_image"][c]["chain_p_target_per_step"][tag] for c in r["tail_classes"]], 0)
                 for tag in ("guided", "plain")}
        lines += ["", "p(target | x_t) at the guidance's own timesteps, mean over all images (guided / plain): " +
                  ", ".join(f"t={t}: {g:.3f}/{p:.3f}" for t, g, p in zip(steps, chain["guided"], chain["plain"])), ""]
    text = "\n".join(lines) + "\n" + NOTES_MARK + (notes if notes else "\n")
    path.write_text(text)


def print_table(mode: str, result: dict) -> None:
    print(f"\n## {mode}\n" + "\n".join(table(result)) + "\n\n" + verdict(result))


if __name__ == "__main__":
    main()
