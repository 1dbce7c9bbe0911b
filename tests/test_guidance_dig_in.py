"""DiG-IN guidance (LoGex §3 step 3) and the classifier guide on a tiny pixel backend at 16 px."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailsynth.diffusion import LoraAdaptConfig, PixelBackend, attach_lora, ddim_sample, initial_noise
from tailsynth.diffusion.guidance import (ClassifierGuide, DigInConfig, PerSampleAdam, dig_in, dig_in_reference,
                                          last_k_weights)
from tailsynth.diffusion.guidance.dig_in import reproject_to_norm, evaluate
from tailsynth.config import build_config
from tailsynth.errors import TailsynthError

from guidance_tiny import TINY, TinyClassifier


def _setup(n=3, seed=0, clip=False):
    backend = PixelBackend(TINY, seed=0).eval()
    # x0-clipping makes the chain non-smooth: a batch-dependent rounding difference of 1e-7 can flip a pixel
    # across the clip and Adam amplifies it, so the exact-equivalence tests run the smooth (unclipped) chain.
    backend.clip_x0 = clip
    guide = ClassifierGuide(TinyClassifier(), 16, 3)
    x_T = initial_noise((n, 3, 16, 16), torch.Generator().manual_seed(seed))
    ids = torch.arange(n) % 3
    return backend, guide, ids, backend.encode_condition(ids), backend.null_condition(n), x_T


CFG = dict(num_steps=4, max_opt_steps=3, lr_latent=0.05, lr_embed=0.05, checkpoint=False)


def test_classifier_guide_preprocessing_frozen_and_differentiable():
    model = TinyClassifier(in_channels=1).train()
    guide = ClassifierGuide(model, 8, 1, mode="bilinear")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    guide.train()
    assert not model.training  # stays in eval mode
    img = torch.rand(2, 3, 16, 16, requires_grad=True)
    gray = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    ref = F.interpolate(gray, size=(8, 8), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.allclose(guide.preprocess(img), ref, atol=1e-6)
    bicubic = F.interpolate(gray, size=(8, 8), mode="bicubic", align_corners=False, antialias=True) * 2 - 1
    assert torch.allclose(ClassifierGuide(model, 8, 1).preprocess(img), bicubic, atol=1e-6)  # the default
    guide(img).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0 and model.conv.weight.grad is None
    rgb = ClassifierGuide(TinyClassifier(), 16, 3).preprocess(torch.full((1, 1, 16, 16), 0.25))
    assert rgb.shape == (1, 3, 16, 16) and torch.allclose(rgb, torch.full_like(rgb, -0.5))
    with pytest.raises(TailsynthError, match="channels"):
        ClassifierGuide(model, 8, 2)


def test_last_k_weights_are_linear():
    assert last_k_weights(3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert sum(last_k_weights(5)) == pytest.approx(1.0)


def test_per_sample_adam_matches_torch_adam_and_slices_exactly():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 5, generator=g)
    grads = [torch.randn(3, 5, generator=g) for _ in range(4)]
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1)
    ours, adam = p0.clone(), PerSampleAdam(p0, 0.1, batch_dim=0)
    for k, gr in enumerate(grads):
        ref.grad = gr.clone()
        opt.step()
        adam.step(ours, gr, torch.full((3,), k + 1.0))
    assert torch.allclose(ours, ref.detach(), atol=1e-6)
    # drop sample 1 and add a fresh one: rows 0 and 2 continue as before, the new row starts at step 1
    adam.select(torch.tensor([0, 2]))
    adam.append(1)
    ours = torch.cat([ours[[0, 2]], torch.zeros(1, 5)])
    gr = torch.randn(3, 5, generator=g)
    ref.grad = torch.cat([gr[:1], torch.zeros(1, 5), gr[1:2]])
    opt.step()
    adam.step(ours, gr, torch.tensor([5.0, 5.0, 1.0]))
    assert torch.allclose(ours[:2], ref.detach()[[0, 2]], atol=1e-6)
    assert torch.allclose(ours[2], -0.1 * torch.sign(gr[2]), atol=1e-5)  # first Adam step = -lr * sign(g)


def test_reprojection_keeps_initial_norm():
    x = torch.randn(4, 3, 2, 2)
    norm0 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    reproject_to_norm(x, norm0)
    assert torch.allclose(x.flatten(1).norm(dim=1), norm0, atol=1e-5)


def test_loss_decreases_confidence_rises_and_x_T_stays_on_its_shell():
    backend, guide, ids, cond, uncond, x_T = _setup(clip=True)  # as the pixel backend samples
    targets = torch.tensor([0, 1, 2])
    res = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**CFG, threshold=1.1))
    start = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**{**CFG, "max_opt_steps": 0}))
    assert torch.all(res.trace[-1] > res.trace[0] + 0.02), res.trace  # weighted confidence up = loss down
    assert torch.all(res.confidence > start.confidence + 0.02)
    assert res.opt_steps.tolist() == [3, 3, 3] and start.opt_steps.tolist() == [0, 0, 0]
    plain = ddim_sample(backend.eps, x_T, cond.detach(), uncond, backend.alphas_cumprod, 4, 3.0, clip_x0=True).sample
    assert torch.allclose(start.images, backend.decode(plain), atol=1e-6)  # iterate 0 = unguided DDIM
    assert torch.allclose(res.x_T.flatten(1).norm(dim=1), x_T.flatten(1).norm(dim=1), rtol=1e-5)
    assert (res.x_T - x_T).abs().max() > 1e-3
    again = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**CFG, threshold=1.1))
    assert torch.equal(again.images, res.images) and torch.equal(again.confidence, res.confidence)
@pytest.mark.slow
def test_gradients_reach_only_x_T_and_deltas_with_lora():
    backend, guide, ids, cond, uncond, x_T = _setup(n=2)
    lora = attach_lora(backend, LoraAdaptConfig(rank=2))
    for p in lora.values():
        torch.nn.init.normal_(p, std=0.1)  # non-zero B so the adapters act
    before = {k: v.clone() for k, v in backend.state_dict().items()}
    clf_before = {k: v.clone() for k, v in guide.state_dict().items()}
    cfg = DigInConfig(**CFG, threshold=1.1)
    x = x_T.clone().requires_grad_(True)
    d_c = torch.zeros(4, 2, *cond.shape[1:], requires_grad=True)
    d_u = torch.zeros(4, 2, *uncond.shape[1:], requires_grad=True)
    from tailsynth.diffusion.guidance.common import frozen
    with frozen(backend, guide):
        conf = evaluate(backend, guide, x, [cond.detach() + d_c[s] for s in range(4)],
                        [uncond.detach() + d_u[s] for s in range(4)], torch.tensor([0, 1]), cfg, False, False).weighted
        (-conf.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, d_c, d_u))
    assert all(p.grad is None for p in list(backend.parameters()) + list(guide.parameters()))
    assert all(p.requires_grad for p in lora.values())  # flags restored after guidance
    dig_in(backend, guide, torch.tensor([0, 1]), cond, uncond, x_T, cfg)
    dig_in_reference(backend, guide, torch.tensor([0, 1]), cond, uncond, x_T, cfg)
    assert all(p.grad is None for p in list(backend.parameters()) + list(guide.parameters()))
    assert all(torch.equal(v, backend.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, guide.state_dict()[k]) for k, v in clf_before.items())


def test_checkpointing_gives_the_same_gradients():
    backend, guide, ids, cond, uncond, x_T = _setup(n=2)
    cfg = DigInConfig(**CFG)
    grads = []
    for ckpt in (False, True):
        x = x_T.clone().requires_grad_(True)
        d_c = torch.zeros(4, 2, *cond.shape[1:], requires_grad=True)
        d_u = torch.zeros(4, 2, *uncond.shape[1:], requires_grad=True)
        conf = evaluate(backend, guide, x, [cond.detach() + d_c[s] for s in range(4)],
                        [uncond.detach() + d_u[s] for s in range(4)], torch.tensor([1, 2]), cfg, ckpt, False).weighted
        grads.append(torch.autograd.grad(conf.sum(), [x, d_c, d_u]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
@pytest.mark.slow
def test_batched_equals_reference_without_early_exit():
    backend, guide, ids, cond, uncond, x_T = _setup()
    targets = torch.tensor([2, 0, 1])
    cfg = DigInConfig(**CFG, threshold=1.1, batch_size=3)
    ours = dig_in(backend, guide, targets, cond, uncond, x_T, cfg)
    ref = dig_in_reference(backend, guide, targets, cond, uncond, x_T, cfg)
    assert torch.allclose(ours.images, ref.images, atol=1e-4)
    assert torch.allclose(ours.confidence, ref.confidence, atol=1e-5)
    assert torch.allclose(ours.trace, ref.trace, atol=1e-5) and torch.equal(ours.opt_steps, ref.opt_steps)
@pytest.mark.slow
def test_per_sample_results_do_not_depend_on_batch_composition():
    backend, guide, ids, cond, uncond, x_T = _setup(n=5, seed=3)
    targets = torch.tensor([0, 1, 2, 3, 0])
    probe = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**CFG, threshold=1.1, batch_size=5))
    thr = float(probe.trace[1:].max(dim=0).values.median())  # some samples stop early, others run to the end
    cfg = DigInConfig(**CFG, threshold=thr, batch_size=2)
    ours = dig_in(backend, guide, targets, cond, uncond, x_T, cfg)
    assert len(set(ours.opt_steps.tolist())) > 1  # samples left at different steps; the batch was refilled
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = dig_in(backend, guide, targets[perm], cond[perm], uncond[perm], x_T[perm],
                      DigInConfig(**CFG, threshold=thr, batch_size=3))
    ref = dig_in_reference(backend, guide, targets, cond, uncond, x_T, cfg)
    for other, order in ((ref, torch.arange(5)), (shuffled, perm)):
        assert torch.equal(other.opt_steps, ours.opt_steps[order])
        assert torch.allclose(other.images, ours.images[order], atol=1e-4)
        assert torch.allclose(other.confidence, ours.confidence[order], atol=1e-5)
    assert torch.equal(ours.accepted, ours.confidence >= thr)


def test_bad_inputs_raise():
    backend, guide, ids, cond, uncond, x_T = _setup(n=2)
    with pytest.raises(TailsynthError, match="target class out of range"):
        dig_in(backend, guide, torch.tensor([0, 9]), cond, uncond, x_T, DigInConfig(**CFG))
    with pytest.raises(TailsynthError, match="3 rows for 2 samples"):
        dig_in(backend, guide, torch.tensor([0, 1]), torch.cat([cond, cond[:1]]), uncond, x_T, DigInConfig(**CFG))
    with pytest.raises(TailsynthError, match="last_k"):
        build_config(DigInConfig, {"num_steps": 2, "last_k": 3}, "dig_in")


def test_guide_sees_the_image_the_classifier_later_trains_on(tmp_path):
    """A 64-px generated image: the guide's resize to 16 px equals decoding its saved PNG at 16 px (the
    training read-back), within PNG rounding; bilinear without antialiasing does not."""
    from PIL import Image

    from tailsynth.data.decode import decode_file
    from tailsynth.training.augment import to_float
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")
    image = (smooth + 0.3 * torch.rand(1, 3, 64, 64, generator=g)).clamp(0, 1)  # structure + fine noise
    arr = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr, "RGB").save(tmp_path / "x.png")
    read_back = to_float(torch.from_numpy(decode_file(tmp_path / "x.png", 16, 3).copy()[None]))
    quantised = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    levels = lambda guide: (guide.preprocess(quantised) - read_back).abs() * 255 / 2  # noqa: E731  (of 255)
    bicubic = levels(ClassifierGuide(TinyClassifier(), 16, 3))
    assert bicubic.max() < 4 and bicubic.mean() < 0.5  # PIL rounds its result to uint8
    bilinear = levels(ClassifierGuide(TinyClassifier(), 16, 3, mode="bilinear"))
    assert bilinear.max() > 20 and bilinear.mean() > 5


def test_the_objective_recomputed_from_the_sampler_and_the_guide():
    """DiG-IN's objective of the first iterate, written out here without evaluate(): the target softmax of the
    decoded x0-hats of the last 3 of 4 DDIM steps, weighted 1/6, 2/6, 3/6 (LoGex / DiG-IN last-k weighting)."""
    backend, guide, ids, cond, uncond, x_T = _setup(n=2)
    targets = torch.tensor([1, 2])
    res = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**CFG, threshold=1.1, last_k=3))
    with torch.no_grad():
        out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=4, guidance_scale=3.0,
                          return_x0_hats=True, clip_x0=backend.clip_x0)
        probs = [guide(backend.decode(x0)).softmax(1)[torch.arange(2), targets] for x0 in out.x0_hats]
        expected = probs[1] / 6 + 2 * probs[2] / 6 + 3 * probs[3] / 6
    assert torch.allclose(res.trace[0], expected, atol=1e-6)
    assert bool((res.trace[-1] > res.trace[0]).all())  # and the optimisation raised it


def test_ensemble_guide_follows_the_mean_softmax_and_reaches_every_member():
    """Several auxiliaries: softmax(guide(x)) = mean of the members' softmaxes (guide logits = log mean p), the
    gradient w.r.t. the image is the mean of the members' probability gradients, one member = that member's
    logits unchanged, and members with other class counts are refused."""
    members = [TinyClassifier(seed=s) for s in (0, 1, 2)]
    ens, one = ClassifierGuide(members, 16, 3), ClassifierGuide(members[0], 16, 3)
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    want = torch.stack([ClassifierGuide(m, 16, 3)(x).softmax(1) for m in members]).mean(0)
    assert torch.allclose(ens(x).softmax(1), want, atol=1e-6)
    assert torch.equal(one(x), members[0].forward_head(members[0].forward_features(one.preprocess(x))))
    t = torch.tensor([0, 1, 3])
    (g_ens,) = torch.autograd.grad(ens.target_prob(x, t).sum(), x)
    parts = [torch.autograd.grad(ClassifierGuide(m, 16, 3).target_prob(x, t).sum(), x)[0] for m in members]
    assert torch.allclose(g_ens, torch.stack(parts).mean(0), atol=1e-6)
    assert all(not p.requires_grad for p in ens.parameters())
    with pytest.raises(TailsynthError, match="class counts"):
        ClassifierGuide([TinyClassifier(num_classes=4), TinyClassifier(num_classes=5)], 16, 3)


def test_cpu_bf16_autocast_only_where_the_cpu_has_native_bf16(monkeypatch):
    """``cpu_bf16`` runs the chain under bf16 autocast on a CPU with native bf16 (close to float32, not equal),
    is float32 (bit-identical) where the CPU lacks it, and the faithful reference stays float32 either way."""
    from tailsynth.diffusion.guidance import common
    backend, guide, ids, cond, uncond, x_T = _setup()
    targets = torch.tensor([2, 0, 1])
    cfg = DigInConfig(**CFG, threshold=1.1, batch_size=3)
    fp32 = dig_in(backend, guide, targets, cond, uncond, x_T, cfg)
    half_cfg = cfg.model_copy(update={"cpu_bf16": True})
    with common.autocast_for(torch.device("cpu"), True, cpu=True):
        assert torch.is_autocast_enabled("cpu") == common.native_cpu_bf16()
    if common.native_cpu_bf16():
        half = dig_in(backend, guide, targets, cond, uncond, x_T, half_cfg)
        diff = float((half.images - fp32.images).abs().mean())  # bf16's 8-bit mantissa: a few pixels move a lot
        assert 0 < diff < 0.05 and float((half.confidence - fp32.confidence).abs().max()) < 0.05
    ref = dig_in_reference(backend, guide, targets, cond, uncond, x_T, half_cfg)
    assert torch.allclose(ref.images, fp32.images, atol=1e-4)  # the reference ignores cpu_bf16
    monkeypatch.setattr(common, "native_cpu_bf16", lambda: False)
    assert torch.equal(dig_in(backend, guide, targets, cond, uncond, x_T, half_cfg).images, fp32.images)


def test_augmented_views_are_seeded_crops_inside_the_image_with_the_stated_noise():
    """DiG-IN's cutouts: a horizontal ramp image (bilinear sampling of a linear function is exact) shows each view
    is a crop of side s in [min_scale, 1] lying inside the image; min_scale 1 without noise is the image itself;
    the noise has the stated standard deviation; a sample's views depend only on its own seed."""
    guide = ClassifierGuide(TinyClassifier(), 16, 3)
    ramp = ((torch.arange(16).float() + 0.5) / 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)  # pixel centre x in (0, 1)
    views = guide.views(ramp, torch.tensor([7]), cutouts=64, min_scale=0.6, noise=0.0)
    assert views.shape == (64, 3, 16, 16)
    row = views[:, 0, 8]  # (64, 16): a ramp of slope s / 16 per pixel starting at the crop's left edge
    slope = (row[:, 12] - row[:, 3]) / 9 * 16
    assert torch.allclose(row[:, 3:13], row[:, 3:4] + slope.view(-1, 1) * torch.arange(10) / 16, atol=1e-5)
    assert bool((slope >= 0.6 - 1e-5).all() and (slope <= 1 + 1e-5).all()) and slope.std() > 0.05
    left = row[:, 3] - 3.5 * slope / 16  # x of the crop's left edge (in units of the image width)
    assert bool((left >= -1e-5).all() and (left + slope <= 1 + 1e-5).all())
    assert torch.allclose(views[:, 0], views[:, 0, 8:9].expand(-1, 16, -1).contiguous(), atol=1e-6)  # square crop
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    same = guide.views(img, torch.tensor([3, 4]), cutouts=4, min_scale=1.0, noise=0.0)
    assert torch.allclose(same, img.repeat_interleave(4, 0), atol=1e-6)
    t = torch.tensor([1, 2])
    assert torch.allclose(guide.augmented_target_prob(img, t, torch.tensor([3, 4]), 4, 1.0, 0.0),
                          guide.target_prob(img, t), atol=1e-6)
    noisy = guide.views(img, torch.tensor([3, 4]), cutouts=32, min_scale=1.0, noise=0.1) - img.repeat_interleave(32, 0)
    assert abs(float(noisy.std()) - 0.1) < 0.003 and abs(float(noisy.mean())) < 0.003
    pair = guide.views(img, torch.tensor([3, 4]), cutouts=4, min_scale=0.5, noise=0.05)
    alone = guide.views(img[1:], torch.tensor([4]), cutouts=4, min_scale=0.5, noise=0.05)
    assert torch.equal(pair[4:], alone)
    assert not torch.allclose(alone, guide.views(img[1:], torch.tensor([5]), cutouts=4, min_scale=0.5, noise=0.05))
    with pytest.raises(TailsynthError, match="min_scale"):
        guide.views(img, torch.tensor([3, 4]), cutouts=4, min_scale=0.0, noise=0.0)
    with pytest.raises(TailsynthError, match="cutout"):
        build_config(DigInConfig, {"cutouts": -1}, "dig_in")


