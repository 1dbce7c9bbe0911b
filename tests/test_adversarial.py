"""PGD adversarial training (Madry et al. 2018): the attack step against its closed form on a linear model, the
projection onto the L2 / L-inf ball, untouched parameters and BatchNorm statistics, the trainer's use of it,
and the config's fingerprint neutrality (old runs folders stay valid)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailsynth.config import to_dict
from tailsynth.errors import TailsynthError
from tailsynth.training import FeatureBatches, TrainConfig, fit
from tailsynth.training.adversarial import AdversarialConfig, pgd_attack
from tailsynth.training.trainer import FeatureData
from test_trainer import TinyNet, ce, make_data, train


class Linear(nn.Module):
    def __init__(self, d, k, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g))
        self.b = nn.Parameter(torch.randn(k, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_one_l2_step_is_the_normalised_cross_entropy_gradient():
    """d CE / dx for logits W x + b is W^T (softmax - onehot) / B (mean reduction); one L2 step moves x by
    alpha * g / ||g|| per sample (alpha in [-1, 1] input units = 2 x the pixel-unit step)."""
    torch.manual_seed(0)
    x = torch.rand(5, 1, 3, 3) * 0.2 - 0.1  # far from the [-1, 1] bounds: no clipping
    y = torch.tensor([0, 1, 2, 1, 0])
    model = Linear(9, 3)
    cfg = AdversarialConfig(eps=1.0, steps=1, step_size=0.05)
    p = torch.softmax(model(x), 1).detach()
    g = (p - F.one_hot(y, 3).float()) @ model.w.detach() / len(x)
    expected = x + 2 * 0.05 * (g / g.norm(dim=1, keepdim=True)).view_as(x)
    torch.testing.assert_close(pgd_attack(model, x, y, cfg), expected, rtol=0, atol=1e-6)
    assert model.w.grad is None and model.b.grad is None


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attack_stays_in_the_ball_and_the_pixel_range_and_raises_the_loss(norm):
    torch.manual_seed(1)
    model = Linear(12, 4, seed=3)
    x = torch.rand(16, 3, 2, 2) * 2 - 1
    y = torch.randint(0, 4, (16,))
    cfg = AdversarialConfig(eps=0.1, norm=norm, steps=5)
    assert cfg.alpha == pytest.approx(2.5 * 0.1 / 5)
    x_adv = pgd_attack(model, x, y, cfg)
    delta = (x_adv - x).flatten(1)
    bound = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert float(bound.max()) <= 2 * 0.1 + 1e-6  # eps in [0, 1] pixel units, inputs in [-1, 1]
    assert float(bound.max()) > 0.1  # it uses the ball, not a sliver of it
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    loss = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    assert (loss(x_adv) >= loss(x) - 1e-6).all() and loss(x_adv).mean() > loss(x).mean() + 1e-3


def test_attack_leaves_batchnorm_statistics_and_mode_alone():
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    pgd_attack(model, x, torch.randint(0, 3, (8,)), AdversarialConfig(eps=0.5, steps=3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and model.bn.momentum == 0.1
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_training_is_seeded_differs_from_plain_and_resumes(tmp_path):
    adv = TrainConfig(epochs=3, batch_size=16, lr=3e-2, min_lr=1e-4, adversarial={"eps": 2.0, "steps": 3})
    a, sa = train(tmp_path / "a", cfg=adv)
    b, sb = train(tmp_path / "b", cfg=adv)
    plain, _ = train(tmp_path / "plain", cfg=adv.model_copy(update={"adversarial": AdversarialConfig()}))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert sa == sb
    assert not torch.equal(a.conv.weight, plain.conv.weight)
    # robust: on 8 x 8 grey images whose classes differ by brightness, both nets reach 70 % clean accuracy; under a
    # 10-step attack of the radius it was trained at the adversarially trained one keeps 32 %, the plain one 0 %
    data = make_data(60, 5)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    y = torch.from_numpy(data.labels)

    def attacked_acc(m):
        m.eval()
        x_adv = pgd_attack(m, x, y, AdversarialConfig(eps=2.0, steps=10))
        return float((m(x_adv).argmax(1) == y).float().mean())

    clean = lambda m: float((m.eval()(x).argmax(1) == y).float().mean())  # noqa: E731
    assert clean(a) == pytest.approx(0.7) and clean(plain) == pytest.approx(0.7)
    assert attacked_acc(a) > 0.25 and attacked_acc(plain) < 0.05


def test_adversarial_config_is_fingerprint_neutral_and_checked(tmp_path):
    assert "adversarial" not in to_dict(TrainConfig())
    assert to_dict(TrainConfig(adversarial={"eps": 0.5}))["adversarial"] == {"eps": 0.5, "norm": "l2", "steps": 3,
                                                                             "step_size": None}
    with pytest.raises(ValueError, match="L-inf radius"):
        AdversarialConfig(eps=2.0, norm="linf")
    with pytest.raises(ValueError):
        AdversarialConfig(eps=-0.1)
    feats = FeatureData(np.zeros((4, 4), np.float32), np.array([0, 1, 2, 0]))
    cfg = TrainConfig(epochs=1, adversarial={"eps": 0.5})
    with pytest.raises(TailsynthError, match="adversarial"):
        fit(TinyNet(), ce(), FeatureBatches(feats.features, feats.labels), feats, cfg, tmp_path, seed=0, device=torch.device("cpu"),
            select=None, progress=False, log=lambda m: None)
