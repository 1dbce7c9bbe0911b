"""Pixel backend shapes/dtypes and the denoiser training loop (determinism, exact resume)."""
import numpy as np
import pytest
import torch

from tailsynth.diffusion import (BACKENDS, DenoiserTrainConfig, DiffusionBackend, PixelBackend, build_backend,
                                 ddim_sample, ddpm_sample, initial_noise, train_denoiser)
from tailsynth.errors import TailsynthError, UnknownNameError

TINY = dict(num_classes=3, image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8, tokens_per_class=2)


def _data(n=12):
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 3


def _cfg(**kw):
    base = dict(steps=4, batch_size=5, lr=1e-3, checkpoint_every=2, ema_decay=0.9, progress=False)
    return DenoiserTrainConfig(**{**base, **kw})


def test_pixel_backend_shapes_dtypes_and_errors():
    b = build_backend("pixel", TINY, seed=0)
    assert isinstance(b, PixelBackend) and isinstance(b, DiffusionBackend) and "pixel" in BACKENDS
    assert b.alphas_cumprod.shape == (1000,)
    cond = b.encode_condition(torch.tensor([0, 2]))
    assert cond.shape == (2, 2, 16) and cond.dtype == torch.float32
    assert torch.equal(b.null_condition(3), b.class_tokens[:1].expand(3, -1, -1))
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(b.decode(b.encode(x)), x) and b.encode(x).min() >= -1
    eps = b.eps(b.encode(x), torch.tensor([10, 900]), cond)
    assert eps.shape == (2, 3, 16, 16) and eps.dtype == torch.float32
    assert b.latent_shape(16) == (3, 16, 16)
    with pytest.raises(TailsynthError, match="out of range"):
        b.encode_condition(torch.tensor([3]))
    with pytest.raises(TailsynthError, match="prompts"):
        b.encode_condition(prompts=["a"])
    with pytest.raises(UnknownNameError, match="pixel, sd"):
        build_backend("dit", {})
    with pytest.raises(TailsynthError, match="attention_levels"):
        PixelBackend({**TINY, "attention_levels": (True,)})
    # same seed -> same weights
    assert torch.equal(PixelBackend(TINY, seed=0).class_tokens, b.class_tokens)


