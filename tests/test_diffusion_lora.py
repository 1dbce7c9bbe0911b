"""LoRA on the tail (pixel and tiny Stable Diffusion): only adapters train, save/load, merge; SD loading."""
import numpy as np
import pytest
import torch

from tailsynth.diffusion import (DiffusionBackend, LoraAdaptConfig, PixelBackend, SDBackend,
                                 adapt_lora, build_tiny_sd_pipeline, ddim_sample, initial_noise, load_lora,
                                 merge_and_unload)
from tailsynth.errors import TailsynthError

TINY = dict(num_classes=3, image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8, tokens_per_class=2)


def _lora_cfg(target="cross_attention", steps=3):
    return LoraAdaptConfig(target=target, train=dict(steps=steps, batch_size=4, lr=5e-2, checkpoint_every=10,
                                                     progress=False))


def test_lora_config_defaults_follow_logex_table4():
    cfg = LoraAdaptConfig(train={"steps": 10})  # a partial override keeps the LoRA defaults
    assert (cfg.rank, cfg.target, cfg.train.lr, cfg.train.lr_schedule) == (4, "cross_attention", 1e-4, "cosine")
    assert cfg.train.steps == 10 and cfg.train.cond_dropout == 0.0 and cfg.train.ema_decay == 0.0 and cfg.train.hflip


def _tail(n=6, size=16):
    rng = np.random.RandomState(1)
    return rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2


