"""The ``tailsynth`` command line: thin wrappers that parse, call the pipeline and print."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from .errors import TailsynthError

DEFAULT_RUNS = "runs"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tailsynth")
def cli() -> None:
    """Long-tailed recognition with synthetic tail images from adapted, guided diffusion models."""


def _command_line() -> str:
    return "tailsynth " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_summary(report_dir: Path) -> None:
    from .utils import read_json
    results = read_json(report_dir / "results.json")
    click.echo("\nmethod              FPR@95 ↓         AUROC ↑          bAcc-head ↑      bAcc-tail ↑")
    for name, row in results["methods"].items():
        cells = []
        for key in ("fpr95", "auroc", "bacc_head", "bacc_tail"):
            m = row.get(key)
            if not m:
                cells.append(f"{'-':>6}         ")
            elif len(m.get("values", [])) < 2:  # one seed: no spread to show
                cells.append(f"{100 * m['mean']:6.2f}         ")
            else:
                cells.append(f"{100 * m['mean']:6.2f} ± {100 * m['std']:5.2f}")
        click.echo(f"{name:<18}  " + "   ".join(cells))
    click.echo(f"\nreport: {(report_dir / 'report.html').resolve()}")


def _run(config: str, overrides: tuple[str, ...], runs: str, force: tuple[str, ...], plan: bool,
         results_dir: str | None, sd_path: str | None = None) -> None:
    from .pipeline.experiment import load_experiment
    if sd_path:
        overrides = tuple(overrides) + ("diffusion.backend=sd", f"diffusion.sd_path={sd_path}")
    from .pipeline.experiment_run import run_experiment

    cfg = load_experiment(config, list(overrides))
    started = time.time()
    result = run_experiment(cfg, runs, force=set(force), plan_only=plan, command=_command_line(),
                            log=click.echo, results_dir=results_dir)
    from .distributed import world
    if world()[0] != 0:  # another process of a multi-process run: rank 0 reports
        return
    if plan:
        click.echo(f"{'stage':<18} {'fingerprint':<18} {'state':<18} {'label':<24} work")
        for row in result.plan:
            click.echo(f"{row['stage']:<18} {row['fingerprint']:<18} {row['state']:<18} {row['label']:<24} "
                       f"{row['cost']}")
        todo = sum(r["state"] != "cached" for r in result.plan)
        click.echo(f"{len(result.plan)} stages, {todo} to run")
        return
    _print_summary(result.report_dir)
    if results_dir:  # copied by run_experiment under the report's lock
        click.echo(f"copied report.md, results.json and report.html to {Path(results_dir)}")
    click.echo(f"wall time {time.time() - started:.0f}s")


@cli.command()
@click.argument("config")
@click.argument("overrides", nargs=-1)
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="artifact directory")
@click.option("--force", multiple=True, help="recompute this stage (repeatable)")
@click.option("--plan", is_flag=True, help="print the stages and which are cached; run nothing")
@click.option("--results-dir", default=None, help="also copy report.md/results.json/report.html here")
@click.option("--sd-path", default=None, help="a local Stable Diffusion 1.x folder: generate with it")
def run(config, overrides, runs, force, plan, results_dir, sd_path) -> None:
    """Run an experiment: CONFIG is a YAML file or a shipped name; OVERRIDES are key.sub=value."""
    _run(config, overrides, runs, force, plan, results_dir, sd_path)


@cli.command()
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="artifact directory")
@click.argument("overrides", nargs=-1)
def demo(runs, overrides) -> None:
    """The whole pipeline on the built-in MNIST-5k long-tailed benchmark, in a tiny CPU profile."""
    _run("demo", overrides, runs, (), False, None)


@cli.command()
@click.option("--benchmark", required=True, help="benchmark preset or YAML (e.g. pbc-lt)")
@click.option("--method", "methods", multiple=True, required=True, help="method name (repeatable)")
@click.option("--seeds", type=int, multiple=True, default=(0,), show_default=True, help="seed (repeatable)")
@click.option("--profile", default="cpu", show_default=True, help="uses configs/experiments/<benchmark>-<profile>")
@click.option("--config", "config", default=None, help="experiment YAML to take the training profile from")
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="artifact directory")
@click.option("--results-dir", default=None, help="also copy report.md/results.json/report.html here")
@click.argument("overrides", nargs=-1)
def train(benchmark, methods, seeds, profile, config, runs, results_dir, overrides) -> None:
    """Train and evaluate METHODs x SEEDS on a benchmark (a shortcut for ``tailsynth run``)."""
    from .pipeline.experiment import find_experiment
    config = config or str(find_experiment(f"{Path(benchmark).stem}-{profile}"))
    extra = [f"benchmark={benchmark}", f"methods=[{','.join(methods)}]", f"seeds=[{','.join(map(str, seeds))}]"]
    _run(config, tuple(extra) + tuple(overrides), runs, (), False, results_dir)


@cli.command()
@click.argument("runs_dir", default=DEFAULT_RUNS)
def status(runs_dir) -> None:
    """List the stages in RUNS_DIR with fingerprints, states and wall times."""
    from .pipeline import ArtifactStore
    rows = ArtifactStore(runs_dir).list()
    if not rows:
        click.echo(f"no artifacts in {runs_dir}")
        return
    click.echo(f"{'stage':<18} {'fingerprint':<18} {'state':<9} {'wall s':>8}")
    for r in rows:
        wall = f"{r['wall_time_s']:.1f}" if r["wall_time_s"] is not None else "-"
        click.echo(f"{r['stage']:<18} {r['fingerprint']:<18} {r['state']:<9} {wall:>8}")


@cli.command()
@click.argument("run_dir")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", default=None, help="write the table as CSV (.csv) or JSON (.json)")
@click.option("--skip-bad", is_flag=True, help="skip unreadable images (listed at the end) instead of stopping")
@click.option("--device", default="auto", show_default=True)
def predict(run_dir, images, out, skip_bad, device) -> None:
    """Label IMAGES (files or folders) with a trained classifier: head class, P(tail), rare flag."""
    from .api import load
    predictor = load(run_dir, device)
    rows = [p.as_dict() for p in predictor.predict(images, skip_bad=skip_bad)]
    thr = predictor.threshold
    click.echo(f"rare flag: P(tail) > {thr:.4f} (95 % head TPR on validation)" if thr is not None
               else "no tail classes: no rare flag")
    click.echo(f"{'image':<48} {'predicted':<16} {'head class':<16} {'P(tail)':>8}  rare")
    for r in rows:
        click.echo(f"{r['source'][-48:]:<48} {r['predicted_class']:<16} {r['head_class']:<16} "
                   f"{r['p_tail']:8.4f}  {'yes' if r['is_rare'] else 'no'}")
    for path, why in getattr(predictor, "skipped", []):
        click.echo(f"skipped {path}: {why}", err=True)
    if out:
        from .utils import atomic_write_json, atomic_write_text
        if out.endswith(".json"):
            atomic_write_json(out, rows)
        else:
            import csv
            import io
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["source"])
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(out, buffer.getvalue())
        click.echo(f"wrote {out}")


@cli.group()
def data() -> None:
    """Build and inspect long-tailed benchmark splits."""


BUILD_REMEDY = "rerun with --skip-corrupt to leave them out of the split"


def _check_decodable(cfg, split, skip_corrupt: bool):
    """Decode every image file of the source once: an error naming the corrupt files, or with
    ``skip_corrupt`` the split without them and a line saying what was skipped."""
    from .data.images import corrupt_error, find_corrupt
    corrupt = find_corrupt(cfg.source)
    if not corrupt:
        return split, None
    if not skip_corrupt:
        raise corrupt_error(cfg.source, list(corrupt.values()), BUILD_REMEDY)
    kept = split.without(corrupt)
    names = ", ".join(list(corrupt)[:10]) + (" ..." if len(corrupt) > 10 else "")
    return kept, (f"skipped {len(corrupt)} corrupt or truncated image file(s), {len(split) - len(kept)} of "
                  f"them in this split: {names} (tailsynth run needs data.skip_corrupt=true for this source)")


@data.command("build")
@click.option("--preset", default=None, help="a shipped benchmark (pbc-lt, mnist5k-lt, cifar10-lt, ...)")
@click.option("--config", "config_path", default=None, help="a benchmark YAML file")
@click.option("--seed", type=int, default=None, help="split seed (default: the config's)")
@click.option("--out", default=None, help="manifest path (default runs/splits/<name>-seed<seed>.csv)")
@click.option("--skip-corrupt", is_flag=True,
              help="leave corrupt or truncated image files out of the split instead of stopping")
@click.argument("overrides", nargs=-1)
def data_build(preset, config_path, seed, out, skip_corrupt, overrides) -> None:
    """Write a split manifest (source id, class, role, split per sample) and print its count table.

    Every image file of the source is decoded once first: a corrupt one is an error naming it."""
    from .data import build_split, load_benchmark_config
    if bool(preset) == bool(config_path):
        raise TailsynthError("give exactly one of --preset NAME or --config FILE")
    started = time.time()
    cfg = load_benchmark_config(preset or config_path, list(overrides))
    split, skipped = _check_decodable(cfg, build_split(cfg, seed=seed), skip_corrupt)
    path = Path(out or f"{DEFAULT_RUNS}/splits/{cfg.name}-seed{split.seed}.csv")
    split.write(path)
    click.echo(split.count_table())
    if skipped:
        click.echo(skipped)
    click.echo(f"wrote {path} in {time.time() - started:.1f}s")


@data.command("show")
@click.argument("manifest")
def data_show(manifest) -> None:
    """Print the per-class, per-split count table of a split manifest."""
    from .data import Split
    click.echo(Split.read(manifest).count_table())



@cli.group()
def minority() -> None:
    """Minority guidance (Um et al. 2024): score real images, train the minority classifier, sample."""


def _minority_cfg(config: str, overrides: tuple[str, ...]):
    from .pipeline.experiment import load_experiment
    return load_experiment(config, list(overrides))


def _experiment_command(group, name: str):
    """A subcommand of ``group`` taking CONFIG [OVERRIDES]... and --runs (the minority commands)."""
    def wrap(func):
        func = click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="artifact directory")(func)
        func = click.argument("overrides", nargs=-1)(func)
        func = click.argument("config")(func)
        return group.command(name)(func)
    return wrap


@_experiment_command(minority, "score")
def minority_score_cmd(config: str, overrides: tuple[str, ...], runs: str) -> None:
    """Minority scores (l2, l1, perceptual) of the real train/val images under the adapted diffusion model."""
    from .pipeline.minority_run import minority_score
    artifact = minority_score(_minority_cfg(config, overrides), runs, log=click.echo)
    click.echo(f"scores: {artifact.path / 'scores.npz'}")


@_experiment_command(minority, "train")
def minority_train_cmd(config: str, overrides: tuple[str, ...], runs: str) -> None:
    """The noise-conditioned minority classifier on the training images' minority levels."""
    from .pipeline.minority_run import minority_train
    from .utils import read_json
    artifact = minority_train(_minority_cfg(config, overrides), runs, log=click.echo)
    summary = read_json(artifact.path / "manifest.json").get("result", {})
    click.echo(f"classifier: {artifact.path}")
    for key, value in summary.items():
        if key.startswith("holdout") or key == "chance":
            click.echo(f"  {key}: {value:.3f}")


