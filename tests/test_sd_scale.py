"""The paper-scale path at real size on a CPU (marker ``sd_scale``; ``.ci/run`` runs it as its second step): Stable
Diffusion 1.4's architectures with random weights (the session's folder, ``conftest.sd14_random``) and a ResNet-50 in
torchvision's layout. Each test is the smallest count that keeps a code path of pbc-lt-paper: one DDIM step where the
chain's length does not matter, one Adam step, one LoRA step, two images. Weights are random, so the numbers checked
are the ones that do not depend on training: shapes, dtypes, norms, closed forms, the optimiser's first step."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tailsynth.diffusion import LoraAdaptConfig, LoraTrainConfig, SDBackend, adapt_lora, initial_noise, sample_images
from tailsynth.diffusion.guidance import ClassifierGuide, DigInConfig, dig_in
from tailsynth.minority import MinorityScoreConfig, minority_scores, score_timestep
from tailsynth.models import create_model
from tailsynth.models.pretrained import IMAGENET_NORM, load_backbone, write_random_backbone

pytestmark = pytest.mark.sd_scale
NAMES = ["neutrophil", "basophil"]


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    """These tests measure nothing bit for bit: use the CI machine's two cores (conftest pins one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, torch.get_num_threads() if before > 1 else 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd(sd14_random):
    return SDBackend({"path": str(sd14_random), "class_names": NAMES})


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A ResNet-50 with the ImageNet stem for 8 classes, its backbone from a torchvision-layout file, ImageNet input
    normalisation (as ``classifier.pretrained`` builds it)."""
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    write_random_backbone(path, "resnet50", seed=0)
    model = create_model("resnet50", num_classes=8, in_channels=3, width=1.0, small_input=False)
    assert load_backbone(model, path) == {"loaded": 318, "head_skipped": 2}
    model.set_input_norm(IMAGENET_NORM["mean"], IMAGENET_NORM["std"])
    return model.eval()


def cells(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """n smooth uint8 RGB images (N, size, size, 3): blobs, so resizing them is well defined."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small])


def test_guide_resizes_512_to_224_as_the_images_are_read_back(resnet):
    """The guide's differentiable resize (bicubic, antialiased) of a 512-px image and PIL's bicubic resize (how a saved
    synthetic image is read back for training, data/decode.py) agree to a few grey levels; gradients reach every
    pixel of the 512-px image through ResNet-50 at 224 px."""
    guide = ClassifierGuide(resnet, 224, 3)
    image = cells(1)
    x = torch.as_tensor(image).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    ours = guide.resize(x)[0].permute(1, 2, 0).detach().numpy() * 255
    pil = np.asarray(Image.fromarray(image[0]).resize((224, 224), Image.BICUBIC)).astype(np.float64)
    assert ours.shape == (224, 224, 3) and np.abs(ours - pil).mean() < 1.0 and np.abs(ours - pil).max() < 12
    (g,) = torch.autograd.grad(guide.target_prob(x, torch.tensor([5])).sum(), [x])
    assert g.shape == (1, 3, 512, 512) and torch.isfinite(g).all() and (g != 0).float().mean() > 0.99


def test_anchors_and_one_outlier_decoded_at_512(sd):
    """Dream-OOD / BOOD: the class name's CLIP token row (768-d) is the anchor; an outlier vector in its place
    conditions the UNet through the 77-token prompt, and one image is decoded at 512 px (1 DDIM step, CFG 7.5)."""
    anchors = sd.anchor_embeddings(torch.arange(2))
    table = sd.text_encoder.get_input_embeddings().weight
    ids = sd.name_token_ids("basophil")
    assert anchors.shape == (2, 768)
    torch.testing.assert_close(anchors[1], table[torch.tensor(ids)].float().mean(0))
    outlier = F.normalize(anchors[1:] + 0.03 * torch.randn(1, 768, generator=torch.Generator().manual_seed(0)))
    cond = sd.condition_from_anchor(outlier * anchors[1].norm(), torch.tensor([1]))
    plain = sd.encode_condition(torch.tensor([1]))
    assert cond.shape == plain.shape == (1, 77, 768)
    position = 1 + len(sd.tokenizer("A histopathological slide from a patient with",
                                    add_special_tokens=False).input_ids)
    torch.testing.assert_close(cond[:, :position], plain[:, :position])  # causal: the prefix is unchanged
    assert not torch.allclose(cond[:, position], plain[:, position])
    x_T = initial_noise((1, *sd.latent_shape(512)), torch.Generator().manual_seed(0))
    image = sample_images(sd, x_T, cond, sd.null_condition(1), num_steps=1, guidance_scale=7.5)
    assert image.shape == (1, 3, 512, 512) and image.min() >= 0 and image.max() <= 1


