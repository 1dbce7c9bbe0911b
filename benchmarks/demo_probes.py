"""Probes behind the shipped `demo` profile (issue: make LoGex's guidance matter): each probe is the demo
with some overrides, run from scratch in its own runs folder (so its wall time is the whole demo's), and
the table records what the choice was made on -- the validation split (val FPR@95, val bAcc-head / tail)
and the oracle accuracy of the synthetic tail images (the oracle never sees the test split) -- beside the
test numbers, which are reported and never used to choose.

    python benchmarks/demo_probes.py --out benchmarks/results/demo-probes [--only NAME ...]

Writes ``probes.json`` (every probe's overrides, metrics and wall time) and ``probes.md`` (the table).
One probe takes 3 to 4 min on 2 CPU cores; all of them about 20 min.
"""
from __future__ import annotations

import argparse
import json
import os
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
PROBES: dict[str, list[str]] = {
    "old-demo": OLD,
    "old+lora500+strong-digin": OLD + BIG_LORA + ["diffusion.lora.train.steps=500"] + STRONG_DIGIN,
    "old+lora500+strong-digin+aux": OLD + BIG_LORA + ["diffusion.lora.train.steps=500"] + STRONG_DIGIN + AUX,
    "shipped": [],  # the demo as shipped now
    "shipped-no-aux-train": ["synthesis.aux_train={}"],
    "shipped-logex-digin-settings": ["synthesis.params.logex.max_opt_steps=20", "synthesis.params.logex.threshold=0.4",
                                     "synthesis.params.logex.lr_latent=1e-3", "synthesis.params.logex.lr_embed=1e-2"],
}
METRICS = ["val_fpr95", "val_bacc_head", "val_bacc_tail", "fpr95", "auroc", "bacc_head", "bacc_tail"]


def run_probe(name: str, overrides: list[str], runs: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TAILSYNTH_PROGRESS": "0"}
    cmd = [sys.executable, "-c", "from tailsynth.cli import main; main()", "demo", "--runs", str(runs), *overrides]
    start = time.time()
    log = runs.with_suffix(".log")
    runs.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.time() - start
    if rc:
        raise SystemExit(f"probe {name} failed (rc {rc}); see {log}")
    results = json.loads((runs / "reports" / "demo" / "results.json").read_text())
    rows = {m: {k: results["methods"][m][k]["mean"] for k in METRICS} for m in results["methods"]}
    oracle = {k: v["overall"] for k, v in results.get("oracle_accuracy", {}).items() if isinstance(v, dict)}
    return {"overrides": overrides, "wall_s": round(wall, 1), "methods": rows, "oracle": oracle}


def table(probes: dict) -> str:
    lines = ["| probe | wall s | oracle lora | oracle logex | val FPR@95 ce / lora / logex | "
             "val bAcc-tail ce / lora / logex | test FPR@95 ce / lora / logex | test bAcc-head ce / logex |",
             "|---|---|---|---|---|---|---|---|"]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    for name, p in probes.items():
        m = p["methods"]
        trio = lambda k: " / ".join(pct(m[r][k]) if r in m else "-" for r in ("ce", "logex-lora", "logex"))  # noqa: E731
        lines.append(f"| {name} | {p['wall_s']:.0f} | {pct(p['oracle'].get('lora', float('nan')))} | "
                     f"{pct(p['oracle'].get('logex', float('nan')))} | {trio('val_fpr95')} | {trio('val_bacc_tail')} | "
                     f"{trio('fpr95')} | {pct(m['ce']['bacc_head'])} / {pct(m['logex']['bacc_head'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo-probes"))
    ap.add_argument("--runs", type=Path, default=Path("runs-demo-probes"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "probes.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for name, overrides in PROBES.items():
        if args.only and name not in args.only:
            continue
        print(f"[probe] {name}", flush=True)
        done[name] = run_probe(name, ["methods=[ce,logex-lora,logex]", *overrides], args.runs / name)
        path.write_text(json.dumps(done, indent=1))
        (args.out / "probes.md").write_text(table(done))
    print(table(done))


if __name__ == "__main__":
    main()
