"""Schedules and explicit-loop samplers against diffusers' schedulers and closed forms."""
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from tailsynth.diffusion import (alpha_at, ddim_sample, ddim_timesteps, ddim_update, ddpm_sample,
                                 make_alphas_cumprod, predict_x0)
from tailsynth.errors import TailsynthError
import pytest

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def test_schedules_match_diffusers():
    for kind, dkind in [("scaled_linear", "scaled_linear"), ("linear", "linear"), ("cosine", "squaredcos_cap_v2")]:
        b0, b1 = (0.00085, 0.012) if kind == "scaled_linear" else (1e-4, 0.02)
        ref = DDIMScheduler(beta_schedule=dkind, beta_start=b0, beta_end=b1).alphas_cumprod
        assert torch.allclose(make_alphas_cumprod(kind, 1000, b0, b1), ref, rtol=1e-6, atol=1e-7), kind
    with pytest.raises(TailsynthError, match="valid schedules"):
        make_alphas_cumprod("sigmoid")


def test_ddim_timesteps_leading_with_offset():
    sched = DDIMScheduler(**SD)
    for n in (1, 3, 20, 50, 999):
        sched.set_timesteps(n)
        assert torch.equal(ddim_timesteps(n), sched.timesteps), n
    assert ddim_timesteps(20)[:3].tolist() == [951, 901, 851] and int(ddim_timesteps(20)[-1]) == 1


