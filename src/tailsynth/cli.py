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
    """List the stages in RUNS_DIR with fingerprints, states, wall times and labels (method, seed, role)."""
    from .engine import ArtifactStore
    rows = ArtifactStore(runs_dir).list()
    if not rows:
        click.echo(f"no artifacts in {runs_dir}")
        return
    click.echo(f"{'stage':<18} {'fingerprint':<18} {'state':<9} {'wall s':>8}  label")
    for r in rows:
        wall = f"{r['wall_time_s']:.1f}" if r["wall_time_s"] is not None else "-"
        click.echo(f"{r['stage']:<18} {r['fingerprint']:<18} {r['state']:<9} {wall:>8}  {r.get('label') or '-'}")


@cli.command()
@click.option("--merge", "merge", is_flag=True, required=True,
              help="join the INPUTS' rows into one table (the only mode so far)")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, help="folder for the merged results.json, report.md and report.html")
@click.option("--prefer-last", is_flag=True, help="a method in several inputs: keep the later argument's rows")
def report(merge, inputs, out, prefer_last) -> None:
    """--merge INPUTS --out DIR: one table from several runs of one experiment; each input is a report folder or
    a results.json. Refuses rows made with other non-method settings, on another split or on another machine kind,
    and a method in several inputs unless --prefer-last."""
    from .report.merge import merge_report_files
    md_path, html_path, json_path = merge_report_files(inputs, out, prefer_last=prefer_last, command=_command_line())
    from .utils import read_json
    methods = list(read_json(json_path)["methods"])
    click.echo(f"merged {len(inputs)} input(s), {len(methods)} method(s) ({', '.join(methods)}) into {md_path.parent}")


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[RUN_DIR] IMAGES...")
@click.option("--model", default=None, help="the classifier: a train_classifier or evaluate artifact folder "
              "(or the first argument)")
@click.option("--method", default=None, help="or by name: the final classifier of this method's row")
@click.option("--seed", type=int, default=None, help="with --method: its seed (default: the only one)")
@click.option("--experiment", default=None, help="with --method: the row of this experiment's report")
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="with --method: artifact directory")
@click.option("--alpha", type=float, default=None, help="target head flag rate of the rare flag (default: the "
              "card's, 0.05): split-conformal threshold re-computed from the card's calibration scores")
@click.option("--mondrian", is_flag=True, help="one rare threshold per predicted head class (flag rate <= alpha "
              "within each)")
@click.option("--out", default=None, help="write the table as CSV (.csv) or JSON (.json)")
@click.option("--skip-bad", is_flag=True, help="skip unreadable images (listed at the end) instead of stopping")
@click.option("--device", default="auto", show_default=True)
def predict(args, model, method, seed, experiment, runs, alpha, mondrian, out, skip_bad, device) -> None:
    """Label IMAGES (files or folders) with a trained classifier: head class, P(tail), rare flag.

    The classifier: RUN_DIR (a train_classifier or evaluate artifact folder, as `tailsynth status` lists them) or
    --model RUN_DIR, or by name: --method M [--seed S] [--experiment E] [--runs DIR], the final classifier of
    that row (from the experiment's report when there is one; RUN_DIR may be that report folder,
    runs/reports/<experiment>). Several or no matches: the candidates are listed."""
    from .api import load
    run_dir, images = _predict_args(args, model, by_name=method is not None or experiment is not None)
    predictor = load(run_dir, device, runs=runs, experiment=experiment, method=method, seed=seed, alpha=alpha,
                     mondrian=mondrian)
    rows = [p.as_dict() for p in predictor.predict(images, skip_bad=skip_bad)]
    click.echo(predictor.rule_line())  # threshold, alpha, the split-conformal rule and its calibration set
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


