"""``pbc-lt-paper`` (every method at its paper's settings, for a GPU with weights) and ``pbc-lt-paper-dryrun`` (the same
stages with only the counts cut): both load and plan with a Stable Diffusion folder of SD-1.x's structure (a tiny
random one stands in), and the dry run differs from the paper profile in counts, never in a dimension."""
import pytest

from tailsynth.config import to_dict
from tailsynth.methods import METHODS
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment

from tiny import benchmark_data_mark, quiet

pytestmark = [m for m in [benchmark_data_mark("pbc-lt-paper")] if m is not None]

# the keys the dry run may change: counts (images, steps, epochs, draws, levels), the weights it runs on, the caps
COUNTS = {"name", "profile", "threads", "seeds", "benchmark_overrides", "classifier.epochs", "classifier.pretrained",
          "crt_epochs", "oracle.epochs", "oracle.pretrained", "diffusion.sd_path",
          "diffusion.lora.train.steps", "diffusion.lora.train.batch_size", "diffusion.lora.train.checkpoint_every",
          "synthesis.n_per_class", "synthesis.num_steps"}
COUNT_WORDS = ("steps", "num_steps", "max_opt_steps", "score_splits", "epochs", "n_per_class", "num_draws", "num_levels", "batch_size", "checkpoint_every", "k",
               "n_boundary", "n_pick", "n_candidates", "min_per_class", "drw_epoch", "threshold", "last_k", "enabled")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from tailsynth.diffusion.random_sd import write_random_sd
    return write_random_sd(tmp_path_factory.mktemp("paper") / "sd", "tiny", seed=0, dtype="float32")


def load(name: str, sd_folder) -> object:
    return load_experiment(name, [f"diffusion.sd_path={sd_folder}", "classifier.pretrained=null"])


def flat(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_paper_profile_names_every_method_and_plans_its_stages(sd_folder, tmp_path):
    cfg = load("pbc-lt-paper", sd_folder)
    # vmf-encoder: Dream-OOD / BOOD's encoder stage, not a row of its own; logex-guarded: no paper's method (LoGex with
    # a judge of this project's, not chosen on validation yet: docs/guidance.md)
    rows = set(METHODS.names()) - {"vmf-encoder", "logex-guarded"}
    assert set(cfg.methods) == rows
    assert (cfg.data.image_size, cfg.classifier.model, cfg.diffusion.backend, cfg.diffusion.sd_resolution) == (
        224, "resnet50", "sd", 512)
    plan = run_experiment(cfg, tmp_path / "runs", plan_only=True, log=quiet).plan
    costs = {(r["stage"], r["label"]): r["cost"] for r in plan}
    assert costs[("adapt_lora", "LoRA on tail")] == "15000 steps x batch 8"
    assert costs[("synthesize", "synthesis logex")] == "100 images/tail class x 20 DDIM steps (logex)"
    assert costs[("synthesize", "synthesis fg-entropy")] == "100 images/tail class x 30 DDIM steps (fg-entropy)"
    assert costs[("synthesize", "synthesis minority")] == "100 images/tail class x 250 DDIM steps (minority)"
    assert {r["label"] for r in plan if r["stage"] == "decode_outliers"} == {"dream-ood outlier images",
                                                                              "bood outlier images"}
    assert costs[("train_classifier", "ce seed 2")] == "60 epochs x batch 128"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))


def test_dry_run_cuts_counts_and_keeps_every_dimension(sd_folder):
    paper, dry = (flat(to_dict(load(name, sd_folder))) for name in ("pbc-lt-paper", "pbc-lt-paper-dryrun"))
    assert set(paper) - {"benchmark_overrides"} <= set(dry)  # {} in the paper profile, the caps here
    changed = {k for k in dry if dry[k] != paper.get(k)}
    dimensions = {k for k in changed if k not in COUNTS and k.rsplit(".", 1)[-1] not in COUNT_WORDS
                  and not k.startswith("benchmark_overrides")}
    assert dimensions == set(), f"the dry run changes more than counts: {sorted(dimensions)}"
    assert dry["synthesis.params.logex.max_opt_steps"] == 1 and dry["synthesis.num_steps"] == 2
    assert dry["benchmark_overrides.max_per_class.train"] == 2 and dry["seeds"] == [0]