def test_predict_x0_inverts_forward_process():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a = torch.tensor(0.3)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(predict_x0(xt, eps, a), x0, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_equals_diffusers(eta):
    sched = DDIMScheduler(**SD)
    sched.set_timesteps(10)
    acp = make_alphas_cumprod("scaled_linear")
    g = torch.Generator().manual_seed(1)
    for t in sched.timesteps.tolist():
        x, eps, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        ref = sched.step(eps, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        ours, _ = ddim_update(x, eps, acp[t], alpha_at(acp, t - 100), eta=eta, noise=noise)
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5), t


def test_ddpm_step_equals_diffusers():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    sched.set_timesteps(5)
    acp = make_alphas_cumprod("linear")
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    eps_fn = lambda x, t, c: 0.1 * x + c.mean() * 0  # noqa: E731 - a fixed, simple "network"
    cond = torch.zeros(2, 1, 1)
    ours = ddpm_sample(eps_fn, x_T, cond, None, acp, torch.Generator().manual_seed(5), num_steps=5).sample
    g, x = torch.Generator().manual_seed(5), x_T
    for t in sched.timesteps.tolist():
        x = sched.step(eps_fn(x, t, cond), t, x, generator=g).prev_sample
    assert ours.shape == x.shape and torch.allclose(ours, x, atol=1e-5)


def _toy_eps(x, t, c):
    return torch.tanh(x * c.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.float().view(-1, 1, 1, 1) / 1000)


def test_ddim_sample_matches_scheduler_loop_with_cfg_and_is_deterministic():
    acp = make_alphas_cumprod("scaled_linear")
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, uncond = torch.full((2, 3, 5), 0.5), torch.zeros(2, 3, 5)
    out = ddim_sample(_toy_eps, x_T, cond, uncond, acp, num_steps=5, guidance_scale=3.0, return_x0_hats=True)
    sched = DDIMScheduler(**SD)
    sched.set_timesteps(5)
    x = x_T
    for t in sched.timesteps:
        tt = t.expand(2)
        e_u, e_c = _toy_eps(x, tt, uncond), _toy_eps(x, tt, cond)
        x = sched.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
    assert torch.allclose(out.sample, x, atol=1e-5) and len(out.x0_hats) == 5
    again = ddim_sample(_toy_eps, x_T, cond, uncond, acp, num_steps=5, guidance_scale=3.0)
    assert torch.equal(out.sample, again.sample)
    per_step = ddim_sample(_toy_eps, x_T, [cond] * 5, [uncond] * 5, acp, num_steps=5, guidance_scale=3.0)
    assert torch.equal(per_step.sample, out.sample)
    with pytest.raises(TailsynthError, match="per-step"):
        ddim_sample(_toy_eps, x_T, [cond] * 4, uncond, acp, num_steps=5)
    s1 = ddim_sample(_toy_eps, x_T, cond, uncond, acp, 5, eta=1.0, generator=torch.Generator().manual_seed(7))
    s2 = ddim_sample(_toy_eps, x_T, cond, uncond, acp, 5, eta=1.0, generator=torch.Generator().manual_seed(7))
    s3 = ddim_sample(_toy_eps, x_T, cond, uncond, acp, 5, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(s1.sample, s2.sample) and not torch.equal(s1.sample, s3.sample)
    with pytest.raises(TailsynthError, match="Generator"):
        ddim_sample(_toy_eps, x_T, cond, uncond, acp, 5, eta=1.0)


def test_gradient_through_ddim_chain_with_checkpointing():
    """DiG-IN needs d loss / d x_T through the whole chain; per-step checkpointing must not change it."""
    acp = make_alphas_cumprod("scaled_linear")
    grads = []
    for ckpt in (False, True):
        x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        cond = torch.full((1, 2, 3), 0.3, requires_grad=True)
        out = ddim_sample(_toy_eps, x_T, cond, torch.zeros(1, 2, 3), acp, num_steps=4, checkpoint=ckpt,
                          return_x0_hats=True)
        (out.sample.square().mean() + out.x0_hats[-2].mean()).backward()
        grads.append((x_T.grad.clone(), cond.grad.clone()))
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def _hook_eps(x, t, cond):
    """A deterministic, non-linear toy noise predictor of x, t and a (B, 1, 1) condition."""
    return torch.tanh(0.7 * x + cond.view(-1, 1, 1, 1) * 0.1) * (t.float().view(-1, 1, 1, 1) / 1000.0)


def _hook_setup():
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(3, 2, 4, 4, generator=g)
    cond = torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1)
    return x_T, cond, make_alphas_cumprod("linear", 1000)


def test_hook_that_changes_nothing_is_bit_identical_to_no_hook():
    from tailsynth.diffusion.samplers import SamplerStep
    x_T, cond, acp = _hook_setup()
    seen = []

    def watch(step: SamplerStep):
        assert torch.equal(step.x0_hat, predict_x0(step.x_t, step.eps, step.alpha_t))
        seen.append(step.t)

    plain = ddim_sample(_hook_eps, x_T, cond, None, acp, num_steps=5, guidance_scale=1.0, eta=0.5,
                        generator=torch.Generator().manual_seed(1)).sample
    hooked = ddim_sample(_hook_eps, x_T, cond, None, acp, num_steps=5, guidance_scale=1.0, eta=0.5,
                         generator=torch.Generator().manual_seed(1), hook=watch).sample
    assert torch.equal(plain, hooked) and seen == ddim_timesteps(5).tolist()
    plain = ddpm_sample(_hook_eps, x_T, cond, None, acp, torch.Generator().manual_seed(2), num_steps=5).sample
    hooked = ddpm_sample(_hook_eps, x_T, cond, None, acp, torch.Generator().manual_seed(2), num_steps=5,
                         hook=lambda step: None).sample
    assert torch.equal(plain, hooked)


def test_hook_eps_change_equals_sampling_with_the_changed_predictor():
    """Classifier guidance's form: a hook returning eps - w sqrt(1 - a_t) g is sampling with that predictor."""
    from tailsynth.diffusion.samplers import StepChange
    x_T, cond, acp = _hook_setup()
    g = torch.linspace(-1, 1, 32).view(1, 2, 4, 4)
    w = 2.5

    def shifted_eps(x, t, c):
        a_t = acp[int(t[0])]
        return _hook_eps(x, t, c) - w * (1 - a_t) ** 0.5 * g

    def hook(step):
        return StepChange(eps=step.eps - w * (1 - step.alpha_t) ** 0.5 * g)

    for sampler in ("ddim", "ddpm"):
        if sampler == "ddim":
            ref = ddim_sample(shifted_eps, x_T, cond, None, acp, num_steps=6, guidance_scale=1.0).sample
            out = ddim_sample(_hook_eps, x_T, cond, None, acp, num_steps=6, guidance_scale=1.0, hook=hook).sample
        else:
            ref = ddpm_sample(shifted_eps, x_T, cond, None, acp, torch.Generator().manual_seed(3), num_steps=6).sample
            out = ddpm_sample(_hook_eps, x_T, cond, None, acp, torch.Generator().manual_seed(3), num_steps=6,
                              hook=hook).sample
        assert torch.allclose(out, ref, atol=1e-6), sampler


def test_ddpm_mean_hook_shifts_the_posterior_mean_by_sigma_times_the_gradient():
    """Eq. 8 of minority guidance / Dhariwal & Nichol Alg. 1: mu + s Sigma grad, written out by hand."""
    from tailsynth.diffusion.samplers import StepChange, posterior_mean
    x_T, cond, acp = _hook_setup()
    g, s = torch.full((1, 2, 4, 4), 0.3), 4.0
    out = ddpm_sample(_hook_eps, x_T, cond, None, acp, torch.Generator().manual_seed(4), num_steps=4,
                      hook=lambda step: StepChange(mean=step.mean + s * step.variance * g)).sample
    gen, x = torch.Generator().manual_seed(4), x_T
    for t in ddim_timesteps(4, 1000, steps_offset=0).tolist():
        a_t, a_prev = acp[t], acp[t - 250] if t >= 250 else torch.tensor(1.0)
        var = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=1e-20)
        eps = _hook_eps(x, torch.full((3,), t), cond)
        mean = posterior_mean(x, predict_x0(x, eps, a_t), a_t, a_prev) + s * var * g
        x = mean + var ** 0.5 * torch.randn(x.shape, generator=gen) if t > 0 else mean
    assert torch.allclose(out, x, atol=1e-6)
