"""Probes behind the shipped `fashion-mnist-lt-cpu` experiment (issue: LoGex on a second kind of image): each
probe is the `demo` profile on the fashion-mnist-lt benchmark with some overrides, all in one runs folder (a
probe reuses the finished stages it shares with earlier ones; the wall column sums all its stages). The
table records what the choice was made on -- the validation split and the oracle accuracy of the synthetic tail
images (the oracle never sees the test split) -- beside the test numbers, which are reported and never used to
choose.

    python research/fashion_probes.py --out research/results/fashion-mnist-probes [--only NAME ...]

Needs Fashion-MNIST's IDX files (Debian: `apt install dataset-fashion-mnist`). Writes ``probes.json`` and
``probes.md`` (the same columns as research/demo_probes.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_probes import collect, load_probes, probe_parser, run_cli, save, table  # noqa: E402

BASE = ["benchmark=fashion-mnist-lt", "methods=[ce,logex-lora,logex]"]
LONGER = ["diffusion.base.steps=2000", "diffusion.lora.train.steps=1000"]
CONV = ["diffusion.lora.target=attention_and_conv"]
PROBES: dict[str, list[str]] = {
    "demo16": [],  # the demo's generator as it is (400 base / 250 LoRA steps)
    "b2000-l1000": LONGER,
    "b2000-l1000-conv": LONGER + CONV,
    "b2000-l2000-conv-r64": LONGER + CONV + ["diffusion.lora.train.steps=2000", "diffusion.lora.rank=64"],
}
R64 = PROBES["b2000-l2000-conv-r64"]
PROBES["b2000-l2000-conv-r64-seeds-0-1-2"] = R64 + ["seeds=[0,1,2]"]
PROBES["b2000-l2000-conv-r64-n50-seeds-0-1-2"] = R64 + ["seeds=[0,1,2]", "synthesis.n_per_class=50"]
PROBES["b2000-l2000-conv-r64-opt20-seeds-0-1-2"] = R64 + ["seeds=[0,1,2]",
                                                         "synthesis.params.logex.max_opt_steps=20"]
TITLE = ("Fashion-MNIST-LT probes (`python research/fashion_probes.py`): the demo profile (16 px, 1 channel) "
         "on fashion-mnist-lt, 1 seed unless the row says otherwise; oracle = accuracy of the oracle on the "
         "synthetic tail images (60; 300 in the n50 row); val = validation split (400 head + 60 tail images), the "
         "choice; test = the official test set (4000 head + 6000 tail images), reported only. Percentages. Wall: "
         "the summed wall time of every stage the probe's rows use (shared stages counted in each probe), 2 Intel "
         "Xeon cores with AVX-512 kernels, two stages at a time, 1 torch thread each.")


def run_probe(name: str, overrides: list[str], runs: Path) -> dict:
    """Run probe ``name`` in the shared ``runs`` folder and collect its numbers; ``wall_s`` is the summed wall
    time of all the stages its rows use (the report's compute time), however many were cached."""
    wall = run_cli(name, ["run", "demo", "--runs", str(runs), f"name=fm-{name}", *BASE, *overrides],
                   runs / "logs" / f"{name}.log")
    results = runs / "reports" / f"fm-{name}" / "results.json"
    compute = json.loads(results.read_text())["meta"]["wall_time_s"]
    print(f"[probe] {name}: {wall:.0f} s this call, {compute:.0f} s of stages in all", flush=True)
    return {"overrides": overrides, "wall_s": compute, **collect(runs, results)}


def main() -> None:
    args = probe_parser(__doc__, "research/results/fashion-mnist-probes", "runs-fm").parse_args()
    done = load_probes(args.out)
    for name, overrides in PROBES.items():
        if args.only and name not in args.only:
            continue
        print(f"[probe] {name}", flush=True)
        done[name] = run_probe(name, overrides, args.runs)
        save(args.out, done, TITLE)
    print(table(done, TITLE))


if __name__ == "__main__":
    main()
