"""Minority guidance: score (Corollary 1), levels, classifier gradient, guidance hook, metrics, bad input."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from tailsynth.diffusion import PixelBackend
from tailsynth.diffusion.samplers import SamplerStep, ddim_sample, ddpm_sample
from tailsynth.errors import TailsynthError
from tailsynth.minority import (MinorityClassifier, MinorityClassifierConfig, MinorityGuidanceConfig,
                                MinorityScoreConfig, PerceptualDistance, minority_hook, minority_scores,
                                quantile_labels, score_timestep, train_minority_classifier)
from tailsynth.ood.rarity import precision_recall, rarity_score

sys.path.insert(0, str(Path(__file__).parent))


def _backend(**extra) -> PixelBackend:
    cfg = {"num_classes": 3, "image_size": 8, "in_channels": 1, "block_out_channels": [16, 32],
           "attention_levels": [False, True], "norm_num_groups": 8, "cross_attention_dim": 16,
           "attention_head_dim": 8, "tokens_per_class": 2, **extra}
    return PixelBackend(cfg, seed=0).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_corollary_1_squared_l2_score_is_scaled_noise_prediction_error():
    backend = _backend()
    cfg = MinorityScoreConfig(num_draws=3, clip_x0=False, batch_size=4)
    x, ids = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    out = minority_scores(backend, x, ids, cfg)
    t = score_timestep("linear", 1000)
    a = float(backend.alphas_cumprod[t])
    np.testing.assert_allclose(out["l2"], (1 - a) / a * out["eps_sq"], rtol=1e-4)
    assert out["l2"].shape == (6,) and (out["l1"] > 0).all()
    # deterministic per chunk: the same chunk index gives the same draws, another index other draws
    again = minority_scores(backend, x, ids, cfg)
    np.testing.assert_array_equal(out["l2"], again["l2"])
    assert not np.allclose(minority_scores(backend, x, ids, cfg, chunk_index=1)["l2"], out["l2"])


def test_score_timestep_rule_and_bad_t():
    assert score_timestep("linear", 1000) == 600 and score_timestep("cosine", 1000) == 900
    assert score_timestep("linear", 500) == 300 and score_timestep("cosine", 500) == 450
    assert score_timestep("scaled_linear", 1000, t=250) == 250
    for bad in (0, 1000, -3):
        with pytest.raises(TailsynthError, match="outside 1..999"):
            score_timestep("linear", 1000, t=bad)


def _closed_form_alpha_bar(kind: str, T: int = 1000) -> np.ndarray:
    """abar_t = prod_{i <= t} (1 - beta_i) in float64 (DDPM linear, SD scaled_linear), or the telescoped cosine
    product f((t + 1) / T) / f(0), f(u) = cos^2((u + s) / (1 + s) pi / 2), s = 0.008 (Nichol & Dhariwal eq. 17)."""
    if kind == "cosine":
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        return f((np.arange(T) + 1) / T) / f(0.0)
    betas = np.linspace(1e-4, 0.02, T) if kind == "linear" else np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
    return np.cumprod(1 - betas)


def test_score_timestep_means_one_noise_level_on_every_schedule():
    """The paper's 0.6 T (linear) and 0.9 T (cosine) are both abar ~ 0.025; on SD's scaled_linear schedule 0.6 T
    would be abar 0.16, so there the rule takes the step whose abar is nearest the linear schedule's at 0.6 T."""
    from tailsynth.diffusion.schedule import make_alphas_cumprod
    from tailsynth.minority import reference_alpha_bar
    lin, cos, sl = (_closed_form_alpha_bar(k) for k in ("linear", "cosine", "scaled_linear"))
    ref = lin[600]
    assert ref == pytest.approx(0.02557, abs=1e-5) and reference_alpha_bar() == pytest.approx(ref, rel=1e-4)
    assert cos[900] == pytest.approx(0.0236, abs=1e-4)  # the cosine rule: the same level within 10 %
    assert sl[600] == pytest.approx(0.1608, abs=1e-3)  # what 0.6 T would give on scaled_linear
    want = 1 + int(np.argmin(np.abs(sl[1:] - ref)))
    assert want == 840 and score_timestep("scaled_linear", 1000) == want
    assert sl[want] == pytest.approx(ref, rel=0.01)
    # the backend's own abar decides (here: scaled_linear with other betas, 500 steps)
    acp = make_alphas_cumprod("scaled_linear", 500, 0.001, 0.02)
    betas = np.linspace(0.001 ** 0.5, 0.02 ** 0.5, 500) ** 2
    other = np.cumprod(1 - betas)
    assert score_timestep("scaled_linear", 500, alphas_cumprod=acp) == 1 + int(np.argmin(np.abs(other[1:] - ref)))
    # linear and cosine stay exact fractions of T (the pixel rows do not move); a given t is kept on any schedule
    assert score_timestep("linear", 1000, alphas_cumprod=make_alphas_cumprod("linear")) == 600
    assert score_timestep("scaled_linear", 1000, t=300) == 300