def test_pixel_lora_trains_only_adapters_and_tokens(tmp_path):
    b = PixelBackend(TINY, seed=0)
    base = {k: v.clone() for k, v in b.state_dict().items()}
    images, labels = _tail()
    res = adapt_lora(b, images, labels, ["tailA", "tailB"], _lora_cfg(), tmp_path / "w", "cpu", generator_seed=0)
    assert res.class_ids == [3, 4] and res.train.finished and b.class_names[3:] == ["tailA", "tailB"]
    state = b.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and all(".attn2." in k for k in lora_keys)  # cross-attention only by default
    for k, v in base.items():  # base weights bit-identical (peft renames a wrapped Linear's weight)
        k2 = k if k in state else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(state[k2], v), k
    # adapters moved (B starts at zero) and tail tokens left their mean-of-head initialisation
    assert any(state[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)
    assert not torch.allclose(b.extra_tokens[0], base["class_tokens"][1:].mean(0))
    assert (tmp_path / "w" / "lora" / "adapter.safetensors").is_file()

    # save/load round trip: identical eps; merged model: same eps (allclose)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 700])
    with torch.no_grad():
        ref = b.eps(x, t, b.encode_condition(torch.tensor([3, 4])))
    fresh = PixelBackend(TINY, seed=0)
    assert load_lora(fresh, tmp_path / "w" / "lora") == [3, 4]
    with torch.no_grad():
        assert torch.equal(fresh.eps(x, t, fresh.encode_condition(torch.tensor([3, 4]))), ref)
        merge_and_unload(fresh)
        assert not any("lora_" in k for k in fresh.state_dict())
        assert torch.allclose(fresh.eps(x, t, fresh.encode_condition(torch.tensor([3, 4]))), ref, atol=1e-5)
    with pytest.raises(TailsynthError, match="no LoRA"):
        merge_and_unload(fresh)


def test_all_attention_option_and_bad_labels(tmp_path):
    b = PixelBackend(TINY, seed=0)
    images, labels = _tail(4)
    adapt_lora(b, images, labels, ["a", "b"], _lora_cfg("all_attention", steps=1), tmp_path / "w", "cpu", 0)
    keys = [k for k in b.state_dict() if "lora_A" in k]
    assert any(".attn1." in k for k in keys) and any(".attn2." in k for k in keys)
    with pytest.raises(TailsynthError, match="class_names"):
        adapt_lora(PixelBackend(TINY), images, labels + 2, ["a", "b"], _lora_cfg(), tmp_path / "x", "cpu", 0)
    with pytest.raises(TailsynthError, match=r"no training images: \['c'\]"):
        adapt_lora(PixelBackend(TINY), images, labels, ["a", "b", "c"], _lora_cfg(), tmp_path / "y", "cpu", 0)
    with pytest.raises(TailsynthError, match="divisible"):
        PixelBackend({**TINY, "image_size": 17})


def test_tiny_stable_diffusion_load_lora_and_sample(tmp_path):
    path = build_tiny_sd_pipeline(tmp_path / "sd")
    with pytest.raises(TailsynthError, match="not a local Stable Diffusion folder"):
        SDBackend({"path": str(tmp_path / "nothing")})
    sd = SDBackend({"path": str(path), "class_names": ["nevus", "vessels"]})
    assert isinstance(sd, DiffusionBackend)
    assert sd.scaling_factor == pytest.approx(0.18215) and sd.latent_shape(16) == (4, 8, 8)
    assert sd.prompts_for(torch.tensor([1])) == ["A histopathological slide from a patient with vessels"]
    cond = sd.encode_condition(torch.tensor([0, 1]))
    assert cond.shape == (2, 77, 32) and cond.dtype == torch.float32
    assert sd.null_condition(2).shape == (2, 77, 32)
    by_prompt = sd.encode_condition(prompts=["A histopathological slide from a patient with nevus"])
    assert torch.allclose(by_prompt, cond[:1])
    images, labels = _tail(4, 16)
    z = sd.encode(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255)
    assert z.shape == (4, 4, 8, 8) and sd.decode(z).shape == (4, 3, 16, 16)
    base = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    res = adapt_lora(sd, images, labels, ["sqcc", "bcc"], _lora_cfg(steps=2), tmp_path / "w", "cpu", 0)
    assert res.class_ids == [2, 3] and sd.class_names[2:] == ["sqcc", "bcc"]
    state = sd.unet.state_dict()
    for k, v in base.items():
        k2 = k if k in state else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(state[k2], v), k
    trainable = {k for k, p in sd.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert any(p.abs().sum() > 0 for k, p in sd.named_parameters() if "lora_B" in k)
    with torch.no_grad():
        cond = sd.encode_condition(torch.tensor(res.class_ids))
        x_T = initial_noise((2, *sd.latent_shape(16)), torch.Generator().manual_seed(0))
        out = ddim_sample(sd.eps, x_T, cond, sd.null_condition(2), sd.alphas_cumprod, num_steps=2, guidance_scale=3.0)
        again = ddim_sample(sd.eps, x_T, cond, sd.null_condition(2), sd.alphas_cumprod, num_steps=2, guidance_scale=3.0)
        img = sd.decode(out.sample)
    assert torch.equal(out.sample, again.sample)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32 and 0 <= float(img.min()) <= float(img.max()) <= 1
    # reload the saved adapter on a fresh SD backend: same noise predictions
    fresh = SDBackend({"path": str(path), "class_names": ["nevus", "vessels"]})
    load_lora(fresh, tmp_path / "w" / "lora")
    t = torch.tensor([500, 20])
    with torch.no_grad():
        assert torch.equal(fresh.eps(x_T, t, cond), sd.eps(x_T, t, cond))


def test_tail_tokens_get_their_own_learning_rate(tmp_path):
    """Adam's first step moves every parameter with a non-zero gradient by lr (m/sqrt(v) = sign(g)):
    LoRA B by train.lr, the new tail tokens by token_lr (no weight decay on them)."""
    b = PixelBackend(TINY, seed=0)
    images, labels = _tail()
    cfg = LoraAdaptConfig(token_lr=3e-2, train=dict(steps=1, batch_size=4, lr=2e-3, lr_schedule="constant",
                                                    grad_clip=0.0, checkpoint_every=10, progress=False))
    start = b.class_tokens[1:].detach().mean(0)  # new tokens start at the mean of the base tokens
    adapt_lora(b, images, labels, ["tailA", "tailB"], cfg, tmp_path / "w", "cpu", generator_seed=0)
    token_step = (b.extra_tokens.detach() - start).abs()
    assert token_step.max().item() == pytest.approx(3e-2, rel=1e-3)
    lora_b = [p.detach().abs().max().item() for k, p in b.named_parameters() if "lora_B" in k]
    assert max(lora_b) == pytest.approx(2e-3, rel=1e-3)


def test_attention_and_conv_target_adapts_resnet_convolutions_and_round_trips(tmp_path):
    """LoCon: LoRA on both 3x3 convs of every ResNet block too; a Conv2d's A is (r, d_in, 3, 3), B (d_out, r, 1,
    1); the model starts equal to the base, and the saved adapter reloads to identical outputs."""
    b = PixelBackend(TINY, seed=0)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 700])
    images, labels = _tail(4)
    cfg = LoraAdaptConfig(target="attention_and_conv", rank=2,
                          train=dict(steps=2, batch_size=4, lr=5e-2, checkpoint_every=10, progress=False))
    adapt_lora(b, images, labels, ["a", "b"], cfg, tmp_path / "w", "cpu", 0)
    state = b.state_dict()
    conv_a = [k for k in state if "lora_A" in k and ".resnets." in k]
    n_resnets = sum(1 for n, _ in b.named_modules() if n.endswith(".conv1") and ".resnets." in n)
    assert len(conv_a) == 2 * n_resnets and n_resnets == 8  # conv1 + conv2 of each (no shortcut, no resampler)
    a = state["unet.down_blocks.0.resnets.0.conv1.lora_A.default.weight"]
    bb = state["unet.down_blocks.0.resnets.0.conv1.lora_B.default.weight"]
    assert a.shape == (2, 8, 3, 3) and bb.shape == (8, 2, 1, 1) and bb.abs().sum() > 0
    with torch.no_grad():
        ref = b.eps(x, t, b.encode_condition(torch.tensor([3, 4])))
    fresh = PixelBackend(TINY, seed=0)
    load_lora(fresh, tmp_path / "w" / "lora")
    with torch.no_grad():
        assert torch.equal(fresh.eps(x, t, fresh.encode_condition(torch.tensor([3, 4]))), ref)
        base_out = PixelBackend(TINY, seed=0).eps(x, t, fresh.encode_condition(torch.tensor([0, 1])))
        merge_and_unload(fresh)
        assert torch.allclose(fresh.eps(x, t, fresh.encode_condition(torch.tensor([3, 4]))), ref, atol=1e-5)
        assert not torch.allclose(fresh.eps(x, t, fresh.encode_condition(torch.tensor([0, 1]))), base_out,
                                  atol=1e-5)  # the conv updates change the head classes' output too
