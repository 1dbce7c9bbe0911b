"""The numbers must not move by accident: the tiny experiment's metrics, scores and synthetic images are
bit-identical to the golden values recorded on this kind of machine (``python tests/record_golden.py``).

CPU results are bit-identical only on the same kind of CPU (AVX2 and AVX-512 kernels round differently),
so the golden file is keyed by CPU model, kernel ISA and torch version; on a machine with no entry the
test is skipped and says how to record one."""
import json
from pathlib import Path

import pytest

from record_golden import golden_run, machine_key
from tiny import GOLDEN_METHODS

GOLDEN = Path(__file__).parent / "golden" / "tiny.json"


@pytest.mark.slow
def test_tiny_experiment_is_bit_identical_to_the_golden_values(tmp_path, monkeypatch):
    table = json.loads(GOLDEN.read_text())
    if machine_key() not in table:
        pytest.skip(f"no golden values for {machine_key()!r}; record them with `python tests/record_golden.py`")
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))
    want = table[machine_key()]
    got = golden_run(tmp_path / "runs", want.get("methods", GOLDEN_METHODS[:5]))
    assert got["synthetic_png_sha256"] == want["synthetic_png_sha256"]
    assert recorded_values_differ(got["metrics"], want["metrics"]) == []


def recorded_values_differ(got, want, path: str = "") -> list[str]:
    """Where ``got`` differs from the recorded ``want``: every recorded value must be there, bit for bit; a metric
    or score added to the code after the entry was recorded is allowed (its entry is re-recorded on its machine)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not a mapping"]
        return [d for key, value in want.items()
                for d in (recorded_values_differ(got[key], value, f"{path}.{key}") if key in got
                          else [f"{path}.{key}: missing"])]
    return [] if got == want else [f"{path}: {got!r} != recorded {want!r}"]


def test_the_golden_comparison_fails_on_a_changed_or_missing_value():
    want = {"ce": {"metrics": {"fpr95": 0.25, "auroc": 0.9}}}
    assert recorded_values_differ({"ce": {"metrics": {"fpr95": 0.25, "auroc": 0.9, "new": 1}}}, want) == []
    assert recorded_values_differ({"ce": {"metrics": {"fpr95": 0.2500001, "auroc": 0.9}}}, want) != []
    assert recorded_values_differ({"ce": {"metrics": {"fpr95": 0.25}}}, want) == [".ce.metrics.auroc: missing"]
