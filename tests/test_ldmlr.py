"""LDMLR (feature-space diffusion), label shift and the feature stages: closed forms, hand computations,
determinism, resume, the frozen encoder, selection without the test split, and bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailsynth.data.features import FeatureSet
from tailsynth.diffusion import ddim_sample, make_alphas_cumprod
from tailsynth.diffusion.feature_diffusion import (FeatureDiffusionConfig, FeatureSamplingConfig, sample_features,
                                                   train_feature_diffusion)
from tailsynth.errors import TailsynthError
from tailsynth.methods.ldmlr import LdmlrObjective
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment
from tailsynth.methods.ldmlr import PseudoFeatureConfig, pseudo_counts
from tailsynth.pipeline.stages import TrainStageConfig, run_train
from tailsynth.engine.store import Artifact
from tailsynth.report.feature_quality import distances, frechet_distance
from tailsynth.training.augment import random_crop
from tailsynth.training.checkpoint import load_weights

from tiny import quiet, tiny


# --- the sampler on a Gaussian, where everything has a closed form ---------------------------------------------
def gaussian_eps(mu: float, s: float, acp: torch.Tensor):
    """The exact noise prediction E[eps | x_t] for data x0 ~ N(mu, s^2): (x_t - sqrt(a) mu) sqrt(1-a) / (a s^2 + 1-a)."""
    def eps(x, t, cond):
        a = acp[t].view(-1, 1)
        return (x - a.sqrt() * mu) * (1 - a).sqrt() / (a * s**2 + 1 - a)
    return eps


def test_ddim_on_a_gaussian_matches_the_exact_posterior_mean_and_the_data_distribution():
    mu, s = 2.0, 0.5
    acp = make_alphas_cumprod("cosine", 1000)
    seen = []

    def hook(step):  # Tweedie x0-hat with the exact eps is the exact posterior mean E[x0 | x_t]
        a = step.alpha_t
        exact = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (step.x_t - a.sqrt() * mu)
        seen.append(float((step.x0_hat - exact).abs().max()))

    x_T = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(20000, dtype=torch.long)
    out = ddim_sample(gaussian_eps(mu, s, acp), x_T, y, None, acp, num_steps=200, guidance_scale=1.0,
                      final_alpha_cumprod=1.0, hook=hook)
    assert max(seen[1:]) < 1e-3  # (the first step's a_t ~ 1e-9 loses float32 digits)
    x = out.sample.squeeze(1)
    assert abs(float(x.mean()) - mu) < 0.02 and abs(float(x.std()) - s) < 0.02


@pytest.mark.slow
def test_trained_feature_diffusion_samples_each_class_distribution_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal([3.0, 0.0], [0.5, 1.0], (1500, 2)), rng.normal([-2.0, 5.0], [1.0, 0.6], (500, 2))])
    y = np.array([0] * 1500 + [1] * 500)
    cfg = FeatureDiffusionConfig(steps=1000, hidden=64, blocks=2, checkpoint_every=400, warmup_steps=50)
    model, _ = train_feature_diffusion(z, y, 2, cfg, tmp_path / "full")
    # interrupted after 400 steps, resumed: the same weights as the uninterrupted run
    train_feature_diffusion(z, y, 2, cfg, tmp_path / "split", max_new_steps=400)
    resumed, _ = train_feature_diffusion(z, y, 2, cfg, tmp_path / "split")
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    labels = np.array([0] * 1000 + [1] * 1000)
    sampling = FeatureSamplingConfig(num_steps=50)
    f = sample_features(model, labels, sampling, seed=3)
    assert np.array_equal(f, sample_features(model, labels, sampling, seed=3))  # seeded
    for c, mu, sd in ((0, [3.0, 0.0], [0.5, 1.0]), (1, [-2.0, 5.0], [1.0, 0.6])):
        got = f[labels == c]
        assert np.allclose(got.mean(0), mu, atol=0.25), (c, got.mean(0))
        assert np.allclose(got.std(0), sd, rtol=0.25, atol=0.05), (c, got.std(0))


# --- LDMLR Eq. 13 and the pseudo-feature counts -----------------------------------------------------------------
class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 4)

    def forward_head(self, z):
        return self.head(z)


def test_gamma_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    model = _Head()
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    pseudo = torch.tensor([False, False, False, True, True, False])
    logits = model.head(z)
    ce = [-(logits[i].log_softmax(0)[y[i]]) for i in range(6)]
    real = (ce[0] + ce[1] + ce[2] + ce[5]) / 4
    gen = (ce[3] + ce[4]) / 2
    loss, parts = LdmlrObjective(0.05)(model, {"z": z, "y": y, "pseudo": pseudo})
    assert torch.allclose(loss, real + 0.05 * gen) and torch.allclose(parts["ce_pseudo"], gen)
    plain = LdmlrObjective(None)(model, {"z": z, "y": y, "pseudo": pseudo})
    assert torch.allclose(plain, F.cross_entropy(logits, y))  # gamma None: CE over the concatenation


def test_gamma_zero_control_is_the_same_refit_blind_to_the_pseudo_features():
    """gamma 0 (the ablation's re-fit control): the loss and its gradient are those of the real vectors of the
    batch alone, whatever the pseudo-features are."""
    torch.manual_seed(0)
    z, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    pseudo = torch.tensor([False, True, False, True, True, False, False, True])
    grads = []
    for scale in (1.0, 50.0):
        model = _Head()
        torch.manual_seed(1)
        model.head.reset_parameters()
        zz = torch.where(pseudo[:, None], scale * z, z)  # pseudo-features changed, real ones kept
        loss, parts = LdmlrObjective(0.0)(model, {"z": zz, "y": y, "pseudo": pseudo})
        assert torch.allclose(loss, F.cross_entropy(model.head(z[~pseudo]), y[~pseudo]))
        assert float(parts["ce_pseudo"]) > 0  # computed (and logged), weighted 0
        loss.backward()
        grads.append(model.head.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


class _Split:
    name, class_names = "toy", ["a", "b", "c", "d"]
    head_classes, tail_classes = [0, 1], [2, 3]
    groups = {"many": [0], "medium": [1], "few": [2, 3]}


def test_pseudo_feature_counts_per_class():
    labels = np.array([0] * 100 + [1] * 37 + [2] * 12 + [3] * 3)
    assert pseudo_counts(_Split, labels, PseudoFeatureConfig()) == {0: 20, 1: 7, 2: 5, 3: 5}  # max(round(.2 n), 5)
    assert pseudo_counts(_Split, labels, PseudoFeatureConfig(ratio=0.8, classes="few")) == {2: 10, 3: 5}
    assert pseudo_counts(_Split, labels, PseudoFeatureConfig(ratio=0.4, min_per_class=0, classes="tail")) == {2: 5, 3: 1}
    with pytest.raises(TailsynthError, match=r"classes \['d'\] have no training features"):
        pseudo_counts(_Split, labels[labels != 3], PseudoFeatureConfig())
    with pytest.raises(TailsynthError, match="'rare' is not all, head, tail or a group"):
        pseudo_counts(_Split, labels, PseudoFeatureConfig(classes="rare"))
    with pytest.raises(ValueError, match="ratio"):
        PseudoFeatureConfig(ratio=0)


def test_uniform_allocation_splits_the_proportional_total_equally():
    """Eq. 12's y ~ p(y) read as uniform: round(ratio x sum of the chosen n_c / number chosen) each (min 5)."""
    labels = np.array([0] * 100 + [1] * 37 + [2] * 12 + [3] * 3)
    uniform = PseudoFeatureConfig(allocation="uniform")
    assert pseudo_counts(_Split, labels, uniform) == {0: 8, 1: 8, 2: 8, 3: 8}  # 0.2 x 152 / 4 = 7.6
    assert pseudo_counts(_Split, labels, PseudoFeatureConfig(ratio=0.8, classes="few", allocation="uniform")) == {
        2: 6, 3: 6}  # 0.8 x 15 / 2 (proportional: 10 and 5)
    assert pseudo_counts(_Split, labels, PseudoFeatureConfig(ratio=0.1, classes="tail", allocation="uniform")) == {
        2: 5, 3: 5}  # 0.75 each, raised to min_per_class
    from tailsynth.config import to_dict
    assert "allocation" not in to_dict(PseudoFeatureConfig())  # the default leaves existing fingerprints alone
    assert to_dict(uniform)["allocation"] == "uniform"


# --- feature quality ------------------------------------------------------------------------------------------
def test_feature_distances_against_closed_forms():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(4000, 3))
    assert distances(real, real) == pytest.approx({"mean_dist": 0.0, "cov_dist": 0.0, "frechet": 0.0}, abs=1e-6)
    d = distances(real + np.array([3.0, 0.0, 0.0]), real)
    assert d["mean_dist"] == pytest.approx(3.0 / np.sqrt(np.trace(np.cov(real, rowvar=False))), rel=1e-9)
    # diagonal Gaussians: FD = |dmu|^2 + sum (s1 - s2)^2
    fd = frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.ones(2), np.diag([1.0, 9.0]))
    assert fd == pytest.approx(2.0 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-9)
    # against scipy's matrix square root on full-rank covariances; finite on singular ones (3 samples in 64-d)
    from scipy import linalg
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) * 1.5 + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(ref, rel=1e-8)
    few = rng.normal(size=(3, 64))
    assert np.isfinite(distances(few, rng.normal(size=(3, 64)))["frechet"])


