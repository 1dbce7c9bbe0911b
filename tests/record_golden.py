"""Record the golden values of the tiny experiment on this machine (run from the repository root):
``python tests/record_golden.py``. The golden test compares a fresh run with them, bit for bit."""
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TAILSYNTH_PROGRESS", "0")

import torch  # noqa: E402

from tiny import GOLDEN_METHODS, quiet, tiny  # noqa: E402


def machine_key() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__}"


def golden_run(runs: Path, methods: list[str] | None = None) -> dict:
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    torch.set_num_threads(1)
    methods = list(methods or GOLDEN_METHODS)
    cfg = load_experiment("demo", tiny(f"methods=[{','.join(methods)}]"))
    result = run_experiment(cfg, runs, log=quiet)
    metrics = {}
    for art in result.evaluations:
        m = json.loads((art.path / "metrics.json").read_text())
        metrics[m["method"]] = {"metrics": m["metrics"], "scores": m["scores"]}
    images = {}
    for stage in ("synthesize", "decode_outliers"):  # synthetic tail images; Dream-OOD / BOOD outlier images
        for folder in sorted((runs / stage).iterdir()) if (runs / stage).is_dir() else []:
            if folder.name.endswith(".partial") or not (folder / "manifest.json").is_file():
                continue
            config = json.loads((folder / "manifest.json").read_text())["config"]
            key = config["method"] if stage == "synthesize" else f"{stage}:{config['kind']}"
            images[key] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                           for p in sorted(folder.rglob("*.png"))}
    return {"methods": methods, "metrics": metrics, "synthetic_png_sha256": images}


if __name__ == "__main__":
    out = Path(__file__).parent / "golden" / "tiny.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TAILSYNTH_CACHE"] = str(Path(tmp) / "cache")
        table[machine_key()] = golden_run(Path(tmp) / "runs")  # GOLDEN_METHODS
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"recorded {machine_key()} in {out}")
