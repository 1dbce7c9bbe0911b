"""The one tiny experiment every pipeline test builds on: the ``demo`` config shrunk to 8 px digits
(scikit-learn's 8x8 set), a 1-epoch classifier, a 6-step base denoiser, a 4-step LoRA and 3 synthetic
images per tail class. ``tiny(...)`` returns its override list plus any extra overrides (later wins)."""
from __future__ import annotations

BASE = [
    "benchmark=digits-lt", "seeds=[0]", "jobs=1", "data.image_size=8", "data.channels=1",
    "far_ood=[]",  # the demo's far-OOD set left out: tests that score far sets name theirs (tests/test_far_ood.py)
    "classifier.width=0.125", "classifier.epochs=1", "classifier.batch_size=64", "crt_epochs=1",
    "method_params={ldam-rw-drw: {drw_epoch: 1}, ldmlr: {diffusion: {steps: 30, hidden: 32, blocks: 1, "
    "checkpoint_every: 15}, head: {epochs: 2}, pseudo: {sampling: {num_steps: 5}}}, "
    "dream-ood: {outliers: {n_per_class: 4, k: 5, n_boundary: 10, n_pick: 2, n_candidates: 20}, "
    "decode: {num_steps: 3, shard_size: 4}}, bood: {outliers: {n_per_class: 4}, decode: {num_steps: 3, shard_size: 4}}}",
]

GENERATOR = [
    "diffusion.pixel={block_out_channels: [16, 32], attention_levels: [false, true], norm_num_groups: 8, "
    "cross_attention_dim: 16, attention_head_dim: 8, tokens_per_class: 2}",
    "diffusion.base={steps: 6, batch_size: 16, checkpoint_every: 3, progress: false}",
    "diffusion.lora={train: {steps: 4, batch_size: 8, checkpoint_every: 2, progress: false}}",
    "synthesis={n_per_class: 3, shard_size: 2, num_steps: 3, aux_method: ce, "
    "params: {logex: {max_opt_steps: 2, batch_size: 4, checkpoint: false}, "
    "fg-entropy: {every: 2, num_steps: 3, guidance_scale: 3.0}, "
    "minority: {classifier: {steps: 4, num_levels: 3, hidden: 16, batch_size: 16, checkpoint_every: 2}, "
    "score: {num_draws: 2, chunk_size: 100}}}}",
    "oracle={epochs: 1}",
]

# the methods of the golden values; an entry recorded before the list grew holds the first five only
GOLDEN_METHODS = ["ce", "ldam-rw-drw", "logex-lora", "logex", "fg-entropy", "ldmlr", "dream-ood", "bood", "minority"]


def tiny(*extra: str, generator: bool = True) -> list[str]:
    return BASE + (GENERATOR if generator else []) + list(extra)


def quiet(_msg: str) -> None:
    pass


def benchmark_data_mark(experiment: str):
    """A skip mark for a test that reads experiment ``experiment``'s benchmark data, when that data is not on disk
    (a fresh clone has no ``../shared/data``; ``TAILSYNTH_DATA_ROOT`` points elsewhere); it names the data. None
    when the data is there."""
    import pytest

    from tailsynth.data import load_benchmark_config, resolve_data_path
    from tailsynth.pipeline.experiment import find_experiment, read_experiment_yaml
    source = load_benchmark_config(read_experiment_yaml(find_experiment(experiment))["benchmark"]).source
    path = getattr(source, "path", None)
    if path is None or resolve_data_path(path).exists():
        return None
    return pytest.mark.skip(reason=f"{experiment} needs its benchmark data at {resolve_data_path(path)} "
                                   f"(not present; see the README's Data section or set TAILSYNTH_DATA_ROOT)")
