"""The one trainer: LR schedule formula, seeded determinism, exact resume after a kill, NaN stop."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from tailsynth.errors import TailsynthError
from tailsynth.training import ArrayData, CriterionObjective, FeatureBatches, ImageBatches, Objective, TrainConfig, fit, \
    learning_rate
from tailsynth.training.samplers import SAMPLERS
from tailsynth.training.selection import make_selector


class TinyNet(nn.Module):
    """forward_features / forward_head contract on a few hundred parameters."""

    def __init__(self, k=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, k)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))

    def forward_head(self, z):
        return self.head(z)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = (rng.random((n, 8, 8, 1)) * 60 + labels[:, None, None, None] * 70).astype(np.uint8)
    return ArrayData(images, labels.astype(np.int64))


CFG = TrainConfig(epochs=4, batch_size=16, lr=3e-2, min_lr=1e-4, augment={"rotation_deg": 15.0})


def ce(criterion=None):
    return CriterionObjective(criterion or nn.CrossEntropyLoss())


def images(n, seed, cfg=CFG):
    return ImageBatches(make_data(n, seed), cfg.augment)


def train(workdir, cfg=CFG, seed=0, objective=None, **kw):
    torch.manual_seed(seed)
    model = TinyNet()
    summary = fit(model, objective or ce(), images(64, 1, cfg), make_data(30, 2), cfg, workdir, seed=seed,
                  device=torch.device("cpu"), select=make_selector("val_acc", [0, 1], [2]), log=lambda m: None,
                  progress=False, **kw)
    return model, summary


def test_learning_rate_schedules_and_drw_drop():
    cfg = TrainConfig(epochs=10, lr=1e-3, min_lr=1e-5)
    assert learning_rate(cfg, 0, 100, 0, None) == pytest.approx(1e-3)
    assert learning_rate(cfg, 50, 100, 5, None) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learning_rate(cfg, 100, 100, 9, None) == pytest.approx(1e-5)
    cosine = TrainConfig(epochs=10, lr=1e-3, min_lr=1e-5, lr_schedule="cosine")
    expected = (1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.7))) * 0.1
    assert learning_rate(cosine, 70, 100, 7, drop_epoch=7) == pytest.approx(expected)
    # auto under DRW = the LoGex code: constant lr, x0.1 from the DRW epoch
    assert learning_rate(cfg, 50, 100, 5, drop_epoch=7) == pytest.approx(1e-3)
    assert learning_rate(cfg, 70, 100, 7, drop_epoch=7) == pytest.approx(1e-4)
    constant = TrainConfig(epochs=10, lr=1e-3, lr_schedule="constant")
    assert learning_rate(constant, 99, 100, 9, None) == pytest.approx(1e-3)


def test_training_learns_and_is_deterministic(tmp_path):
    m1, s1 = train(tmp_path / "a")
    m2, s2 = train(tmp_path / "b")
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert s1 == s2
    losses = [h["train_loss"] for h in s1["history"]]
    assert losses[-1] < losses[0]
    assert s1["best_score"] > 0.6  # the classes are separable by brightness


class KillAfter(Exception):
    pass


def kill_in_epoch_3(workdir, objective):
    """Train until the validation pass of epoch 3 raises (after epochs 1-2 were checkpointed)."""
    calls = {"n": 0}

    def dying_select(logits, labels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KillAfter
        return float((logits.argmax(1) == labels).mean())

    torch.manual_seed(0)
    with pytest.raises(KillAfter):
        fit(TinyNet(), objective, images(64, 1), make_data(30, 2), CFG, workdir, seed=0,
            device=torch.device("cpu"), select=dying_select, log=lambda m: None, progress=False)


def test_resume_after_kill_gives_identical_weights(tmp_path):
    reference, ref_summary = train(tmp_path / "ref")

    kill_in_epoch_3(tmp_path / "run", ce())
    resumed, summary = train(tmp_path / "run")
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    for (k, v1), v2 in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert summary == ref_summary


def test_nan_loss_stops_with_epoch_and_batch_named(tmp_path):
    class NanAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, logits, y):
            self.calls += 1
            loss = nn.functional.cross_entropy(logits, y)
            return loss * float("nan") if self.calls == 6 else loss

    torch.manual_seed(0)
    with pytest.raises(TailsynthError, match=r"epoch 2, batch 2.*after epoch 1"):
        fit(TinyNet(), ce(NanAfter()), images(64, 1), make_data(30, 2), CFG, tmp_path, seed=0,
            device=torch.device("cpu"), select=None, log=lambda m: None, progress=False)
    assert (tmp_path / "last.safetensors").exists()


def test_class_balanced_sampler_balances_classes():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    order = SAMPLERS.get("class_balanced")(labels, torch.Generator().manual_seed(0))
    frac = np.bincount(labels[order], minlength=3) / len(order)
    assert np.allclose(frac, 1 / 3, atol=0.05)
    plain = SAMPLERS.get("instance")(labels, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(1000))


class TemperedCE(Objective):
    """CE on logits / T with a learnable log-temperature: an objective that owns a parameter, reports parts."""

    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, model, batch):
        logits = model(batch["x"]) / self.log_t.exp()
        loss = nn.functional.cross_entropy(logits, batch["y"])
        return loss, {"ce": loss.detach(), "temperature": self.log_t.exp().detach()}


def test_objective_parameters_train_resume_and_parts_are_recorded(tmp_path):
    objective = TemperedCE()
    _, summary = train(tmp_path / "ref", objective=objective)
    assert float(objective.log_t.detach()) != 0.0  # the objective's own parameter was optimised
    parts = summary["history"][0]["loss_parts"]
    assert set(parts) == {"ce", "temperature"} and parts["ce"] == pytest.approx(summary["history"][0]["train_loss"])

    kill_in_epoch_3(tmp_path / "run", TemperedCE())
    assert (tmp_path / "run" / "last_objective.safetensors").is_file()
    resumed = TemperedCE()
    _, again = train(tmp_path / "run", objective=resumed)
    assert torch.equal(resumed.log_t, objective.log_t) and again == summary


def test_fit_applies_the_drw_drop_on_a_constant_lr(tmp_path):
    """ldam-rw-drw as the LoGex code trains it: constant lr, x0.1 from the DRW epoch (here 2)."""
    from tailsynth.losses import build_criterion
    crit = build_criterion("ldam-rw-drw", [30, 20, 14], drw_epoch=2)
    _, summary = train(tmp_path, objective=CriterionObjective(crit))
    for h in summary["history"]:
        e = h["epoch"] - 1
        assert h["lr"] == pytest.approx(CFG.lr * (0.1 if e >= 2 else 1.0), rel=1e-12), h  # constant under DRW


def test_head_only_training_keeps_backbone_weights_and_batchnorm_statistics(tmp_path):
    """cRT: trainable='head' changes the classifier layer only; BatchNorm running statistics stay put."""
    torch.manual_seed(0)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, ce(), images(64, 1), make_data(30, 2), CFG, tmp_path, seed=0, device=torch.device("cpu"),
        select=None, trainable="head", log=lambda m: None, progress=False)
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("head."):
            assert not torch.equal(value, after[key]), key
        else:
            assert torch.equal(value, after[key]), key


def test_feature_batches_cover_every_sample_once_per_epoch():
    feats = np.arange(20, dtype=np.float32).reshape(10, 2)
    labels = np.arange(10) % 3
    source = FeatureBatches(feats, labels)
    batches = list(source.epoch(torch.Generator().manual_seed(0), 4))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    z = torch.cat([b["z"] for b in batches]).numpy()
    y = torch.cat([b["y"] for b in batches]).numpy()
    assert sorted(z[:, 0].tolist()) == feats[:, 0].tolist() and np.array_equal(labels[(z[:, 0] // 2).astype(int)], y)
    with pytest.raises(TailsynthError, match="3 feature vectors but 2 labels"):
        FeatureBatches(feats[:3], labels[:2])


def test_epoch_lines_only_beside_progress_bars(tmp_path, monkeypatch):
    """On a terminal (bars on) one line per epoch with the selection score; in a log file (bars off) none:
    the stage's single [done] line reports the best epoch instead."""
    for bars, expected in ((True, 4), (False, 0)):
        lines: list[str] = []
        torch.manual_seed(0)
        summary = fit(TinyNet(), ce(), images(64, 1), make_data(30, 2), CFG, tmp_path / str(bars), seed=0,
                      device=torch.device("cpu"), select=make_selector("val_acc", [0, 1], [2]),
                      log=lines.append, progress=bars)
        assert len(lines) == expected
        if bars:
            best = summary["history"][summary["best_epoch"] - 1]["val_selection"]
            assert lines[summary["best_epoch"] - 1].startswith(f"epoch {summary['best_epoch']}/4 loss ")
            assert lines[summary["best_epoch"] - 1].endswith(f" val val_acc {best:.4f}")