def test_minority_score_of_two_images_at_512(sd):
    """Minority scores (Eq. 16, class-conditional) of two 512-px images: VAE encode to 4 x 64 x 64, one noise draw at
    the step of the paper's noise level on SD's scaled-linear schedule (t = 840), and Corollary 1: without clipping
    (latents), l2 = (1 - abar_t) / abar_t ||eps_theta - eps||^2."""
    x = torch.as_tensor(cells(2, seed=1)).permute(0, 3, 1, 2).float().div(255)
    t = score_timestep(sd.schedule, 1000, None, sd.alphas_cumprod)
    assert (sd.schedule, t) == ("scaled_linear", 840)
    scores = minority_scores(sd, x, torch.tensor([0, 1]), MinorityScoreConfig(num_draws=1, batch_size=2))
    a = float(sd.alphas_cumprod[t])
    assert set(scores) == {"l2", "l1", "eps_sq"} and scores["l2"].shape == (2,)
    np.testing.assert_allclose(scores["l2"], (1 - a) / a * scores["eps_sq"], rtol=1e-4)


def test_dig_in_one_adam_step_on_one_image_at_512(sd, resnet):
    """DiG-IN through the checkpointed DDIM chain at 512 px (1 step, the loss on its x0-hat), the VAE decoder and the
    guide's resize into ResNet-50: one Adam step on x_T (4 x 64 x 64) and on the (77 x 768) cond / uncond deltas, x_T
    re-projected to its norm, the better of the two iterates kept."""
    guide = ClassifierGuide(resnet, 224, 3)
    cfg = DigInConfig(num_steps=1, last_k=1, max_opt_steps=1, threshold=1.0, checkpoint=True, batch_size=1)
    x_T = initial_noise((1, *sd.latent_shape(512)), torch.Generator().manual_seed(0))
    cond, uncond = sd.encode_condition(torch.tensor([1])), sd.null_condition(1)
    result = dig_in(sd, guide, torch.tensor([5]), cond, uncond, x_T, cfg, torch.Generator().manual_seed(0))
    assert result.images.shape == (1, 3, 512, 512) and result.opt_steps.tolist() == [1]
    assert result.trace.shape == (2, 1) and torch.isfinite(result.trace).all()
    torch.testing.assert_close(result.x_T.flatten(1).norm(dim=1), x_T.flatten(1).norm(dim=1))
    assert 0 <= float(result.confidence) <= 1 and not bool(result.accepted)
    with torch.no_grad():  # the kept image is the iterate whose clean confidence is the higher of the two
        assert float(result.confidence) == pytest.approx(float(guide.target_prob(result.images, torch.tensor([5]))),
                                                         abs=1e-5)


def test_resnet50_trains_one_step_at_224(resnet, tmp_path):
    """The classifier trainer on 224-px images: one epoch of one batch (4 images), AdamW, flips and rotation."""
    import copy

    from tailsynth.training import ArrayData, CriterionObjective, ImageBatches, TrainConfig, fit
    from tailsynth.losses import build_criterion
    model = copy.deepcopy(resnet).requires_grad_(True)  # the guide of the tests above froze the shared network
    before = model.head.weight.detach().clone()
    train = ArrayData(cells(4, 224, seed=2), np.array([0, 1, 4, 5]))
    cfg = TrainConfig(model="resnet50", epochs=1, batch_size=4, eval_batch_size=4, selection="last")
    summary = fit(model, CriterionObjective(build_criterion("ce", [1] * 8)), ImageBatches(train, cfg.augment), train,
                  cfg, tmp_path, seed=0, device=torch.device("cpu"), select=None, log=lambda _m: None)
    assert summary["best_epoch"] == 1 and len(summary["history"]) == 1
    step = (model.head.weight.detach() - before).abs()
    assert step.max() == pytest.approx(1e-4, rel=0.05)  # AdamW's first step moves a weight by lr (1e-4)


def test_lora_one_step_at_512(sd, tmp_path):
    """LoRA rank 4 on the cross-attention of the 860 M-parameter UNet, one step on one 512-px image: 16 attention
    blocks x (q, k, v, out) x (A, B); B starts at zero and Adam's first step moves every entry by the lr (1e-4)."""
    cfg = LoraAdaptConfig(rank=4, train=LoraTrainConfig(steps=1, batch_size=1, checkpoint_every=1))
    result = adapt_lora(sd, cells(1, seed=3), np.array([0]), ["basophil"], cfg, tmp_path, "cpu", 0)
    assert result.train.step == 1 and np.isfinite(result.train.losses).all()
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "lora" / "adapter.safetensors"))
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert len(state) == 128 and len(lora_b) == 64 and all(v.shape[1] == 4 for v in lora_b)
    moved = torch.cat([v.flatten().abs() for v in lora_b])
    assert moved.max() == pytest.approx(1e-4, rel=0.01) and (moved > 0).float().mean() > 0.99
