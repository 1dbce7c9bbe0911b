"""`tailsynth run` killed (SIGKILL) during classifier training, diffusion/LoRA training and synthesis:
the rerun finishes with exactly the metrics of an uninterrupted run. Ctrl-C stops with a resume hint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny import tiny

pytestmark = pytest.mark.e2e

TINY = tiny(
    "classifier.epochs=3", "classifier.batch_size=32", "methods=[ce,logex-lora]",
    "diffusion.base={steps: 60, batch_size: 16, checkpoint_every: 5, progress: false}",
    "diffusion.lora={train: {steps: 30, batch_size: 8, checkpoint_every: 5, progress: false}}",
    "synthesis={n_per_class: 8, shard_size: 2, num_steps: 4, aux_method: ce}", "oracle=null",
)


def command(runs: Path) -> list[str]:
    return [sys.executable, "-m", "tailsynth.cli", "run", "demo", *TINY, "--runs", str(runs)]


def env(tmp_path: Path) -> dict:
    return {**os.environ, "TAILSYNTH_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TAILSYNTH_CACHE": str(tmp_path / "cache")}


def final_metrics(runs: Path) -> dict:
    out = {}
    for path in sorted((runs / "evaluate").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        out[m["method"]] = m["metrics"]
    return out


def run_and_kill(runs: Path, tmp_path: Path, ready, what: str) -> None:
    proc = subprocess.Popen(command(runs), env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ready(runs):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    raise AssertionError(f"never reached the kill point {what} (exit {proc.poll()}): {proc.stderr.read()[-2000:]}")


def partial_has(stage: str, pattern: str):
    return lambda runs: any(p for d in runs.glob(f"{stage}/*.partial") for p in d.glob(pattern))


def test_sigkill_at_three_points_then_rerun_equals_uninterrupted(tmp_path):
    reference_runs = tmp_path / "reference"
    done = subprocess.run(command(reference_runs), env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = final_metrics(reference_runs)
    assert set(reference) == {"ce", "logex-lora"}

    runs = tmp_path / "killed"
    kill_points = [
        ("classifier training", partial_has("train_classifier", "train_state.json")),
        ("diffusion training", partial_has("train_diffusion", "train/*.json")),
        ("LoRA training", partial_has("adapt_lora", "train/*.json")),
        ("synthesis", partial_has("synthesize", "shards/*.json")),
    ]
    for what, ready in kill_points:
        run_and_kill(runs, tmp_path, ready, what)
    rerun = subprocess.run(command(runs), env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[resume]" in rerun.stdout
    assert final_metrics(runs) == reference


def test_ctrl_c_says_how_to_resume(tmp_path):
    runs = tmp_path / "runs"
    # a test runner started as a background job inherits SIGINT ignored, and so would the child (Python only
    # installs its KeyboardInterrupt handler when SIGINT is not ignored): give the child the default
    proc = subprocess.Popen(command(runs), env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    # the classifier stage's work folder exists for the whole stage (data loading included), a much wider
    # window than a checkpoint file, so a busy machine cannot make the poll miss it
    while time.time() < deadline and proc.poll() is None and not list(runs.glob("train_classifier/*.partial")):
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "rerun the same command to resume" in err