@pytest.mark.slow
def test_cutouts_change_the_objective_and_batched_still_equals_reference():
    """With cutouts the guided confidence is the mean over seeded augmented views; batched and batch-1 DiG-IN see
    the same views (per-sample seeds), so they still agree; without a generator the views use base seed 0."""
    backend, guide, ids, cond, uncond, x_T = _setup()
    targets = torch.tensor([2, 0, 1])
    cfg = DigInConfig(**CFG, threshold=1.1, batch_size=2, cutouts=4, cutout_min_scale=0.6, cutout_noise=0.02)
    ours = dig_in(backend, guide, targets, cond, uncond, x_T, cfg, torch.Generator().manual_seed(5))
    ref = dig_in_reference(backend, guide, targets, cond, uncond, x_T, cfg, torch.Generator().manual_seed(5))
    assert torch.allclose(ours.images, ref.images, atol=1e-4)
    assert torch.allclose(ours.trace, ref.trace, atol=1e-5)
    plain = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**CFG, threshold=1.1, batch_size=2))
    assert not torch.allclose(ours.trace[0], plain.trace[0], atol=1e-4)
    other = dig_in(backend, guide, targets, cond, uncond, x_T, cfg, torch.Generator().manual_seed(6))
    assert not torch.allclose(ours.trace[0], other.trace[0], atol=1e-6)