@_experiment_command(minority, "sample")
@click.option("--out", required=True, help="folder for the grids and samples.npz")
@click.option("--levels", default=None, help="target levels, comma-separated (default 0, L/2, L-1)")
@click.option("--scales", default="0,1,5", show_default=True, help="guidance scales w, comma-separated")
@click.option("--classes", default=None, help="class names, comma-separated (default: the tail classes)")
@click.option("-n", "--per-cell", default=8, show_default=True, help="images per grid cell")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
@click.option("--seed", default=0, show_default=True)
def minority_sample_cmd(config, overrides, runs, out, levels, scales, classes, per_cell, sampler, seed) -> None:
    """Guided samples for a grid of target levels x scales (the same noise in every cell)."""
    from .pipeline.minority_run import minority_sample
    try:
        lv = [int(v) for v in levels.split(",")] if levels else None
        sc = [float(v) for v in scales.split(",")]
    except ValueError as err:
        raise TailsynthError(f"--levels / --scales must be comma-separated numbers: {err}") from None
    meta = minority_sample(_minority_cfg(config, overrides), runs, out, lv, sc,
                           classes.split(",") if classes else None, per_cell, sampler, seed, log=click.echo)
    click.echo(f"grids for {', '.join(meta['classes'])}: {Path(out).resolve()}")


