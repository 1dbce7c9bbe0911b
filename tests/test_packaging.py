"""A non-editable install (what ``pip install tailsynth`` gives a user) carries every shipped config as package
data: the installed package, imported from outside the repository, finds each experiment and benchmark config and
plans the demo."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "src" / "tailsynth" / "configs"


@pytest.mark.slow
def test_a_non_editable_install_finds_every_shipped_config_and_plans_the_demo(tmp_path):
    target = tmp_path / "site"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(target),
                    str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "TAILSYNTH_PROGRESS": "0"}
    experiments = sorted(p.stem for p in (SHIPPED / "experiments").glob("*.yaml"))
    benchmarks = sorted(p.stem for p in (SHIPPED / "benchmarks").glob("*.yaml"))
    probe = ("import tailsynth, sys; from tailsynth.pipeline.experiment import find_experiment;"
             "from tailsynth.data import find_benchmark;"
             f"[find_experiment(n) for n in {experiments!r}]; [find_benchmark(n) for n in {benchmarks!r}];"
             "print(tailsynth.__file__)")
    where = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(target)), where.stdout  # the installed copy, not the source tree
    plan = subprocess.run([sys.executable, "-m", "tailsynth.cli", "run", "demo", "--plan", "--runs",
                           str(tmp_path / "runs")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert "train_diffusion" in plan.stdout and "stages," in plan.stdout and "to run" in plan.stdout