def test_random_crop_is_torchvisions_pad_and_crop():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    offsets = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r:r + 4, c:c + 4])


# --- the pipeline: ldmlr, la, la-ldmlr on the tiny experiment ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ldmlr") / "runs"
    cfg = load_experiment("demo", tiny("methods=[ce,ldmlr,la,la-ldmlr]", generator=False))
    result = run_experiment(cfg, runs, log=quiet)
    return runs, {json.loads((a.path / "metrics.json").read_text())["method"]: a for a in result.evaluations}, result


def _classifier_dir(evaluation: Artifact):
    manifest = json.loads((evaluation.path / "manifest.json").read_text())
    return evaluation.path.parent.parent / manifest["inputs"]["classifier"]["stage"] / manifest["inputs"]["classifier"]["fingerprint"]


def _state(folder):
    from tailsynth.engine.artifacts import load_classifier
    return load_classifier(folder)[0].state_dict()


def test_ldmlr_tunes_the_classifier_layer_only_and_label_shift_folds_into_the_bias(tiny_run):
    runs, rows, result = tiny_run
    assert sorted(rows) == ["ce", "la", "la-ldmlr", "ldmlr"]
    ce, ldmlr = _state(_classifier_dir(rows["ce"])), _state(_classifier_dir(rows["ldmlr"]))
    for k in ce:
        if not k.startswith("head."):
            assert torch.equal(ce[k], ldmlr[k]), f"encoder parameter {k} changed"
    assert not torch.equal(ce["head.weight"], ldmlr["head.weight"])
    la_dir = _classifier_dir(rows["la"])
    card = json.loads((la_dir / "model.json").read_text())["label_shift"]
    la = _state(la_dir)
    expected = ce["head.bias"] - card["tau"] * torch.tensor(card["log_prior"], dtype=torch.float32)
    assert torch.allclose(la["head.bias"], expected, atol=1e-6) and torch.equal(la["head.weight"], ce["head.weight"])
    best = max(card["val_selection"].values())
    assert card["val_selection"][str(card["tau"])] == best  # tau is the val argmax
    report = (result.report_dir / "report.md").read_text()
    assert "Pseudo-features of ldmlr" in report


