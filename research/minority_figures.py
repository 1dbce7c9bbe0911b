"""Minority-guidance figures and tables of an experiment (PBC-LT by default), copied out of its report stage.

    python research/minority_figures.py --runs runs --out-dir research/results/minority --grid-dir runs/figures/minority

Runs the experiment's ``minority_figures`` stage (:mod:`tailsynth.methods.minority.figures`; the same stage
``tailsynth run`` puts in the report when the ``minority`` method and the oracle are in the experiment) and
whatever it needs (minority scores, classifier, the only-LoRA and minority synthetic sets, the oracle), then writes
``minority.json``, ``rarity_hist.png`` and ``README.md`` to ``--out-dir`` and the image grids (real and generated
images: not committed) to ``--grid-dir``. Nothing here chooses a setting.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pbc-lt-cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out-dir", default="research/results/minority")
    parser.add_argument("--grid-dir", default="runs/figures/minority")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import StageGraph, check_experiment
    from tailsynth.engine.runner import Runner
    from tailsynth.engine.store import ArtifactStore
    from tailsynth.report.markdown import table_to_markdown
    from tailsynth.methods.minority.figures import minority_figures
    from tailsynth.methods.minority.report import correlation_table, generation_table

    started = time.time()
    cfg = load_experiment(args.experiment, list(args.overrides))
    if "minority" not in cfg.methods:
        cfg = cfg.model_copy(update={"methods": [*cfg.methods, "minority"]})
    if cfg.oracle is None:
        raise SystemExit(f"{args.experiment} has no oracle (oracle: null): the figures need its features")
    check_experiment(cfg)
    artifact = minority_figures(StageGraph(cfg, Runner(ArtifactStore(args.runs))))
    if artifact is None:
        raise SystemExit("synthesis.params.minority.figures.enabled is false")
    out_dir, grid_dir = Path(args.out_dir), Path(args.grid_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_dir.mkdir(parents=True, exist_ok=True)
    result = json.loads((artifact.path / "minority.json").read_text())
    result.update(experiment=cfg.name, figures_stage=artifact.fingerprint,
                  figures_stage_wall_s=artifact.manifest.get("wall_time_s"), script_wall_s=round(time.time() - started, 1))
    (out_dir / "minority.json").write_text(json.dumps(result, indent=2))
    shutil.copyfile(artifact.path / "rarity_hist.png", out_dir / "rarity_hist.png")
    for png in artifact.path.glob("*.png"):
        if png.name != "rarity_hist.png":
            shutil.copyfile(png, grid_dir / png.name)
    lines = [f"# Minority guidance on {cfg.name}", "",
             "Command: `python research/minority_figures.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`",
             "", table_to_markdown(correlation_table(result)), table_to_markdown(generation_table(result)),
             "## Wall times (s)", "", "| step | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**result["stage_wall_time_s"], **result["figure_wall_time_s"],
                                             "minority_figures stage": result["figures_stage_wall_s"]}.items()]
    holdout = result["classifier_holdout"]
    if holdout:
        lines += ["", f"Minority classifier, held-out accuracy (chance {holdout.get('chance', 0):.2f}): " +
                  ", ".join(f"{k.split('_t')[1]} {v:.3f}" for k, v in holdout.items() if k.startswith("holdout_acc"))]
    text = "\n".join(lines) + "\n"
    (out_dir / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
