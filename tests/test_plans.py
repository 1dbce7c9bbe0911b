"""Every shipped experiment plans the same stages, in the same order, with the same labels and work, as recorded in
``tests/golden/plans.json`` (fingerprints left out: they move with any config change). A refactoring that moves
code keeps this file; a change of what an experiment runs updates it on purpose
(``python tests/test_plans.py`` rewrites it)."""
import json
import re
import sys
from pathlib import Path

import pytest

from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment

from tiny import benchmark_data_mark, quiet

GOLDEN = Path(__file__).parent / "golden" / "plans.json"
SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "src" / "tailsynth" / "configs"
                                  / "experiments").glob("*.yaml"))
# the paper profiles' weights are not on disk here: no ImageNet ResNet-50, and a tiny random Stable Diffusion folder of
# SD-1.x's structure stands in for theirs (a plan reads the folder's configs, never its weights)
SD_CONFIGS = ("pbc-lt-paper", "pbc-lt-paper-dryrun")


def overrides(name: str, sd_folder: Path | None) -> list[str]:
    return ["classifier.pretrained=null", f"diffusion.sd_path={sd_folder}"] if name in SD_CONFIGS else []


def tiny_sd(folder: Path) -> Path:
    from tailsynth.diffusion.random_sd import write_random_sd
    return write_random_sd(folder / "sd", "tiny", seed=0, dtype="float32")


def plan_rows(name: str, runs: Path, sd_folder: Path | None = None) -> list[list[str]]:
    """(stage, label with fingerprints masked, cost) of each planned stage."""
    result = run_experiment(load_experiment(name, overrides(name, sd_folder)), runs, plan_only=True, log=quiet)
    return [[r["stage"], re.sub(r"[0-9a-f]{8}", "<fp>", r["label"]), r["cost"]] for r in result.plan]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("plans"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[m for m in [benchmark_data_mark(n)] if m is not None])
                                  for n in SHIPPED])
def test_every_shipped_experiment_plans_the_recorded_stages(name, tmp_path, sd_folder):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no recorded plan for {name}: run `python tests/test_plans.py`"
    assert plan_rows(name, tmp_path / "runs", sd_folder) == golden[name]


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        sd = tiny_sd(Path(tmp))
        GOLDEN.write_text(json.dumps({n: plan_rows(n, Path(tmp) / n, sd) for n in SHIPPED}, indent=0) + "\n")
    print(f"wrote {GOLDEN}")
