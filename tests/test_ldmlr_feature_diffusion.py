"""LDMLR's feature diffusion (tailsynth.diffusion.feature_diffusion) on the paths beside the default
(epsilon, standardize, DDIM): the ``sample`` (x0) prediction, ``minmax_clip`` normalisation, the clipping of the
x0 estimate to the training range, and ancestral DDPM sampling, against hand formulas and closed forms.

The denoiser is replaced by an analytic function of (x_t, t), so every expected value is computable by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailsynth.diffusion.feature_diffusion import (FeatureDiffusion, FeatureDiffusionConfig, FeatureSamplingConfig,
                                                   sample_features)


class Analytic(torch.nn.Module):
    """A stand-in denoiser: out = fn(x_t, a_t) with a_t = alphas_cumprod[t] (the label is ignored)."""

    def __init__(self, fn, acp: torch.Tensor, dim: int, num_classes: int = 2):
        super().__init__()
        self.fn, self.acp, self.dim, self.num_classes = fn, acp, dim, num_classes

    def forward(self, x_t, t, y):
        return self.fn(x_t, self.acp[t].view(-1, 1))


def model_on(train: np.ndarray, fn, **cfg) -> FeatureDiffusion:
    c = FeatureDiffusionConfig(hidden=8, blocks=1, **cfg)
    model = FeatureDiffusion(c, train.shape[1], 2, FeatureDiffusion.statistics(train, c.normalization))
    model.denoiser = Analytic(fn, model.alphas_cumprod, train.shape[1])
    return model.eval()


TRAIN = np.random.default_rng(0).gamma(1.5, 1.0, size=(200, 3)).astype(np.float32)  # ReLU-like, > 1 often


def test_normalisations_map_the_training_range_as_documented():
    lo, hi = TRAIN.min(0), TRAIN.max(0)
    mm = model_on(TRAIN, lambda x, a: x, normalization="minmax_clip")
    x = mm.encode(torch.as_tensor(TRAIN))
    assert torch.allclose(x.min(0).values, -torch.ones(3), atol=1e-6)
    assert torch.allclose(x.max(0).values, torch.ones(3), atol=1e-6)
    assert torch.allclose(mm.low, -torch.ones(3), atol=1e-6) and torch.allclose(mm.high, torch.ones(3), atol=1e-6)
    st = model_on(TRAIN, lambda x, a: x)
    mean, std = TRAIN.astype(np.float64).mean(0), TRAIN.astype(np.float64).std(0)
    assert np.allclose(st.encode(torch.as_tensor(TRAIN)).mean(0).numpy(), 0, atol=1e-5)
    assert np.allclose(st.low.numpy(), (lo - mean) / std, atol=1e-5)
    assert np.allclose(st.high.numpy(), (hi - mean) / std, atol=1e-5)
    assert float(st.high.max()) > 1  # standardised features exceed 1: [-1, 1] would cut them


def test_sample_prediction_x0_estimate_is_the_network_output_and_its_loss_is_mse_on_x0():
    fn = lambda x, a: 0.3 * x + a.sqrt()
    model = model_on(TRAIN, fn, prediction="sample")
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(64, 3, generator=gen)
    for t in (1, 100, 500, 900):
        tt = torch.full((64,), t)
        a = model.alphas_cumprod[t]
        eps = model.eps(x_t, tt, torch.zeros(64, dtype=torch.long))
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()  # Tweedie / DDIM eq. 9 on the converted prediction
        assert torch.allclose(x0, fn(x_t, a.view(1, 1)), atol=1e-4), t
    # the training loss: MSE between the output and x0 (the code's pred_x0), with the draws of training_loss
    x0 = torch.randn(32, 3, generator=gen)
    y = torch.zeros(32, dtype=torch.long)
    loss = model.training_loss(x0, y, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (32,), generator=g)
    torch.rand(32, generator=g)  # the label dropout draw
    noise = torch.randn(x0.shape, generator=g)
    a = model.alphas_cumprod[t].view(-1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    assert torch.allclose(loss, F.mse_loss(fn(x_t, a), x0))
    eps_model = model_on(TRAIN, fn)  # epsilon: the same draws, the noise as target (LDMLR Eq. 10)
    assert torch.allclose(eps_model.training_loss(x0, y, torch.Generator().manual_seed(5)),
                          F.mse_loss(fn(x_t, a), noise))


def test_sample_prediction_one_ddim_step_returns_the_clipped_network_output():
    """DDIM with one step from t = 1 to a_prev = 1: x_0 = x0-hat = clip(network output) to the training range."""
    fn = lambda x, a: 2.5 * x  # (pushes some coordinates past the training range)
    labels = np.zeros(500, dtype=np.int64)
    for normalization in ("standardize", "minmax_clip"):
        model = model_on(TRAIN, fn, prediction="sample", normalization=normalization)
        got = sample_features(model, labels, FeatureSamplingConfig(num_steps=1), seed=4)
        x_T = torch.randn((500, 3), generator=torch.Generator().manual_seed(4))
        out = torch.minimum(torch.maximum(2.5 * x_T, model.low), model.high)
        assert np.allclose(got, model.decode(out).numpy(), atol=1e-5), normalization
        assert (got <= TRAIN.max(0) + 1e-5).all() and (got >= TRAIN.min(0) - 1e-5).all()
        assert np.isclose(got, TRAIN.max(0), atol=1e-5).any() and np.isclose(got, TRAIN.min(0), atol=1e-5).any()


@pytest.mark.parametrize("normalization", ["standardize", "minmax_clip"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_runaway_noise_prediction_ends_on_the_training_range(normalization, sampler):
    """x0-hat is clipped per dimension to the training features' [min, max] at every step: a noise prediction
    of +100 (x0-hat far below the range) gives the training minimum of every dimension, -100 the maximum."""
    labels = np.zeros(50, dtype=np.int64)
    cfg = FeatureSamplingConfig(sampler=sampler, num_steps=20)
    for value, expected in ((100.0, TRAIN.min(0)), (-100.0, TRAIN.max(0))):
        model = model_on(TRAIN, lambda x, a, v=value: torch.full_like(x, v), normalization=normalization)
        got = sample_features(model, labels, cfg, seed=0)
        # (float32: DDIM's last x_t carries sqrt(1 - a_1) x 100 ~ 1 that its x0-hat subtracts again)
        assert np.allclose(got, np.broadcast_to(expected, got.shape), atol=1e-3), (value, got[:2])


def test_one_ddpm_step_is_the_posterior_mean_plus_its_variance_times_the_seeded_noise():
    """Two ancestral steps (t = 500 -> 0 -> x_0), DDPM eq. 6-7 with the clipped x0-hat: x_{t'} = mu~ + sqrt(beta~) z,
    mu~ = sqrt(a') beta/(1-a) x0-hat + sqrt(1-beta)(1-a')/(1-a) x_t, beta~ = (1-a')/(1-a) beta, beta = 1 - a/a';
    at t = 0 (a' = 1) mu~ = x0-hat and no noise is added."""
    fn = lambda x, a: 0.7 * x - 0.4  # (an epsilon prediction)
    model = model_on(TRAIN, fn)
    labels = np.zeros(400, dtype=np.int64)
    got = sample_features(model, labels, FeatureSamplingConfig(sampler="ddpm", num_steps=2), seed=9)
    acp = model.alphas_cumprod
    gen = torch.Generator().manual_seed(9)
    x = torch.randn((400, 3), generator=gen)
    clip = lambda v: torch.minimum(torch.maximum(v, model.low), model.high)

    def x0_hat(x, a):
        return clip((x - (1 - a).sqrt() * fn(x, a)) / a.sqrt())

    a, a_prev = acp[500], acp[0]
    beta = 1 - a / a_prev
    x0 = x0_hat(x, a)
    assert bool((x0 == model.low).any() | (x0 == model.high).any())  # the clip acts on this step
    mean = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x
    var = (1 - a_prev) / (1 - a) * beta
    x = mean + var.sqrt() * torch.randn(x.shape, generator=gen)
    expected = model.decode(x0_hat(x, acp[0]))
    assert np.allclose(got, expected.numpy(), atol=1e-5)


def test_ddpm_with_the_exact_noise_prediction_draws_the_data_distribution():
    """Data N(mu, s^2) per dimension standardises to N(0, 1), whose exact noise prediction is E[eps | x_t] =
    sqrt(1 - a_t) x_t; 1000 ancestral steps (the code's sampler) must then give back N(mu, s^2) per dimension."""
    rng = np.random.default_rng(3)
    mu, s = np.array([2.0, -1.0], np.float32), np.array([0.5, 3.0], np.float32)
    train = (mu + s * rng.standard_normal((200000, 2))).astype(np.float32)
    model = model_on(train, lambda x, a: (1 - a).sqrt() * x)
    got = sample_features(model, np.zeros(20000, dtype=np.int64),
                          FeatureSamplingConfig(sampler="ddpm", num_steps=1000), seed=0)
    assert np.allclose(got.mean(0), mu, atol=0.03 * s), got.mean(0)
    assert np.allclose(got.std(0), s, rtol=0.03), got.std(0)
