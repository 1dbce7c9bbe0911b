"""FG-Entropy (Hemmat et al. 2023; official code's entropy-ascent step) on a tiny pixel backend at 16 px."""
import pytest
import torch

from tailsynth.config import build_config
from tailsynth.diffusion import PixelBackend, ddim_sample, initial_noise
from tailsynth.diffusion.guidance import ClassifierGuide, FgEntropyConfig, entropy, feedback_step, fg_entropy_sample
from tailsynth.errors import TailsynthError

from guidance_tiny import TINY, TinyClassifier


def _setup(n=4):
    backend = PixelBackend(TINY, seed=1).eval()
    guide = ClassifierGuide(TinyClassifier(seed=2), 16, 3)
    ids = torch.arange(n) % 3
    x_T = initial_noise((n, 3, 16, 16), torch.Generator().manual_seed(7))
    return backend, guide, backend.encode_condition(ids), backend.null_condition(n), x_T


def test_entropy_formula():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    assert torch.allclose(entropy(logits), torch.tensor([0.6931472, 0.0]), atol=1e-6)


def test_without_feedback_equals_plain_ddim():
    backend, guide, cond, uncond, x_T = _setup()
    res = fg_entropy_sample(backend, guide, cond, uncond, x_T, FgEntropyConfig(num_steps=6, every=0))
    plain = ddim_sample(backend.eps, x_T, cond.detach(), uncond, backend.alphas_cumprod, 6, 5.0,
                        clip_x0=backend.clip_x0).sample
    assert torch.allclose(res.images, backend.decode(plain), atol=1e-6)
    probs = guide(res.images).softmax(1)
    assert torch.allclose(res.confidence, probs.max(1).values, atol=1e-6)


def test_feedback_step_is_norm_scaled_and_moves_entropy():
    backend, guide, cond, uncond, x_T = _setup()
    cfg = FgEntropyConfig(step_scale=0.03)
    t, a_t = 501, backend.alphas_cumprod[501]
    x_new = feedback_step(backend, guide, x_T, t, a_t, cond, cfg)
    step = (x_new - x_T).flatten(1).norm(dim=1)
    assert torch.allclose(step, 0.03 * x_T.flatten(1).norm(dim=1), rtol=1e-4)
    assert all(p.grad is None for p in list(backend.parameters()) + list(guide.parameters()))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_entropy_moves_in_the_configured_direction(sign):
    backend, guide, cond, uncond, x_T = _setup()
    base = dict(num_steps=10, every=1, step_scale=0.05)
    plain = fg_entropy_sample(backend, guide, cond, uncond, x_T, FgEntropyConfig(**{**base, "every": 0}))
    guided = fg_entropy_sample(backend, guide, cond, uncond, x_T, FgEntropyConfig(**base, sign=sign))
    diff = sign * (guided.entropy - plain.entropy)
    assert diff.mean() > 0.005 and bool((diff > 0).all()), (guided.entropy, plain.entropy)


def test_same_generator_same_images_with_eta():
    backend, guide, cond, uncond, x_T = _setup(n=2)
    cfg = FgEntropyConfig(num_steps=5, every=2, eta=0.5)
    a = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg, torch.Generator().manual_seed(3))
    b = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg, torch.Generator().manual_seed(3))
    c = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a.images, b.images) and torch.equal(a.entropy, b.entropy)
    assert not torch.equal(a.images, c.images)
    tgt = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg, torch.Generator().manual_seed(3),
                            target_classes=torch.tensor([1, 3]))
    assert torch.allclose(tgt.confidence, guide(a.images).softmax(1)[[0, 1], [1, 3]], atol=1e-6)
    with pytest.raises(TailsynthError, match="needs a torch.Generator"):
        fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg)
    with pytest.raises(TailsynthError, match="every >= 0"):
        build_config(FgEntropyConfig, {"every": -1}, "fg_entropy")


def test_feedback_runs_on_the_sampler_hook_on_every_kth_step(monkeypatch):
    """FG-Entropy is ddim_sample + FgEntropyFeedback: the hook nudges x_t only at steps 0, every, 2 every ..."""
    from tailsynth.diffusion.guidance import fg_entropy as fg
    backend, guide, cond, uncond, x_T = _setup(n=2)
    seen = []
    real = fg.feedback_step

    def spy(backend_, guide_, x_t, t, a_t, cond_, cfg_):
        seen.append(t)
        return real(backend_, guide_, x_t, t, a_t, cond_, cfg_)

    monkeypatch.setattr(fg, "feedback_step", spy)
    cfg = FgEntropyConfig(num_steps=6, every=4)
    res = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg)
    assert seen == [831, 167]  # ddim_timesteps(6) = 831, 665, 499, 333, 167, 1: steps 0 and 4
    hooked = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, 6, 5.0, clip_x0=backend.clip_x0,
                         hook=fg.FgEntropyFeedback(backend, guide, cond, cfg)).sample
    assert torch.equal(res.images, backend.decode(hooked))


