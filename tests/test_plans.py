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
OVERRIDES = {"pbc-lt-paper": ["classifier.pretrained=null"]}  # its ImageNet weights are not on disk here


def plan_rows(name: str, runs: Path) -> list[list[str]]:
    """(stage, label with fingerprints masked, cost) of each planned stage."""
    result = run_experiment(load_experiment(name, OVERRIDES.get(name, [])), runs, plan_only=True, log=quiet)
    return [[r["stage"], re.sub(r"[0-9a-f]{8}", "<fp>", r["label"]), r["cost"]] for r in result.plan]


@pytest.mark.parametrize("name", [pytest.param(n, marks=[m for m in [benchmark_data_mark(n)] if m is not None])
                                  for n in SHIPPED])
def test_every_shipped_experiment_plans_the_recorded_stages(name, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no recorded plan for {name}: run `python tests/test_plans.py`"
    assert plan_rows(name, tmp_path / "runs") == golden[name]


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps({n: plan_rows(n, Path(tmp) / n) for n in SHIPPED}, indent=0) + "\n")
    print(f"wrote {GOLDEN}")