def _predict_args(args: tuple[str, ...], model: str | None, by_name: bool) -> tuple[str | None, tuple[str, ...]]:
    """(the model argument, the images) of ``predict``: with --model every argument is an image; by name the first
    is the model only when it is a report folder; otherwise the first is RUN_DIR (the form before names)."""
    if model is not None:
        run_dir, images = model, args
    elif by_name:
        from .engine.lookup import RESULTS
        run_dir = args[0] if (Path(args[0]) / RESULTS).is_file() else None
        images = args[1:] if run_dir is not None else args
    else:
        run_dir, images = args[0], args[1:]
    if not images:
        raise TailsynthError("no IMAGES given: tailsynth predict RUN_DIR IMAGES... "
                             "(or --method M [--seed S] [--experiment E] IMAGES...)")
    return run_dir, images


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


@cli.command()
@click.argument("results_dir")
@click.option("--out", default=None, help="write README.md and leaderboard.csv here instead of RESULTS_DIR")
def leaderboard(results_dir, out) -> None:
    """Write RESULTS_DIR/README.md and leaderboard.csv: every row of every RESULTS_DIR/<experiment>/results.json
    (FPR@95 and AUROC with 95 % intervals, accuracies, oracle accuracy, CPU-hours, machine), one table per
    benchmark."""
    from .report.leaderboard import write_leaderboard
    readme, table, rows = write_leaderboard(results_dir, out)
    experiments = len({(r.benchmark, r.experiment) for r in rows})
    click.echo(f"wrote {readme} and {table}: {len(rows)} rows from {experiments} experiment(s)")



@cli.group()
def weights() -> None:
    """Write seeded RANDOM weights with the real architectures (offline; for dry runs at real size, not results)."""


@weights.command("random-sd")
@click.argument("out", default="weights/sd-1.4-random")
@click.option("--variant", type=click.Choice(["sd-1.4", "tiny"]), default="sd-1.4", show_default=True,
              help="sd-1.4: SD-1.4's UNet/VAE/CLIP ViT-L/14 configs (about 1.07 G parameters); tiny: test size")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True)
@click.option("--force", is_flag=True, help="replace OUT if it holds anything else")
def weights_random_sd(out, variant, seed, dtype, force) -> None:
    """A Stable Diffusion 1.x folder in diffusers' layout at OUT, with random weights and a byte-level tokenizer
    (CLIP's BPE vocabulary is not available offline); load it with `tailsynth run ... --sd-path OUT`."""
    from .diffusion.random_sd import write_random_sd
    from .diffusion.sd import check_sd_folder
    started = time.time()
    path = write_random_sd(out, variant=variant, seed=seed, dtype=dtype, force=force)
    found = check_sd_folder(path, "OUT")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"{path}: random SD ({variant}, seed {seed}, {dtype}), cross-attention width "
               f"{found['cross_attention_dim']}, {size / 2**30:.2f} GiB, {time.time() - started:.0f}s")


@weights.command("random-resnet")
@click.argument("out", default="weights/resnet50-random.pth")
@click.option("--model", default="resnet50", show_default=True, help="resnet18, resnet34 or resnet50")
@click.option("--seed", type=int, default=0, show_default=True)
def weights_random_resnet(out, model, seed) -> None:
    """A state dict in torchvision's key layout (1000-class fc) with random weights at OUT (.pth, .pt or
    .safetensors), for classifier.pretrained=OUT."""
    from .models.pretrained import write_random_backbone
    counts = write_random_backbone(out, model, seed)
    click.echo(f"{out}: random {model} (seed {seed}), {counts['tensors']} tensors, "
               f"{counts['parameters']:,} parameters")


def open_graph(config: str, overrides: tuple[str, ...], runs: str, log=click.echo):
    """The stage graph of experiment CONFIG with OVERRIDES over the artifacts in RUNS (what ``tailsynth run``
    builds), for a method's own commands."""
    from .engine import ArtifactStore, Runner
    from .pipeline.experiment import load_experiment
    from .pipeline.graph import StageGraph, check_experiment
    cfg = load_experiment(config, list(overrides))
    check_experiment(cfg)
    return StageGraph(cfg, Runner(ArtifactStore(runs), log=log))


def _add_method_commands() -> None:
    """Each method package's commands (``tailsynth.methods.COMMANDS``: ``minority``, ``anchors``, ...)."""
    from .methods import COMMANDS
    for factory in COMMANDS:
        cli.add_command(factory(open_graph))


_add_method_commands()


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