def test_prototypes_and_their_cosine_distance_by_hand():
    """prototypes: per member and class the mean of the L2-normalised pooled features of the real images (zero row
    for a class without images); prototype_distance: 1 - cos(features, prototype of the target), mean over members."""
    members = [TinyClassifier(seed=s) for s in (0, 1)]
    guide = ClassifierGuide(members, 16, 3)
    real = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 0, 2, 2])
    proto = guide.prototypes(real, labels, 4, batch_size=2)  # batches of 2 give the same means
    assert proto.shape == (2, 4, 24)
    for m, model in enumerate(members):
        f = F.normalize(model.forward_features(real * 2 - 1), dim=1)
        assert torch.allclose(proto[m, 0], f[[0, 2]].mean(0), atol=1e-6)
        assert torch.allclose(proto[m, 2], f[[1, 3, 4]].mean(0), atol=1e-6)
        assert torch.equal(proto[m, 1], torch.zeros(24)) and torch.equal(proto[m, 3], torch.zeros(24))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    t = torch.tensor([2, 0, 2])
    want = torch.stack([1 - F.cosine_similarity(mod.forward_features(x * 2 - 1), proto[m, t], dim=1)
                        for m, mod in enumerate(members)]).mean(0)
    got = guide.prototype_distance(x, t, proto)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(guide.prototype_distance(real[[0]], torch.tensor([0]), guide.prototypes(real[[0]],
                          torch.tensor([0]), 4)), torch.zeros(1), atol=1e-6)  # an image is at its own prototype
    (g,) = torch.autograd.grad(got.sum(), x)
    assert g.abs().sum() > 0
    with pytest.raises(TailsynthError, match="labels must lie"):
        guide.prototypes(real, torch.tensor([0, 1, 2, 3, 4]), 4)