def test_score_stage_gets_the_resolved_t_off_linear_and_cosine():
    from tailsynth.diffusion import DiffusionConfig
    from tailsynth.methods.minority.config import diffusion_schedule, score_config
    score = MinorityScoreConfig()
    for pixel in ({}, {"schedule": "cosine"}):  # rule unchanged there: t stays unset, so the fingerprint too
        assert score_config(score, DiffusionConfig(pixel=pixel)) == score
    assert diffusion_schedule(DiffusionConfig(pixel={"num_train_timesteps": 400}))[1].shape == (400,)
    sd = DiffusionConfig(backend="sd", sd_path=None)  # no folder here: SD-1.x's scaled_linear over 1000 steps
    assert diffusion_schedule(sd)[0] == "scaled_linear"
    assert score_config(score, sd).t == 840 and score_config(score.model_copy(update={"t": 500}), sd).t == 500


def test_quantile_labels_fill_every_bin_and_are_monotone():
    rng = np.random.default_rng(0)
    scores = rng.gamma(2.0, size=103)
    labels = quantile_labels(scores, 10)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    order = np.argsort(scores)
    assert (np.diff(labels[order]) >= 0).all()  # higher score -> higher (rarer) level
    assert labels[np.argmax(scores)] == 9 and labels[np.argmin(scores)] == 0
    groups = np.repeat([0, 1], [53, 50])
    per_class = quantile_labels(scores, 5, groups)
    for g in (0, 1):
        c = np.bincount(per_class[groups == g], minlength=5)
        assert c.max() - c.min() <= 1
    with pytest.raises(TailsynthError, match="fewer than the L = 60"):
        quantile_labels(scores, 60, groups)


def _classifier(backend, levels=4, conditional=True):
    return MinorityClassifier(backend, MinorityClassifierConfig(num_levels=levels, conditional=conditional, hidden=32),
                              (1, 8, 8)).eval()


