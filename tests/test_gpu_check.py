"""benchmarks/gpu_check.py at toy sizes on the CPU: every section runs and the JSON has its figures, so the
script a GPU session runs in its short window is known to work before the window opens."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["code_paths"].get("all_ok"), report["code_paths"]
    for section in ("dig_in", "memory", "throughput", "sd_512", "paper_dryrun"):
        assert "error" not in report[section], report[section].get("error")
    assert report["paper_dryrun"]["planned_stages"] >= 25  # one row per family of pbc-lt-paper-dryrun, planned
    assert report["dig_in"]["speedup_accepted_per_s"] >= 0 and report["throughput"]["classifier_images_per_s"] > 0
    assert report["sd_512"]["one_step_s"] > 0 and "total_s" in report