def test_realism_term_enters_the_objective_not_the_stopping_confidence():
    """objective = weighted confidence - realism_weight x (sum_j w_j prototype distance of x0-hat j), recomputed
    from the sampler and the guide; the weighted confidence (the stopping rule's) is the realism-free one."""
    backend, guide, ids, cond, uncond, x_T = _setup(n=2)
    targets = torch.tensor([1, 2])
    real = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    proto = guide.prototypes(real, torch.tensor([1, 2, 1, 2, 1, 2]), 4)
    cfg = DigInConfig(**CFG, last_k=3, realism_weight=0.7)
    with torch.no_grad():
        ev = evaluate(backend, guide, x_T, [cond] * 4, [uncond] * 4, targets, cfg, False, False, prototypes=proto)
        out = ddim_sample(backend.eps, x_T, cond, uncond, backend.alphas_cumprod, num_steps=4, guidance_scale=3.0,
                          return_x0_hats=True, clip_x0=backend.clip_x0)
        imgs = [backend.decode(x0) for x0 in out.x0_hats[1:]]
        conf = sum(w * guide.target_prob(i, targets) for w, i in zip((1 / 6, 2 / 6, 3 / 6), imgs))
        dist = sum(w * guide.prototype_distance(i, targets, proto) for w, i in zip((1 / 6, 2 / 6, 3 / 6), imgs))
    assert torch.allclose(ev.weighted, conf, atol=1e-6)
    assert torch.allclose(ev.objective, conf - 0.7 * dist, atol=1e-6) and bool((dist > 0).all())
    with pytest.raises(TailsynthError, match="prototypes"):
        evaluate(backend, guide, x_T, [cond] * 4, [uncond] * 4, targets, cfg, False, False)
    with pytest.raises(ValueError, match="realism_weight"):
        DigInConfig(realism_weight=-0.1)