@cli.command()
@click.argument("sd_path")
@click.argument("class_names", nargs=-1, required=True)
@click.option("--out", default="anchors.safetensors", show_default=True,
              help="safetensors file: 'anchors' (n, D) float32 and 'token_ids' (n, max tokens), -1 padded")
def anchors(sd_path, class_names, out) -> None:
    """Dream-OOD / BOOD anchors: the CLIP token-embedding row of each class name of a LOCAL Stable Diffusion
    folder (a name of several tokens: the mean of their rows); prints the tokens and norms."""
    import torch
    from safetensors.torch import save_file

    from .diffusion.sd import SDBackend
    backend = SDBackend({"path": sd_path, "class_names": list(class_names)})
    ids = [backend.name_token_ids(name) for name in class_names]
    rows = backend.anchor_embeddings(torch.arange(len(class_names))).detach().float()
    width = max(len(t) for t in ids)
    token_ids = torch.tensor([t + [-1] * (width - len(t)) for t in ids], dtype=torch.long)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"anchors": rows.contiguous(), "token_ids": token_ids}, out,
              metadata={"class_names": "\t".join(class_names), "sd_path": str(Path(sd_path).resolve())})
    for name, t, row in zip(class_names, ids, rows):
        tokens = backend.tokenizer.convert_ids_to_tokens(t)
        click.echo(f"{name:<24} tokens {tokens}  |anchor| {float(row.norm()):.4f}")
    click.echo(f"wrote {out}: {rows.shape[0]} anchors of dimension {rows.shape[1]}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except TailsynthError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("\ninterrupted: finished stages are kept; rerun the same command to resume.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished stages and checkpoints are kept; rerun the same command to resume.",
                   err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
