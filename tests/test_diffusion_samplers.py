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