def test_samplers_on_pixel_backend_are_seeded():
    b = PixelBackend(TINY, seed=0).eval()
    cond, unc = b.encode_condition(torch.tensor([0, 1])), b.null_condition(2)
    with torch.no_grad():
        outs = [ddim_sample(b.eps, initial_noise((2, 3, 16, 16), torch.Generator().manual_seed(s)), cond, unc,
                            b.alphas_cumprod, num_steps=3, guidance_scale=2.0, clip_x0=True).sample for s in (0, 0, 1)]
        anc = ddpm_sample(b.eps, initial_noise((2, 3, 16, 16), torch.Generator().manual_seed(0)), cond, unc,
                          b.alphas_cumprod, torch.Generator().manual_seed(0), num_steps=4, guidance_scale=2.0)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    img = b.decode(anc.sample)
    assert img.shape == (2, 3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1 and torch.isfinite(img).all()


def test_train_denoiser_resume_equals_uninterrupted(tmp_path):
    images, labels = _data()
    full = PixelBackend(TINY, seed=0)
    r_full = train_denoiser(full, images, labels, _cfg(), tmp_path / "full", "cpu", generator_seed=3)
    assert r_full.finished and r_full.step == 4 and len(r_full.losses) == 4
    assert all(np.isfinite(r_full.losses))
    part = PixelBackend(TINY, seed=0)
    r1 = train_denoiser(part, images, labels, _cfg(), tmp_path / "part", "cpu", 3, max_new_steps=2)
    assert not r1.finished and r1.step == 2 and (tmp_path / "part" / "train_state.json").is_file()
    resumed = PixelBackend(TINY, seed=0)  # a fresh process: base init, then the checkpoint
    r2 = train_denoiser(resumed, images, labels, _cfg(), tmp_path / "part", "cpu", 3)
    assert r2.finished and r2.step == 4 and r2.losses == r_full.losses[2:]
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k
    # the EMA weights were copied in: the trained model differs from the base
    assert not torch.equal(full.class_tokens, PixelBackend(TINY, seed=0).class_tokens)
    # a finished workdir reloads its final weights without training
    again = PixelBackend(TINY, seed=0)
    r3 = train_denoiser(again, images, labels, _cfg(), tmp_path / "full", "cpu", 3)
    assert r3.finished and r3.losses == [] and torch.equal(again.class_tokens, full.class_tokens)
    with pytest.raises(TailsynthError, match="another config"):
        train_denoiser(PixelBackend(TINY, seed=0), images, labels, _cfg(lr=1e-2), tmp_path / "full", "cpu", 3)


def test_denoiser_progress_bar_follows_tailsynth_progress(tmp_path, monkeypatch, capsys):
    """``progress=True`` draws the bar, unless TAILSYNTH_PROGRESS=0 (logs written to files stay readable)."""
    images, labels = _data()
    for env, expect_bar in (("0", False), ("1", True)):
        monkeypatch.setenv("TAILSYNTH_PROGRESS", env)
        train_denoiser(PixelBackend(TINY, seed=0), images, labels, _cfg(steps=2, progress=True),
                       tmp_path / env, "cpu", 3)
        assert ("denoiser" in capsys.readouterr().err) == expect_bar, env


def test_progress_bars_only_on_a_terminal_unless_forced(monkeypatch):
    """Unset TAILSYNTH_PROGRESS: bars iff stderr is a terminal (a log file gets the runner's one line per
    stage); '1' / '0' force them on / off."""
    import io
    import sys

    from tailsynth.utils import progress_enabled

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("TAILSYNTH_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled() is False
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress_enabled() is True
    monkeypatch.setenv("TAILSYNTH_PROGRESS", "0")
    assert progress_enabled() is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("TAILSYNTH_PROGRESS", "1")
    assert progress_enabled() is True


def test_v_prediction_converts_to_eps_and_trains_against_v(tmp_path):
    """prediction: v (Salimans & Ho 2022): eps() = sqrt(a) v + sqrt(1-a) x_t, x0-hat = sqrt(a) x_t - sqrt(1-a) v,
    the training target is v = sqrt(a) eps - sqrt(1-a) x0; an eps-model is unchanged (target = the noise)."""
    from tailsynth.diffusion.samplers import predict_x0
    from tailsynth.diffusion.train import prediction_and_target

    vb = PixelBackend({**TINY, "prediction": "v"}, seed=0).eval()
    eb = PixelBackend(TINY, seed=0).eval()
    assert vb.prediction == "v" and eb.prediction == "epsilon"
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([951, 20])
    cond = vb.encode_condition(torch.tensor([0, 2]))
    a = vb.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        v, e = vb.model_output(x_t, t, cond), vb.eps(x_t, t, cond)
        assert torch.allclose(e, a.sqrt() * v + (1 - a).sqrt() * x_t, atol=1e-6)
        for i in range(2):  # Tweedie x0-hat through the eps form equals the direct v formula
            x0 = predict_x0(x_t[i:i + 1], e[i:i + 1], a[i])
            assert torch.allclose(x0, a[i].sqrt() * x_t[i:i + 1] - (1 - a[i]).sqrt() * v[i:i + 1], atol=1e-4)
        assert torch.equal(eb.eps(x_t, t, cond), eb.model_output(x_t, t, cond))
        z0, noise = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(2, 3, 16, 16, generator=g)
        pred, target = prediction_and_target(vb, z0, noise, t, cond, vb.alphas_cumprod)
        assert torch.allclose(target, a.sqrt() * noise - (1 - a).sqrt() * z0)
        assert torch.equal(pred, vb.model_output(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, cond))
        pred, target = prediction_and_target(eb, z0, noise, t, cond, eb.alphas_cumprod)
        assert torch.equal(target, noise)
    # trains, and the setting survives save/load
    images, labels = _data()
    r = train_denoiser(vb, images, labels, _cfg(), tmp_path / "v", "cpu", 3)
    assert r.finished and all(np.isfinite(r.losses))
    vb.save_pretrained(tmp_path / "model")
    assert PixelBackend.from_pretrained(tmp_path / "model").prediction == "v"
    with pytest.raises(TailsynthError, match="prediction"):
        build_backend("pixel", {**TINY, "prediction": "x0"})


def test_save_pretrained_round_trip_and_input_checks(tmp_path):
    b = PixelBackend(TINY, seed=1)
    b.add_classes(["tail"])
    b.save_pretrained(tmp_path / "m")
    c = PixelBackend.from_pretrained(tmp_path / "m")
    assert c.class_names == b.class_names and torch.equal(c.token_table(), b.token_table())
    images, labels = _data()
    with pytest.raises(TailsynthError, match="uint8"):
        train_denoiser(b, images.astype(np.float32), labels, _cfg(), tmp_path / "w", "cpu", 0)
    with pytest.raises(TailsynthError, match="built for 16 px"):
        train_denoiser(b, np.zeros((2, 8, 8, 3), np.uint8), [0, 1], _cfg(), tmp_path / "w", "cpu", 0)
    with pytest.raises(TailsynthError, match="labels must be in"):
        train_denoiser(b, images, labels + 5, _cfg(), tmp_path / "w", "cpu", 0)


def test_centred_data_encodes_decodes_and_clips_per_channel(tmp_path):
    mean = (0.8, 0.6, 0.3)
    b = PixelBackend({**TINY, "data_mean": mean}, seed=0).eval()
    x = torch.rand(2, 3, 16, 16)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(b.encode(x), 2 * (x - m)) and torch.allclose(b.decode(b.encode(x)), x, atol=1e-6)
    assert torch.allclose(b.encode(m.expand(1, 3, 16, 16)), torch.zeros(1, 3, 16, 16))
    lo, hi = b.clip_x0
    assert torch.allclose(lo.view(3), torch.tensor([-1.6, -1.2, -0.6])) and torch.allclose(hi.view(3), torch.tensor([0.4, 0.8, 1.4]))
    # the sampler clips x0-hat to [encode(0), encode(1)] per channel: an eps of huge magnitude pins it to the bounds
    from tailsynth.diffusion.samplers import ddim_update
    a_t, a_prev = b.alphas_cumprod[900], b.alphas_cumprod[850]
    x_t = torch.zeros(1, 3, 4, 4)
    _, x0 = ddim_update(x_t, torch.full((1, 3, 4, 4), -1e3), a_t, a_prev, clip_x0=b.clip_x0)
    assert torch.allclose(x0, hi.expand_as(x0)) and torch.allclose(b.decode(x0), torch.ones_like(x0))
    _, x0 = ddim_update(x_t, torch.full((1, 3, 4, 4), 1e3), a_t, a_prev, clip_x0=b.clip_x0)
    assert torch.allclose(x0, lo.expand_as(x0)) and torch.allclose(b.decode(x0), torch.zeros_like(x0))
    # uncentred: the [-1, 1] clip and the original arithmetic
    plain = PixelBackend(TINY, seed=0)
    assert plain.clip_x0 is True and torch.equal(plain.encode(x), x * 2.0 - 1.0)
    # kept through save/load
    b.save_pretrained(tmp_path / "m")
    c = PixelBackend.from_pretrained(tmp_path / "m")
    assert c.cfg.data_mean == mean and torch.equal(c.clip_x0[0], lo)
    with pytest.raises(TailsynthError, match="data_mean needs 3 values"):
        PixelBackend({**TINY, "data_mean": (0.5, 0.5)})
    with pytest.raises(TailsynthError, match="data_mean needs 3 values"):
        PixelBackend({**TINY, "data_mean": (0.5, 0.5, 1.5)})