def test_official_order_steps_the_nudged_latent_with_the_pre_feedback_prediction():
    """fg_pipe.py: eps_hat at x_t first, then the nudge, then the DDIM update of the nudged x_t with that eps_hat."""
    from tailsynth.diffusion import alpha_at, ddim_timesteps, ddim_update, guided_eps
    backend, guide, cond, uncond, x_T = _setup(n=2)
    acp = backend.alphas_cumprod
    for order in ("official", "nudge_then_predict"):
        cfg = FgEntropyConfig(num_steps=2, every=2, order=order)
        res = fg_entropy_sample(backend, guide, cond, uncond, x_T, cfg)
        x = x_T
        for i, t in enumerate(ddim_timesteps(2).tolist()):
            a_t, a_prev = acp[t], alpha_at(acp, t - 500)
            with torch.no_grad():
                eps = guided_eps(backend.eps, x, t, cond, uncond, 5.0)
            if i == 0:
                x = feedback_step(backend, guide, x, t, a_t, cond, cfg)
                if order == "nudge_then_predict":
                    with torch.no_grad():
                        eps = guided_eps(backend.eps, x, t, cond, uncond, 5.0)
            with torch.no_grad():
                x, _ = ddim_update(x, eps, a_t, a_prev, clip_x0=backend.clip_x0)
        assert torch.allclose(res.images, backend.decode(x), atol=1e-6), order
    official = fg_entropy_sample(backend, guide, cond, uncond, x_T, FgEntropyConfig(num_steps=2, every=2))
    legacy = fg_entropy_sample(backend, guide, cond, uncond, x_T,
                               FgEntropyConfig(num_steps=2, every=2, order="nudge_then_predict"))
    assert not torch.allclose(official.images, legacy.images)


def test_official_min_max_uses_the_raw_decode_with_detached_extremes():
    from tailsynth.diffusion.guidance.fg_entropy import _minmax
    x = torch.tensor([[[[-0.5, 0.2], [0.9, 1.7]]]], requires_grad=True)
    out = _minmax(x, detach=True)
    assert torch.allclose(out, (x - (-0.5)) / 2.2)
    (g,) = torch.autograd.grad(out.sum(), [x])
    assert torch.allclose(g, torch.full_like(x, 1 / 2.2))  # every pixel, the extremes included
    (g2,) = torch.autograd.grad(_minmax(x, detach=False).sum(), [x])
    assert not torch.allclose(g2, g)  # through min / max the extremes get other gradients


@pytest.mark.parametrize("normalization", ["official", "clamped"])
def test_entropy_gradient_matches_finite_differences(normalization):
    """dH/dx_t of the feedback step against central differences of H written out here from the formulas:
    s = sqrt(1-a) x0_hat + (1 - sqrt(1-a)) x_t, image = min-max of the decode of s (official: of the raw decode,
    with min and max held at their values at x_t, since they are detached)."""
    from tailsynth.diffusion import predict_x0
    from tailsynth.diffusion.guidance import entropy
    from tailsynth.diffusion.guidance.fg_entropy import feedback_entropy
    backend, guide, cond, _, x_T = _setup(n=1)
    cfg = FgEntropyConfig(normalization=normalization)
    t, a_t = 501, backend.alphas_cumprod[501]
    c = (1 - a_t) ** 0.5

    def decoded(x):
        s = c * predict_x0(x, backend.eps(x, torch.full((1,), t), cond), a_t) + (1 - c) * x
        return backend.decode(s, clamp=normalization == "clamped")

    with torch.no_grad():
        at_x = decoded(x_T)
        lo, hi = at_x.min(), at_x.max()

    def H(x):
        img = decoded(x)
        if normalization == "clamped":
            lo_, hi_ = img.min(), img.max()
        else:
            lo_, hi_ = lo, hi
        return entropy(guide((img - lo_) / (hi_ - lo_))).sum()

    x = x_T.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(feedback_entropy(backend, guide, x, t, a_t, cond, cfg).sum(), [x])
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    v = v / v.norm()
    h = 1e-2
    with torch.no_grad():
        fd = float((H(x_T + h * v) - H(x_T - h * v)) / (2 * h))
    directional = float((g * v).sum())
    assert abs(directional) > 1e-4  # a direction with a real slope, so the check can fail
    assert directional == pytest.approx(fd, rel=2e-2)
