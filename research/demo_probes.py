"""Probes behind the shipped `demo` profile (issue: make LoGex's guidance matter): each probe is the demo
with some overrides, run from scratch in its own runs folder (so its wall time is the whole demo's), and
the table records what the choice was made on -- the validation split (val FPR@95, val bAcc-head / tail)
and the oracle accuracy of the synthetic tail images (the oracle never sees the test split) -- beside the
test numbers, which are reported and never used to choose.

    python research/demo_probes.py --out research/results/demo-probes [--only NAME ...]

Writes ``probes.json`` (every probe's overrides, metrics and wall time) and ``probes.md`` (the table).
One probe takes 3 to 4 min on 2 CPU cores; all of them about 20 min.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the demo as it shipped before the probes (2-level UNet, LoRA rank 4 on cross-attention for 150 steps,
# DiG-IN 10 DDIM steps / 6 Adam steps at LoGex's lrs, the aux = the ldam-rw-drw row)
OLD = ["diffusion.pixel.block_out_channels=[32,64]", "diffusion.pixel.attention_levels=[false,true]",
       "diffusion.pixel.norm_num_groups=32", "diffusion.base.steps=600", "diffusion.lora.rank=4",
       "diffusion.lora.target=cross_attention", "diffusion.lora.train.steps=150", "diffusion.lora.train.lr=1e-3",
       "synthesis.guidance_scale=3.0", "synthesis.n_per_class=10", "synthesis.shard_size=10",
       "synthesis.params.logex.num_steps=10", "synthesis.params.logex.max_opt_steps=6",
       "synthesis.params.logex.threshold=0.4", "synthesis.params.logex.lr_latent=1e-3",
       "synthesis.params.logex.lr_embed=1e-2", "synthesis.aux_train={}"]
STRONG_DIGIN = ["synthesis.params.logex.max_opt_steps=12", "synthesis.params.logex.threshold=0.9",
                "synthesis.params.logex.lr_latent=1e-2", "synthesis.params.logex.lr_embed=1e-1"]
BIG_LORA = ["diffusion.lora.rank=16", "diffusion.lora.target=all_attention", "diffusion.lora.train.lr=3e-3"]
AUX = ["synthesis.aux_train.epochs=12", "synthesis.aux_train.selection=val_bacc"]
# DiG-IN's expectation over views (its code: 16 cutouts, noise 0.005; LoGex's copy has none)
CUT = ["synthesis.params.logex.cutouts=16", "synthesis.params.logex.cutout_noise=0.005"]
# the demo as it shipped before the thread count and the classifier epochs were chosen: 6 classifier epochs, torch's
# default thread count (2 on the 2-core machine of these probes)
EP6 = ["threads=null", "classifier.epochs=6"]
PROBES: dict[str, list[str]] = {
    "old-demo": OLD + EP6,
    "old+lora500+strong-digin": OLD + EP6 + BIG_LORA + ["diffusion.lora.train.steps=500"] + STRONG_DIGIN,
    "old+lora500+strong-digin+aux": OLD + EP6 + BIG_LORA + ["diffusion.lora.train.steps=500"] + STRONG_DIGIN + AUX,
    "ep6": EP6,
    "ep6-seeds-0-1-2": EP6 + ["seeds=[0,1,2]"],  # the classifier seeds' spread (the generator is seed-independent)
    "ep6-no-aux-train": EP6 + ["synthesis.aux_train={}"],
    "ep6-aux-ensemble-3": EP6 + ["synthesis.aux_ensemble=3"],  # the mean softmax of 3 auxiliaries (seeds 0, 1, 2)
    "ep6-logex-digin-settings": EP6 + ["synthesis.params.logex.max_opt_steps=20",
                                       "synthesis.params.logex.threshold=0.4", "synthesis.params.logex.lr_latent=1e-3",
                                       "synthesis.params.logex.lr_embed=1e-2"],
    "ep6-cutouts16": EP6 + CUT,
    "ep6-cutouts16-seeds-0-1-2": EP6 + CUT + ["seeds=[0,1,2]"],
    # the same, run with 1 thread while another job used the cores (other digits, longer wall time)
    "ep6-cutouts16-1thread-busy-machine": ["classifier.epochs=6"] + CUT,
    # tail detection in the printed single-seed table: more synthetic tail digits, longer classifier training, on
    # 1 thread (run beside another job on the 2 cores, so their wall times are longer than alone)
    "ep6-1thread": ["classifier.epochs=6"],
    "ep6-n30-1thread": ["classifier.epochs=6", "synthesis.n_per_class=30"],
    "shipped": [],  # the demo as shipped: 10 classifier epochs, 1 thread
    "n30": ["synthesis.n_per_class=30"],
    "shipped-seeds-0-1-2": ["seeds=[0,1,2]"],
    # a shorter demo (3 min on 2 AVX2 cores): the rows above ran on AVX-512; these in --out ...-avx2 on AVX2
    "avx2-shipped": [],
    "avx2-base400": ["diffusion.base.steps=400"],
    "avx2-base400-ep8": ["diffusion.base.steps=400", "classifier.epochs=8"],
    "avx2-base400-ep8-lora250": ["diffusion.base.steps=400", "classifier.epochs=8", "diffusion.lora.train.steps=250"],
    "avx2-digin-batch30": ["synthesis.params.logex.batch_size=30"],
    "avx2-base400-lora250": ["diffusion.base.steps=400", "diffusion.lora.train.steps=250"],
    "avx2-base400-opt6": ["diffusion.base.steps=400", "synthesis.params.logex.max_opt_steps=6"],
    "avx2-base400-lora250-opt6": ["diffusion.base.steps=400", "diffusion.lora.train.steps=250",
                                  "synthesis.params.logex.max_opt_steps=6"],
}
# every probe starts from the demo before its 3-minute cut (600 base steps, 350 LoRA steps; now 400 and 250, the
# avx2-base400-lora250 probe); later overrides win
BEFORE_CUT = ["diffusion.base.steps=600", "diffusion.lora.train.steps=350"]
PROBES = {name: BEFORE_CUT + overrides for name, overrides in PROBES.items()}
METRICS = ["val_fpr95", "val_auroc", "val_bacc_head", "val_bacc_tail", "fpr95", "auroc", "bacc_head", "bacc_tail"]


def run_cli(name: str, args: list[str], log: Path) -> float:
    """Run ``tailsynth ARGS`` offline without progress bars, output to ``log``; the wall time in seconds.
    A failure stops the probes with the log's path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TAILSYNTH_PROGRESS": "0"}
    cmd = [sys.executable, "-c", "from tailsynth.cli import main; main()", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise SystemExit(f"probe {name} failed (rc {rc}); see {log}")
    return time.time() - start


def run_probe(name: str, overrides: list[str], runs: Path, keep_wall: float | None = None) -> dict:
    """Run the demo with ``overrides`` in ``runs`` (finished stages are reused) and collect its numbers;
    ``keep_wall``: the wall time to record instead of this call's (a refresh of a finished probe)."""
    wall = run_cli(name, ["demo", "--runs", str(runs), *overrides], runs.with_suffix(".log"))
    return {"overrides": overrides, "wall_s": keep_wall if keep_wall is not None else round(wall, 1), **collect(runs)}


def collect(runs: Path, results_file: Path | None = None) -> dict:
    """The table rows, the oracle accuracy and the auxiliary classifier's validation balanced accuracy
    (head, tail, all classes) of one finished probe's runs folder (``results_file``: the run's results.json,
    by default the demo report's)."""
    results = json.loads((results_file or runs / "reports" / "demo" / "results.json").read_text())
    rows = {m: {k: results["methods"][m][k]["mean"] for k in METRICS} for m in results["methods"]}
    spread = {m: {k: results["methods"][m][k]["std"] for k in METRICS} for m in results["methods"]}
    quality = {k: v for k, v in results.get("oracle_accuracy", {}).items() if isinstance(v, dict)}
    oracle = {k: v["overall"] for k, v in quality.items()}
    on_synthetic = {k: {f: v[f] for f in ("aux_accuracy", "aux_right_oracle_wrong", "agreement") if f in v}
                    for k, v in quality.items() if k != "real_tail_test"}
    return {"methods": rows, "std": spread, "seeds": results["seeds"], "oracle": oracle,
            "aux_on_synthetic": on_synthetic, "aux": aux_validation(runs, results)}


def aux_validation(runs: Path, results: dict) -> dict:
    """Recall per class of the DiG-IN synthesis's auxiliary classifier on the validation split (argmax over all
    classes), averaged over the head, the tail and all classes; the synthesis is the one of the ``logex`` rows
    in ``results`` (a runs folder may hold several)."""
    import numpy as np
    import torch

    from tailsynth.engine.artifacts import load_classifier, read_split, split_data
    from tailsynth.data import DataConfig
    from tailsynth.engine.store import Artifact
    from tailsynth.training import predict

    row = json.loads((runs / "evaluate" / Path(results["runs"]["logex"][0]["path"]).name / "manifest.json").read_text())
    synth_fp = row["inputs"]["classifier"]["fingerprint"]
    trained = json.loads((runs / "train_classifier" / synth_fp / "manifest.json").read_text())
    synth_ref = trained["inputs"]["synthetic"]
    synth = json.loads((runs / "synthesize" / synth_ref["fingerprint"] / "manifest.json").read_text())
    aux, split_in = synth["inputs"]["aux"], synth["inputs"]["split"]
    split = read_split(Artifact("split", split_in["fingerprint"], runs / "split" / split_in["fingerprint"]))
    val = split_data(split, DataConfig(**synth["config"]["data"]), "val")
    model, _ = load_classifier(runs / "train_classifier" / aux["fingerprint"])
    pred = predict(model, val.images, torch.device("cpu"))[0].argmax(1)
    recall = np.array([np.mean(pred[val.labels == c] == c) for c in range(len(split.class_names))])
    head = [c if isinstance(c, int) else split.class_names.index(c) for c in split.head_classes]
    tail = [c if isinstance(c, int) else split.class_names.index(c) for c in split.tail_classes]
    return {"label": json.loads((runs / "train_classifier" / aux["fingerprint"] / "manifest.json").read_text())["label"],
            "val_bacc": float(recall.mean()), "val_bacc_head": float(recall[head].mean()),
            "val_bacc_tail": float(recall[tail].mean())}


DEMO_TITLE = ("Demo probes (`python research/demo_probes.py`): MNIST-5k-LT at 16 px, 1 seed; oracle = accuracy of "
              "the oracle on the 60 synthetic tail digits; val = validation split (200 head + 60 tail digits), the "
              "choice; test = reported only. Percentages. Wall time of the whole demo in its own runs folder, on a "
              "machine that may have run other jobs at the same time (the README gives the demo's own timing).")


AVX2_TITLE = ("Demo probes on 2 AVX2 cores (AMD EPYC), `jobs: 2` (`python research/demo_probes.py --out "
              "research/results/demo-probes-avx2 --only avx2-... [--reuse PROBE]`): MNIST-5k-LT at 16 px, 1 seed; "
              "oracle = accuracy of the oracle on the 60 synthetic tail digits; val = validation split (200 head + 60 "
              "tail digits), the choice (FPR@95, then AUROC); test = reported only. Percentages. Wall: avx2-shipped "
              "214 s is `time tailsynth demo` alone on the machine (its stages were then hard-linked into the probe's "
              "runs folder); avx2-base400 ran from scratch beside other jobs; the other rows reused the finished stages "
              "of avx2-shipped (digin-batch30), avx2-base400 (the rest) or avx2-base400-lora250 (lora250-opt6), so "
              "their wall is their new work only. The chosen avx2-base400-lora250 takes 175 s alone from scratch "
              "(README).")


def table(probes: dict, title: str = DEMO_TITLE) -> str:
    lines = [title, "",
             "| probe | wall s | oracle lora | oracle logex | val FPR@95 ce / lora / logex | val AUROC ce / lora / logex | "
             "val bAcc-head ce / lora / logex | val bAcc-tail ce / lora / logex | aux val bAcc all / tail | "
             "aux acc. on lora / logex images | "
             "aux right, oracle wrong | test FPR@95 ce / lora / logex | test bAcc-tail ce / lora / logex | "
             "test bAcc-head ce / logex |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda x: "-" if x != x else f"{100 * x:.1f}"  # noqa: E731  (NaN: not measured by this probe)
    for name, p in probes.items():
        m, aux, nan = p["methods"], p.get("aux", {}), float("nan")
        on_lora, on_logex = (p.get("aux_on_synthetic", {}).get(k, {}) for k in ("lora", "logex"))
        sd = p.get("std", {})
        several = len(p.get("seeds", [0])) > 1

        def trio(k):
            return " / ".join((pct(m[r][k]) + (f" ± {pct(sd[r][k])}" if several else ""))
                              if r in m and k in m[r] else "-"
                              for r in ("ce", "logex-lora", "logex"))
        lines.append(f"| {name} | {p['wall_s']:.0f} | {pct(p['oracle'].get('lora', float('nan')))} | "
                     f"{pct(p['oracle'].get('logex', float('nan')))} | {trio('val_fpr95')} | {trio('val_auroc')} | "
                     f"{trio('val_bacc_head')} | "
                     f"{trio('val_bacc_tail')} | "
                     f"{pct(aux.get('val_bacc', nan))} / {pct(aux.get('val_bacc_tail', nan))} | "
                     f"{pct(on_lora.get('aux_accuracy', nan))} / {pct(on_logex.get('aux_accuracy', nan))} | "
                     f"{pct(on_logex.get('aux_right_oracle_wrong', nan))} | {trio('fpr95')} | "
                     f"{trio('bacc_tail')} | {pct(m['ce']['bacc_head'])} / {pct(m['logex']['bacc_head'])} |")
    return "\n".join(lines) + "\n"


def save(out: Path, done: dict, title: str | None = None) -> None:
    """``probes.json`` (every probe's record) and ``probes.md`` (the table) in ``out``."""
    title = title or (AVX2_TITLE if all(name.startswith("avx2-") for name in done) else DEMO_TITLE)
    (out / "probes.json").write_text(json.dumps(done, indent=1))
    (out / "probes.md").write_text(table(done, title))


def probe_parser(doc: str, out: str, runs: str) -> argparse.ArgumentParser:
    """The probe scripts' common options: ``--out`` (the table's folder), ``--runs``, ``--only NAME ...``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--runs", type=Path, default=Path(runs))
    ap.add_argument("--only", nargs="*", default=None)
    return ap


def load_probes(out: Path) -> dict:
    """The probes finished so far (``out/probes.json``; empty when none), creating ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "probes.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    ap = probe_parser(__doc__, "research/results/demo-probes", "runs-demo-probes")
    ap.add_argument("--refresh", action="store_true",
                    help="rerun the finished probes on their runs folders (every finished stage is reused; a stage "
                         "whose code changed reruns) and re-collect, keeping their wall times")
    ap.add_argument("--reuse", default=None, metavar="PROBE",
                    help="start each probe's runs folder with hard links to PROBE's finished stages (not its report), so "
                         "stages with equal settings are not rebuilt: the wall column is then each probe's new work only")
    args = ap.parse_args()
    done = load_probes(args.out)
    for name, overrides in PROBES.items():
        if args.only and name not in args.only:
            continue
        if args.refresh and name not in done:
            continue
        print(f"[probe] {name}", flush=True)
        runs = args.runs / name
        if args.reuse and args.reuse != name and not runs.exists():
            runs.mkdir(parents=True)
            for stage in (args.runs / args.reuse).iterdir():
                if stage.is_dir() and stage.name != "reports":
                    shutil.copytree(stage, runs / stage.name, copy_function=os.link)
        done[name] = run_probe(name, ["methods=[ce,logex-lora,logex]", *overrides], runs,
                               keep_wall=done[name]["wall_s"] if args.refresh else None)
        save(args.out, done)
    print(table(done))


if __name__ == "__main__":
    main()