def test_guidance_gradient_matches_finite_differences():
    backend = _backend()
    clf = _classifier(backend).double()
    backend.double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = backend.encode_condition(class_ids=torch.tensor([0, 2])).double()
    grad = clf.log_prob_grad(x, 400, cond, 3)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-4

    def logp(z):
        with torch.no_grad():
            return clf(z, torch.full((2,), 400), cond).log_softmax(1)[:, 3].sum()
    fd = (logp(x + h * v) - logp(x - h * v)) / (2 * h)
    torch.testing.assert_close((grad * v).sum(), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("conditional", [True, False])
def test_eq_18_mixture_gradient_matches_finite_differences(conditional):
    """grad log sum_i tau_i p(i | x_t[, c]) (App. D.5, Eq. 18) per image, against central differences; tau constant
    -> 0, tau one-hot on level k -> grad log p(k | x_t); and the mixture hook applies exactly that gradient."""
    backend = _backend()
    clf = _classifier(backend, conditional=conditional).double()
    backend.double()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = clf.condition(torch.tensor([0, 1, 2]), 3).double()
    taus = torch.tensor([[0.5, 1.0, 2.0, 4.0], [0.1, 0.2, 0.3, 0.4], [3.0, 1.0, 2.0, 5.0]], dtype=torch.float64)
    t = 400
    grad = clf.log_mixture_grad(x, t, cond, taus)

    def log_mix(z, tau):
        with torch.no_grad():
            return (clf(z, torch.full((len(z),), t), cond).softmax(1) * tau).sum(1).log()
    h = 1e-4
    for seed in (2, 3):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        fd = (log_mix(x + h * v, taus) - log_mix(x - h * v, taus)) / (2 * h)
        torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-9)
    assert float(grad.abs().max()) > 1e-6
    flat = clf.log_mixture_grad(x, t, cond, torch.full((4,), 3.0, dtype=torch.float64))
    assert float(flat.abs().max()) < 1e-10 * max(1.0, float(grad.abs().max()))
    one_hot = clf.log_mixture_grad(x, t, cond, torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(one_hot, clf.log_prob_grad(x, t, cond, 2), rtol=1e-7, atol=1e-12)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a_t = torch.tensor(0.3, dtype=torch.float64)
    hook = minority_hook(clf, cond, MinorityGuidanceConfig(mode="mixture", scale=2.0), taus)
    change = hook(SamplerStep(0, t, x, eps, x, a_t, a_t, lambda z: eps))
    torch.testing.assert_close(change.eps, eps - 2.0 * (1 - a_t) ** 0.5 * grad)


def _brightness_classifier(backend, mode: str, workdir: Path) -> MinorityClassifier:
    """A minority classifier trained (briefly, seeded) on levels = brightness quartiles of random images, cut
    within each class (mode conditional) or over all images (unconditional)."""
    rng = np.random.default_rng(0)
    n = 96
    images = np.clip(rng.random((n, 1, 1, 1)) * 255 + rng.normal(0, 20, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
    conds = np.tile([0, 1, 2], n // 3)
    conditional = mode == "conditional"
    levels = quantile_labels(images.reshape(n, -1).mean(1), 4, conds if conditional else None)
    cfg = MinorityClassifierConfig(num_levels=4, conditional=conditional, hidden=32, steps=60, batch_size=32, lr=3e-3,
                                   holdout=0.0, hflip=False, checkpoint_every=1000)
    model, _ = train_minority_classifier(backend, images, conds, levels, cfg, workdir / "clf", torch.device("cpu"))
    return model.eval()


@pytest.mark.parametrize("mode", ["conditional", "unconditional"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guidance_raises_the_classifiers_p_of_the_target_level(mode, sampler, tmp_path):
    """End to end on a tiny seeded model: guided and plain samples from the same x_T (and the same step noise);
    the classifier, evaluated on the finished samples with the condition the pair prescribes, gives the target
    level a higher probability for the guided ones."""
    from tailsynth.methods.minority.config import class_hook
    from tailsynth.minority.guidance import guided_sample
    backend = _backend()
    clf = _brightness_classifier(backend, mode, tmp_path)
    n, target = 12, 3
    classes = torch.tensor([0, 1, 2] * 4)
    cond = backend.encode_condition(class_ids=classes).detach()
    uncond = backend.null_condition(n).detach()
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    levels = {"taus": {}}

    def sample(scale: float) -> torch.Tensor:
        hook = class_hook(clf, levels, None, backend, cond, classes, MinorityGuidanceConfig(target=target, scale=scale))
        return guided_sample(backend, x_T, cond, uncond, hook, sampler, 8, 2.0, torch.Generator().manual_seed(0))

    def p_target(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z0 = backend.encode(images)
            return clf(z0, torch.ones(n, dtype=torch.long), clf.condition(classes, n)).softmax(1)[:, target]
    plain, guided = p_target(sample(0.0)), p_target(sample(30.0))
    assert float(guided.mean()) > float(plain.mean()) + 0.05, (plain, guided)
    assert float((guided > plain).float().mean()) >= 0.75, (plain, guided)


class _StubClassifier:
    """log p(l | x) = -||x - 1||^2 / 2 -> grad = 1 - x."""

    cfg = MinorityClassifierConfig(num_levels=3)

    def log_prob_grad(self, x_t, t, cond, target):
        return 1 - x_t


def test_hook_applies_eq_8_in_ddim_and_ancestral_form():
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    a_t, a_prev = torch.tensor(0.3), torch.tensor(0.5)
    hook = minority_hook(_StubClassifier(), torch.zeros(2, 1, 1), MinorityGuidanceConfig(scale=2.0))
    x0 = torch.randn(2, 1, 4, 4).clamp(-1, 1)
    step = SamplerStep(0, 500, x, eps, x0, a_t, a_prev, lambda z: eps)
    torch.testing.assert_close(hook(step).eps, eps - 2.0 * (1 - a_t) ** 0.5 * (1 - x))
    torch.testing.assert_close(hook(step).x0, x0 + 2.0 * (1 - a_t) / a_t ** 0.5 * (1 - x))
    mean, var = torch.randn(2, 1, 4, 4), torch.tensor(0.07)
    step = SamplerStep(0, 500, x, eps, x, a_t, a_prev, lambda z: eps, mean, var)
    torch.testing.assert_close(hook(step).mean, mean + 2.0 * var * (1 - x))
    with pytest.raises(TailsynthError, match="outside 0..2"):
        minority_hook(_StubClassifier(), None, MinorityGuidanceConfig(target=3))


def test_ddim_guidance_steps_along_the_gradient_also_where_x0_is_clipped():
    """One DDIM step (abar 0.3 -> 0.9) of a pixel backend, x0-hat clipped to [-1, 1] on half the pixels: the guided
    x_{t'} minus the plain one is w sqrt(1 - a) (sqrt(a' (1 - a) / a) - sqrt(1 - a')) grad on every pixel, a positive
    multiple of the gradient (re-clipping the guided x0-hat would step against it on the clipped pixels)."""
    acp = torch.tensor([0.9, 0.3])
    a, a_prev, w = 0.3, 0.9, 2.0
    x = torch.tensor([[[[0.1, 0.2], [2.0, 2.5]]]])  # x0-hat = (x - sqrt(0.7) eps) / sqrt(0.3): the last row > 1
    grad = torch.tensor([[[[1.0, -1.0], [1.0, 0.5]]]])

    def eps_fn(z, t, cond):
        return torch.full_like(z, 0.1)

    def hook(step):
        return minority_hook(_GradStub(grad), None, MinorityGuidanceConfig(scale=w))(step)
    plain = ddim_sample(eps_fn, x, None, None, acp, num_steps=1, guidance_scale=1.0, clip_x0=True).sample
    guided = ddim_sample(eps_fn, x, None, None, acp, num_steps=1, guidance_scale=1.0, clip_x0=True, hook=hook).sample
    x0_raw = (x - 0.7 ** 0.5 * 0.1) / 0.3 ** 0.5
    assert (x0_raw[..., 1, :] > 1).all() and (x0_raw[..., 0, :].abs() < 1).all()
    coef = w * (1 - a) ** 0.5 * ((a_prev * (1 - a) / a) ** 0.5 - (1 - a_prev) ** 0.5)
    assert coef > 0
    torch.testing.assert_close(guided - plain, coef * grad)


class _GradStub:
    """A classifier whose log-probability gradient is a fixed tensor."""

    cfg = MinorityClassifierConfig(num_levels=3)

    def __init__(self, grad):
        self.grad = grad

    def log_prob_grad(self, x_t, t, cond, target):
        return self.grad.expand_as(x_t)


def test_zero_scale_reproduces_plain_sampling_bit_for_bit():
    backend = _backend()
    clf = _classifier(backend)
    cond = backend.encode_condition(class_ids=torch.tensor([1, 2])).detach()
    uncond = backend.null_condition(2).detach()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    acp = backend.alphas_cumprod
    with torch.no_grad():
        plain = ddim_sample(backend.eps, x_T, cond, uncond, acp, num_steps=4, clip_x0=True).sample
        hook0 = minority_hook(clf, cond, MinorityGuidanceConfig(scale=0.0))
        same = ddim_sample(backend.eps, x_T, cond, uncond, acp, num_steps=4, clip_x0=True, hook=hook0).sample
        guided = ddim_sample(backend.eps, x_T, cond, uncond, acp, num_steps=4, clip_x0=True,
                             hook=minority_hook(clf, cond, MinorityGuidanceConfig(scale=50.0))).sample
        a = ddpm_sample(backend.eps, x_T, cond, uncond, acp, torch.Generator().manual_seed(0), num_steps=4).sample
        b = ddpm_sample(backend.eps, x_T, cond, uncond, acp, torch.Generator().manual_seed(0), num_steps=4,
                        hook=hook0).sample
    assert torch.equal(plain, same) and torch.equal(a, b)
    assert float((guided - plain).abs().max()) > 1e-4


@pytest.mark.parametrize("encoder", ["finetune", "frozen"])
def test_minority_classifier_trains_resumes_and_rejects_another_model(tmp_path, encoder):
    backend = _backend()
    denoiser_before = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    images = (np.random.default_rng(0).random((24, 8, 8, 1)) * 255).astype(np.uint8)
    conds = np.repeat([0, 1, 2], 8)
    levels = quantile_labels(images.reshape(24, -1).mean(1), 2, conds)
    cfg = MinorityClassifierConfig(num_levels=2, hidden=16, steps=4, batch_size=8, checkpoint_every=2, encoder=encoder)
    model, summary = train_minority_classifier(backend, images, conds, levels, cfg, tmp_path / "a", torch.device("cpu"))
    assert summary["steps"] == 4 and summary["n_train"] + summary["n_holdout"] == 24
    # the denoiser is never trained: a fine-tuned encoder is the classifier's own copy
    for k, v in backend.denoiser.state_dict().items():
        assert torch.equal(v, denoiser_before[k]), k
    trained = model.trained_parameters()
    assert any(k.startswith("encoder.") for k in trained) == (encoder == "finetune")
    if encoder == "finetune":  # the copy did move away from the denoiser's weights
        moved = [k for k, p in model.encoder.named_parameters() if not torch.equal(p, backend.denoiser.get_parameter(k))]
        assert moved and len(model.encoder.up_blocks) == 0
    # interrupted after the step-2 checkpoint: the resumed run ends with the same weights
    state = tmp_path / "b"
    train_minority_classifier(backend, images, conds, levels, cfg.model_copy(update={"steps": 2}), state, torch.device("cpu"))
    import json
    meta = json.loads((state / "train_state.json").read_text())
    meta.update(finished=False, fingerprint=json.loads((tmp_path / "a" / "train_state.json").read_text())["fingerprint"])
    (state / "train_state.json").write_text(json.dumps(meta))
    resumed, _ = train_minority_classifier(backend, images, conds, levels, cfg, state, torch.device("cpu"))
    for (k, p), q in zip(trained.items(), resumed.trained_parameters().values()):
        assert torch.equal(p, q), k
    model.save(tmp_path / "saved", {"latent": [1, 8, 8]})
    loaded, _ = MinorityClassifier.load(tmp_path / "saved", backend)
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([10, 500, 900])
    cond = backend.encode_condition(class_ids=torch.tensor([0, 1, 2]))
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), model.eval()(x, t, cond))
    other = PixelBackend({"num_classes": 3, "image_size": 8, "in_channels": 1, "block_out_channels": [16, 16],
                          "attention_levels": [False, True], "norm_num_groups": 8, "cross_attention_dim": 16,
                          "attention_head_dim": 8, "tokens_per_class": 2})
    with pytest.raises(TailsynthError, match="does not fit this diffusion model"):
        MinorityClassifier.load(tmp_path / "saved", other)
    with pytest.raises(TailsynthError, match="levels must lie in 0..1"):
        train_minority_classifier(backend, images, conds, levels + 1, cfg, tmp_path / "c", torch.device("cpu"))


def test_finetuned_encoder_learns_a_visible_level_that_the_frozen_one_cannot(tmp_path):
    """The level is where a bright 2x2 blob sits (left or right half). Global pooling of a frozen random encoder
    loses the position; the trained encoder copy learns it (held-out accuracy at t = 0.1 T)."""
    rng = np.random.default_rng(0)
    n = 96
    images = np.zeros((n, 8, 8, 1), np.uint8)
    side = rng.integers(0, 2, n)
    for i in range(n):
        row, col = rng.integers(1, 6), 1 + 4 * side[i] + rng.integers(0, 2)
        images[i, row:row + 2, col:col + 2, 0] = 255
    conds = np.tile([0, 1, 2], n // 3)
    acc = {}
    for encoder in ("finetune", "frozen"):
        cfg = MinorityClassifierConfig(num_levels=2, hidden=32, steps=60, batch_size=32, lr=3e-3, holdout=0.25,
                                       hflip=False, encoder=encoder, checkpoint_every=1000)
        _, summary = train_minority_classifier(_backend(), images, conds, side, cfg, tmp_path / encoder,
                                               torch.device("cpu"))
        acc[encoder] = summary["holdout_acc_t0.1T"]
    assert acc["finetune"] >= 0.9 and acc["finetune"] - acc["frozen"] >= 0.3, acc


def test_perceptual_distance_is_lpips_baseline_on_the_stages():
    from tailsynth.models import create_model
    model = create_model("resnet18", num_classes=3, in_channels=1, width=0.125, small_input=True).eval()
    d = PerceptualDistance(model, 8, 1)
    x, y = _images(3, 1), _images(3, 2)
    assert torch.allclose(d(x, x), torch.zeros(3))
    fx, fy = d.feature_maps(x), d.feature_maps(y)
    assert len(fx) == 4
    expected = sum(((a / a.norm(dim=1, keepdim=True)) - (b / b.norm(dim=1, keepdim=True))).pow(2).sum(1).mean((1, 2))
                   for a, b in zip(fx, fy))
    torch.testing.assert_close(d(x, y), expected, rtol=1e-4, atol=1e-6)


def test_rarity_score_and_precision_recall_on_hand_examples():
    ref = np.array([[0.0], [1.0], [2.0], [10.0], [12.0]])
    # k = 1 radii: 1, 1, 1, 2, 2; 11 lies in the balls of 10 and 12 (radius 2); 0.5 in those of 0 and 1 (radius 1)
    np.testing.assert_allclose(rarity_score([[0.5], [11.0], [30.0]], ref, k=1), [1.0, 2.0, np.nan])
    fake = np.array([[0.2], [1.2], [50.0], [51.0]])
    p, r = precision_recall(ref, fake, k=1)
    assert p == 0.5  # 0.2 and 1.2 lie in real balls, 50 and 51 do not
    # fake radii (k = 1): 1, 1, 1, 1 -> reals 0, 1, 2 are covered (0.2, 0.2, 0.8 away); 10 and 12 are not
    assert r == pytest.approx(3 / 5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 3)), rng.normal(size=(40, 3))
    radii = NearestNeighbors(n_neighbors=6).fit(a).kneighbors(a)[0][:, 5]
    dist = np.linalg.norm(b[:, None] - a[None], axis=2)
    assert precision_recall(a, b, k=5)[0] == pytest.approx(float((dist <= radii).any(1).mean()))


@pytest.mark.slow
def test_minority_row_on_the_tiny_experiment(tmp_path):
    from tiny import quiet, tiny

    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    from tailsynth.methods.minority.stages import read_scores
    runs = tmp_path / "runs"
    # w = 0: the minority synthesis is the only-LoRA synthesis, image for image
    cfg = load_experiment("demo", tiny("methods=[logex-lora,minority]", "oracle=null",
                                       "synthesis.params.minority.guidance.scale=0.0"))
    run_experiment(cfg, runs, log=quiet)
    sets = {SyntheticSet.read(m.parent).rows[0]["method"]: m.parent for m in (runs / "synthesize").glob("*/manifest.json")}
    assert set(sets) == {"lora", "minority"}
    lora, minority = SyntheticSet.read(sets["lora"]).rows, SyntheticSet.read(sets["minority"]).rows
    assert len(lora) == len(minority) == 15
    for a, b in zip(lora, minority):
        assert (sets["lora"] / a["file"]).read_bytes() == (sets["minority"] / b["file"]).read_bytes()
    (score_dir,) = [m.parent for m in (runs / "minority_score").glob("*/manifest.json")]
    scores = read_scores(score_dir)
    assert set(scores["split"]) == {"train", "val"} and len(scores["ids"]) == len(set(scores["ids"].tolist()))
    assert {"l2", "l1", "perceptual"} <= set(scores)
    # guided (w = 20): other images; the scores and classifier are reused, not recomputed
    cfg = load_experiment("demo", tiny("methods=[minority]", "oracle=null", "synthesis.params.minority.guidance.scale=20.0"))
    run_experiment(cfg, runs, log=quiet)
    assert len(list((runs / "minority_score").glob("*/manifest.json"))) == 1
    assert len(list((runs / "train_minority_classifier").glob("*/manifest.json"))) == 1
    # L above a class's training count: a clear error when the experiment loads, before any stage
    with pytest.raises(TailsynthError, match="num_levels = 20: mode conditional .* allowed range 2..10"):
        load_experiment("demo", tiny("methods=[minority]", "oracle=null", "synthesis.params.minority.classifier.num_levels=20"))
    assert len(list((runs / "minority_score").glob("*/manifest.json"))) == 1


@pytest.mark.slow
def test_minority_cli_score_train_sample(tmp_path):
    from click.testing import CliRunner
    from tiny import tiny

    from tailsynth.cli import cli
    args = tiny("oracle=null")
    runs = str(tmp_path / "runs")
    runner = CliRunner()
    out = runner.invoke(cli, ["minority", "score", "demo", *args, "--runs", runs])
    assert out.exit_code == 0, out.output
    assert "scores.npz" in out.output
    out = runner.invoke(cli, ["minority", "train", "demo", *args, "--runs", runs])
    assert out.exit_code == 0, out.output
    assert "holdout_acc_t0.1T" in out.output
    out = runner.invoke(cli, ["minority", "sample", "demo", *args, "--runs", runs, "--out", str(tmp_path / "s"),
                              "--scales", "0,5", "--classes", "5,9", "-n", "2"])
    assert out.exit_code == 0, out.output
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["images"].shape == (2 * 3 * 2 * 2, 8, 8, 1)  # classes x levels (0, 1, 2) x scales x n
    assert (tmp_path / "s" / "grid_5.png").is_file()
    # w = 0 rows are the same for every level; w = 5 rows differ
    first = data["images"][(data["classes"] == "5") & (data["scales"] == 0)]
    np.testing.assert_array_equal(first[:2], first[2:4])
    out = runner.invoke(cli, ["minority", "sample", "demo", *args, "--runs", runs, "--out", str(tmp_path / "s"),
                              "--classes", "cat"])
    assert out.exit_code != 0 and "unknown class" in str(out.exception)


def test_real_rarity_and_correlations_match_sklearn_and_scipy():
    from scipy.stats import spearmanr
    from sklearn.neighbors import LocalOutlierFactor

    from tailsynth.minority.analysis import generation_table, real_rarity, score_correlations
    rng = np.random.default_rng(3)
    f = rng.normal(size=(90, 4))
    y = np.repeat([0, 1, 2], 30)
    r = real_rarity(f, y, k_knn=5, k_lof=20)
    g = f[30:60]
    d, _ = NearestNeighbors(n_neighbors=6).fit(g).kneighbors(g)
    np.testing.assert_allclose(r["avgknn"][30:60], d[:, 1:].mean(1))
    np.testing.assert_allclose(r["lof"][30:60], -LocalOutlierFactor(n_neighbors=20).fit(g).negative_outlier_factor_)
    s = rng.normal(size=90)
    corr = score_correlations({"l2": s}, r, y, ["a", "b", "c"])
    assert corr["l2"]["avgknn"]["per_class"]["b"] == pytest.approx(spearmanr(s[30:60], r["avgknn"][30:60]).statistic)
    table = generation_table(f, y, {"same": (f + 1e-9, y), "far": (f + 50.0, y)}, [0, 1, 2], ["a", "b", "c"])
    assert table["same"]["mean"]["precision"] == 1.0 and table["far"]["mean"]["precision"] == 0.0
    assert table["far"]["mean"]["avgknn"] > 10 * table["same"]["mean"]["avgknn"]


def test_mode_gives_one_of_the_papers_two_pairs():
    """mode conditional (default): Eq. 16 score + levels within class + p(l | x_t, c); unconditional: Eq. 7 + global
    levels + p(l | x_t); a score or classifier 'conditional' that disagrees with the mode is the mix: an error."""
    from tailsynth.methods.minority import MinoritySettings
    paper = MinoritySettings()
    assert paper.mode == "conditional" and paper.score.conditional and paper.classifier.conditional
    plain = MinoritySettings(mode="unconditional", score=MinorityScoreConfig(num_draws=3))
    assert not plain.score.conditional and not plain.classifier.conditional and plain.score.num_draws == 3
    assert "mode" not in paper.model_dump() and plain.model_dump()["mode"] == "unconditional"
    assert not MinoritySettings(mode="unconditional", classifier={"conditional": False}).classifier.conditional
    for bad, key in (({"classifier": {"conditional": False}}, "classifier.conditional = False"),
                     ({"mode": "unconditional", "score": {"conditional": True}}, "score.conditional = True"),
                     ({"mode": "unconditional", "score": MinorityScoreConfig(conditional=True)}, "score.conditional = True")):
        with pytest.raises(ValueError, match=f"{key} mixes the paper's two settings"):
            MinoritySettings(**bad)


def test_both_pairs_run_from_overrides_and_the_mix_fails_at_load():
    from tiny import tiny

    from tailsynth.methods.registry import generator_named
    from tailsynth.pipeline.experiment import load_experiment
    for mode, conditional in (("conditional", True), ("unconditional", False)):
        cfg = load_experiment("demo", tiny("methods=[minority]", f"synthesis.params.minority.mode={mode}"))
        typed = generator_named("minority").params(cfg.synthesis)
        assert typed.score.conditional is conditional and typed.classifier.conditional is conditional
    with pytest.raises(TailsynthError, match="classifier.conditional = False mixes the paper's two settings"):
        load_experiment("demo", tiny("methods=[minority]", "synthesis.params.minority.classifier.conditional=false"))


@pytest.mark.parametrize("override, message", [
    ("synthesis.params.minority.score.t=5000",
     r"synthesis\.params\.minority\.score\.t = 5000 is outside the allowed range 1\.\.999 \(the generator's linear "
     r"schedule has T = 1000 training timesteps\)"),
    ("synthesis.params.minority.classifier.num_levels=100000",
     r"synthesis\.params\.minority\.classifier\.num_levels = 100000: mode conditional cuts L levels within each "
     r"class, and class '4' has 10 training images; allowed range 2\.\.10"),
])
def test_bad_minority_settings_fail_at_load_and_plan(tmp_path, override, message):
    """On the demo experiment (MNIST-5k-LT: 10 training images per tail class, a linear schedule of 1000 steps):
    the error names key, value and range at load, at ``tailsynth run --plan`` and at ``tailsynth minority``."""
    import re

    from click.testing import CliRunner

    from tailsynth.cli import cli
    from tailsynth.pipeline.experiment import load_experiment
    with pytest.raises(TailsynthError, match=message):
        load_experiment("demo", ["methods=[minority]", override])
    runs = tmp_path / "runs"
    for args in (["run", "demo", "--plan", "--runs", str(runs), "methods=[minority]", override],
                 ["minority", "score", "demo", override, "--runs", str(runs)]):
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, TailsynthError) and re.search(message, str(result.exception)), result.output
    assert not runs.exists() or not any(runs.rglob("manifest.json"))  # nothing made


def test_num_levels_bound_follows_the_mode_and_the_split():
    """conditional: at most the smallest class's training count (demo: 10 per tail class); unconditional: at most
    all training images (counted from the split); the bounds themselves load. Without the data on disk the
    benchmark file's tail count still bounds the conditional L."""
    from tailsynth.data import build_split, load_benchmark_config
    from tailsynth.pipeline.experiment import load_experiment
    n_all = sum(c["train"] for c in build_split(load_benchmark_config("mnist5k-lt"), seed=0).counts().values())
    assert n_all == 4 * 350 + 6 * 10
    load_experiment("demo", ["methods=[minority]", "synthesis.params.minority.classifier.num_levels=10"])
    with pytest.raises(TailsynthError, match="num_levels = 11: .* allowed range 2..10"):
        load_experiment("demo", ["methods=[minority]", "synthesis.params.minority.classifier.num_levels=11"])
    uncond = ["methods=[minority]", "synthesis.params.minority.mode=unconditional"]
    load_experiment("demo", uncond + [f"synthesis.params.minority.classifier.num_levels={n_all}"])
    with pytest.raises(TailsynthError, match=f"num_levels = {n_all + 1} is more than the {n_all} training images the "
                                             f"levels are cut from \\(mode unconditional\\); allowed range 2..{n_all}"):
        load_experiment("demo", uncond + [f"synthesis.params.minority.classifier.num_levels={n_all + 1}"])


def test_num_levels_bound_without_the_data_on_disk(tmp_path):
    from tiny import tiny

    from tailsynth.pipeline.experiment import load_experiment
    bench = tmp_path / "absent.yaml"
    bench.write_text(f"name: absent\nsource: {{kind: folder, path: {tmp_path / 'nowhere'}}}\nhead: [a]\ntail: [b]\n"
                     "n_tail: 5\n")
    base = tiny("methods=[minority]", f"benchmark={bench}")
    load_experiment("demo", base + ["synthesis.params.minority.classifier.num_levels=5"])
    with pytest.raises(TailsynthError, match="num_levels = 6: .* class 'b' has 5 training images; allowed range 2..5"):
        load_experiment("demo", base + ["synthesis.params.minority.classifier.num_levels=6"])
    load_experiment("demo", base + ["synthesis.params.minority.mode=unconditional",
                                    "synthesis.params.minority.classifier.num_levels=6"])  # total unknown here


def test_minority_settings_are_checked_before_anything_runs():
    from tiny import tiny

    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.graph import check_experiment
    for bad, message in (("synthesis.params.minority.perceptual_method=logex", "trains on synthetic images"),
                         ("synthesis.params.minority.classifier.num_levels=1", "num_levels"),
                         ("synthesis.params.minority.score.num_draws=0", "must be >= 1"),
                         ("synthesis.params.minority.guidance.mode=sideways", "mode"),
                         ("synthesis.params.minority.perceptual=none", "needs a perceptual network")):
        with pytest.raises(TailsynthError, match=message):  # load_experiment checks the methods' settings
            check_experiment(load_experiment("demo", tiny("methods=[minority]", bad)))


def test_finetuned_classifier_on_stable_diffusion_latents_round_trips(tmp_path):
    """The encoder copy works on the SD backend (latents, CLIP condition): guidance gradient of latent shape, the
    denoiser untouched, save + load give the same logits."""
    from tailsynth.diffusion.sd import SDBackend
    from tailsynth.diffusion.tiny_sd import build_tiny_sd_pipeline
    build_tiny_sd_pipeline(tmp_path / "sd")
    backend = SDBackend({"path": str(tmp_path / "sd"), "class_names": ["x", "ig"]})
    before = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    latent = tuple(backend.encode(torch.rand(1, 3, 32, 32)).shape[1:])
    clf = MinorityClassifier(backend, MinorityClassifierConfig(num_levels=3, hidden=16), latent).eval()
    cond = backend.encode_condition(class_ids=torch.tensor([0, 1]))
    x = torch.randn(2, *latent, generator=torch.Generator().manual_seed(0))
    grad = clf.log_prob_grad(x, 300, cond, 2)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    with torch.no_grad():
        for p in clf.encoder.parameters():
            p.add_(0.01)  # as if trained: the copy differs from the denoiser
    clf.save(tmp_path / "clf", {"latent": list(latent)})
    loaded, _ = MinorityClassifier.load(tmp_path / "clf", backend)
    t = torch.tensor([300, 300])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, cond), clf(x, t, cond), rtol=0, atol=0)
    for k, v in backend.denoiser.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_minority_figures_stage_in_the_report(tmp_path):
    """The report's minority section: four synthetic sets (ancestral plain / guided from the same noise, the DDIM
    pair), the oracle's accuracy agreeing with the quality stage's, and figure settings that redraw only figures."""
    import json

    from tiny import quiet, tiny

    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    from tailsynth.methods.minority.figures import ANCESTRAL, ANCESTRAL_GUIDED, DDIM, DDIM_GUIDED
    runs = tmp_path / "runs"
    fig = "synthesis.params.minority.figures={n_per_class: 6, batch_size: 4, per_cell: 2, grid_scales: [0.0, 5.0]}"
    cfg = load_experiment("demo", tiny("methods=[minority]", fig, "synthesis.n_per_class=6"))
    result = run_experiment(cfg, runs, log=quiet)
    (folder,) = [m.parent for m in (runs / "minority_figures").glob("*/manifest.json")]
    fm = json.loads((folder / "minority.json").read_text())
    assert fm["sets"] == [ANCESTRAL, ANCESTRAL_GUIDED, DDIM, DDIM_GUIDED] and set(fm["generation"]) == set(fm["sets"])
    assert {"l2", "l1", "perceptual"} <= set(fm["correlations"])
    ancestral = np.load(folder / "ancestral.npz")
    assert ancestral["plain"].shape == ancestral["guided"].shape == (5 * 6, 8, 8, 1)  # 5 tail digits x 6
    assert (ancestral["plain"] != ancestral["guided"]).any()
    (quality_dir,) = [m.parent for m in (runs / "synthetic_quality").glob("*/manifest.json")]
    quality = json.loads((quality_dir / "quality.json").read_text())
    assert fm["oracle_accuracy"][DDIM] == pytest.approx(quality["lora"]["overall"])
    assert fm["oracle_accuracy"][DDIM_GUIDED] == pytest.approx(quality["minority"]["overall"])
    html = (result.report_dir / "report.html").read_text()
    md = (result.report_dir / "report.md").read_text()
    assert "Minority guidance: synthetic tail images (class-conditional, Eq. 16/17; w = 3.5" in md and "Spearman" in md
    assert fm["mode"] == "conditional"
    assert "Figs. 15-16" in html and "Figs. 3, 6" in html
    assert json.loads((result.report_dir / "results.json").read_text())["minority"]["generation"].keys() == fm["generation"].keys()
    # w = 0: the guided ancestral images are the plain ones (same x_T, same noise); the synthetic sets are reused
    n_synth = len(list((runs / "synthesize").glob("*/manifest.json")))
    cfg = load_experiment("demo", tiny("methods=[minority]", fig, "synthesis.n_per_class=6",
                                       "synthesis.params.minority.figures.grid_classes=1",
                                       "synthesis.params.minority.guidance.scale=0.0"))
    run_experiment(cfg, runs, log=quiet)
    assert len(list((runs / "synthesize").glob("*/manifest.json"))) == n_synth + 1  # the w = 0 minority set only
    cfg = load_experiment("demo", tiny("methods=[minority]", fig, "synthesis.n_per_class=6",
                                       "synthesis.params.minority.figures.grid_classes=0",
                                       "synthesis.params.minority.guidance.scale=0.0"))
    run_experiment(cfg, runs, log=quiet)
    assert len(list((runs / "synthesize").glob("*/manifest.json"))) == n_synth + 1  # figure settings: figures only
    folders = [m.parent for m in (runs / "minority_figures").glob("*/manifest.json")]
    assert len(folders) == 3
    last = max(folders, key=lambda p: (p / "manifest.json").stat().st_mtime)
    zero = np.load(last / "ancestral.npz")
    np.testing.assert_array_equal(zero["plain"], zero["guided"])
    assert not list(last.glob("levels_*.png"))


def test_minority_classifier_encodes_each_image_once_per_flip():
    """The classifier's training latents (each image under every flip the loss may draw, encoded once instead of a
    VAE call per image per step) are exactly the flipped images encoded; images stored smaller than the backend's
    size are resized first, a batch at a time, as the score stage resizes them."""
    from tailsynth.data import convert_array
    from tailsynth.minority.classifier import encode_views, flip_views
    backend = _backend(in_channels=3)
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    cfg = MinorityClassifierConfig(hflip=True, vflip=True)
    z = encode_views(backend, images, cfg, torch.device("cpu"), working_size=8, batch_size=2)
    assert flip_views(cfg) == [(False, False), (True, False), (False, True), (True, True)]
    assert z.shape == (5, 4, 3, 8, 8)
    x = torch.as_tensor(convert_array(images, 8, 3)).permute(0, 3, 1, 2).float().div(255.0)
    for v, (h, vf) in enumerate(flip_views(cfg)):
        xv = x.flip(-1) if h else x
        torch.testing.assert_close(z[:, v], backend.encode(xv.flip(-2) if vf else xv), rtol=0, atol=0)
    plain = encode_views(backend, images, MinorityClassifierConfig(hflip=False), torch.device("cpu"), working_size=8)
    assert plain.shape == (5, 1, 3, 8, 8) and torch.equal(plain[:, 0], z[:, 0])