def test_ldmlr_model_selection_never_reads_the_test_split(tiny_run, tmp_path):
    runs, rows, _ = tiny_run
    train_dir = _classifier_dir(rows["ldmlr"])
    manifest = json.loads((train_dir / "manifest.json").read_text())
    inputs = {name: Artifact(i["stage"], i["fingerprint"], runs / i["stage"] / i["fingerprint"])
              for name, i in manifest["inputs"].items()}
    poisoned = tmp_path / "features"
    shutil.copytree(inputs["features"].path, poisoned)
    fs = FeatureSet.read(poisoned)
    fs.features[fs.splits == "test"] = np.nan  # a test feature read anywhere would turn the weights into NaN
    fs.write(poisoned)
    inputs["features"] = Artifact("encode_features", inputs["features"].fingerprint, poisoned)
    cfg = TrainStageConfig(**manifest["config"])
    (tmp_path / "work").mkdir()
    run_train(cfg, inputs, tmp_path / "work")
    from tailsynth.engine.artifacts import load_classifier
    reference = _state(train_dir)
    model, _ = load_classifier(train_dir)
    load_weights(model, tmp_path / "work" / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_a_feature_set_of_another_encoder_is_refused(tiny_run):
    runs, rows, _ = tiny_run
    features = next((runs / "encode_features").glob("*/features.npz")).parent
    with pytest.raises(TailsynthError, match="features of encoder .* but the head belongs to deadbeef"):
        FeatureSet.read(features, encoder="deadbeef")


@pytest.mark.parametrize("override, message", [
    ("method_params.ldmlr.pseudo.ratio=0", r"method_params\.ldmlr.*ratio"),
    ("method_params.ldmlr.pseudo.classes=rare", r"pseudo\.classes: 'rare' is not one of"),
    ("method_params.ldmlr.encoder=ldmlr", r"cannot encode for LDMLR itself"),
    ("method_params.ldmlr.gama=0.1", r"method_params\.ldmlr.*gama"),
    ("method_params.ldmlr.pseudo.allocation=balanced",
     r"pseudo\.allocation.*'balanced'.*'proportional' or 'uniform'"),
    ("method_params.la.taus=oops", r"method_params\.la.*taus"),
])
def test_bad_ldmlr_settings_fail_at_load(override, message):
    with pytest.raises(TailsynthError, match="(?s)" + message):
        load_experiment("demo", tiny("methods=[ldmlr,la]", override, generator=False))


def test_class_balanced_batches_draw_every_class_equally_and_reproducibly():
    from tailsynth.diffusion.feature_diffusion import balanced_indices
    labels = torch.tensor([0] * 990 + [1] * 10)
    idx = torch.cat([balanced_indices(s, 256, labels, 2, seed=1) for s in range(40)])
    share = float((labels[idx] == 1).float().mean())
    assert 0.46 < share < 0.54  # 10 of 1000 features, half of every batch
    assert torch.equal(balanced_indices(7, 256, labels, 2, 1), balanced_indices(7, 256, labels, 2, 1))
    assert not torch.equal(balanced_indices(7, 256, labels, 2, 1), balanced_indices(8, 256, labels, 2, 1))