def test_realism_term_pulls_the_images_toward_their_class_prototype():
    """The same x_T, never stopping (threshold above 1): with the realism term the kept images end nearer their
    class prototype than without it, and the batched loop equals the batch-1 reference with it on."""
    backend, guide, ids, cond, uncond, x_T = _setup(n=3)
    targets = torch.tensor([1, 2, 1])
    real = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    proto = guide.prototypes(real, torch.tensor([1, 2, 1, 2, 1, 2]), 4)
    base = dict(CFG, threshold=1.1, max_opt_steps=6, batch_size=3)
    plain = dig_in(backend, guide, targets, cond, uncond, x_T, DigInConfig(**base))
    real_cfg = DigInConfig(**base, realism_weight=20.0)
    pulled = dig_in(backend, guide, targets, cond, uncond, x_T, real_cfg, prototypes=proto)
    with torch.no_grad():
        d_plain = guide.prototype_distance(plain.images, targets, proto)
        d_pulled = guide.prototype_distance(pulled.images, targets, proto)
    assert float(d_pulled.mean()) < float(d_plain.mean())
    short = DigInConfig(**dict(base, max_opt_steps=3), realism_weight=20.0)  # as the batched-vs-reference test
    ours = dig_in(backend, guide, targets, cond, uncond, x_T, short, prototypes=proto)
    ref = dig_in_reference(backend, guide, targets, cond, uncond, x_T, short, prototypes=proto)
    assert torch.allclose(ours.images, ref.images, atol=1e-4) and torch.allclose(ours.trace, ref.trace, atol=1e-5)
