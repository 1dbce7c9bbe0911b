"""Long-tail criteria against their formulas computed by hand."""
import math

import numpy as np
import pytest
import torch

from tailsynth.errors import TailsynthError, UnknownNameError
from tailsynth.losses import LOSSES, build_criterion, class_balanced_weights, ldam_margins

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [1.0, -2.0, 0.3], [0.0, 0.0, 0.0]])
TARGETS = torch.tensor([0, 1, 2, 2])
COUNTS = [100, 10, 1]


def log_softmax_row(row, c):
    return row[c] - math.log(sum(math.exp(v) for v in row))


def hand_ce_terms(logits, targets):
    return [-log_softmax_row(logits[i].tolist(), int(targets[i])) for i in range(len(targets))]


def hand_cb(counts, beta):
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [v / sum(w) * len(counts) for v in w]


def test_class_balanced_weights_hand_values():
    w = class_balanced_weights(COUNTS, beta=0.9)
    raw = [0.1 / (1 - 0.9 ** 100), 0.1 / (1 - 0.9 ** 10), 1.0]
    expected = [r / sum(raw) * 3 for r in raw]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert w.sum() == pytest.approx(3.0)
    w = class_balanced_weights([5000, 500, 50, 5], beta=0.9999)
    assert w.sum() == pytest.approx(4.0) and np.all(np.diff(w) > 0)
    with pytest.raises(TailsynthError, match=r"\[1\]"):
        class_balanced_weights([3, 0, 2])


def test_ce_and_ce_rw():
    terms = hand_ce_terms(LOGITS, TARGETS)
    assert build_criterion("ce", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    w = hand_cb(COUNTS, 0.9999)
    expected = sum(w[int(t)] * l for t, l in zip(TARGETS, terms)) / 4  # plain batch mean (LoGex code)
    assert build_criterion("ce-rw", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma0_is_ce_and_hand_value():
    ce = build_criterion("ce", COUNTS)(LOGITS, TARGETS)
    assert build_criterion("focal", COUNTS, gamma=0.0)(LOGITS, TARGETS).item() == pytest.approx(ce.item(), rel=1e-6)
    terms = []
    for i in range(4):
        lp = log_softmax_row(LOGITS[i].tolist(), int(TARGETS[i]))
        terms.append((1 - math.exp(lp)) ** 2 * -lp)
    assert build_criterion("focal", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    w = hand_cb(COUNTS, 0.9999)
    expected = sum(w[int(t)] * v for t, v in zip(TARGETS, terms)) / 4
    assert build_criterion("focal-rw", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_ldam_margins_and_hand_loss():
    m = ldam_margins([16, 1, 81], max_m=0.5)
    np.testing.assert_allclose(m, [0.25, 0.5, 0.5 / 3], rtol=1e-12)  # ∝ n^-1/4, max 0.5
    crit = build_criterion("ldam", [16, 1, 81], s=2.0)
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.3, -0.2, 0.9]])
    y = torch.tensor([1, 2])
    shifted = [[1.0, 1.5, 0.0], [0.3, -0.2, 0.9 - 0.5 / 3]]  # margin off the true-class logit
    terms = [-log_softmax_row([2.0 * v for v in shifted[i]], int(y[i])) for i in range(2)]
    assert crit(logits, y).item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    default = build_criterion("ldam", [16, 1, 81])
    assert default.s == 30.0 and default.max_m == 0.5
    small = torch.tensor([[0.10, 0.12, 0.05]])  # s = 30 makes larger logits saturate
    shifted30 = [30.0 * v for v in [0.10, 0.12 - 0.5, 0.05]]
    assert default(small, torch.tensor([1])).item() == pytest.approx(-log_softmax_row(shifted30, 1), rel=1e-5)


def test_ldam_rw_weights():
    crit = build_criterion("ldam-rw", COUNTS, s=1.0)
    m = ldam_margins(COUNTS)
    w = hand_cb(COUNTS, 0.9999)
    terms = []
    for i in range(4):
        row = LOGITS[i].tolist()
        c = int(TARGETS[i])
        row[c] -= m[c]
        terms.append(w[c] * -log_softmax_row(row, c))
    assert crit(LOGITS, TARGETS).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


@pytest.mark.parametrize("name", ["ldam-drw", "ldam-rw-drw"])
def test_drw_switches_at_epoch(name):
    crit = build_criterion(name, COUNTS, drw_epoch=3)
    plain = build_criterion("ldam", COUNTS)(LOGITS, TARGETS).item()
    weighted = build_criterion("ldam-rw", COUNTS)(LOGITS, TARGETS).item()
    assert crit.drw_epoch == 3
    for epoch, expected in [(0, plain), (2, plain), (3, weighted), (7, weighted)]:
        crit.set_epoch(epoch)
        assert crit(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert build_criterion(name, COUNTS).drw_epoch == 10  # LoGex code default


def test_non_drw_criteria_have_no_drw_epoch():
    for name in ["ce", "ce-rw", "focal", "focal-rw", "ldam", "ldam-rw"]:
        crit = build_criterion(name, COUNTS)
        assert crit.drw_epoch is None
        crit.set_epoch(50)  # no-op
        assert torch.isfinite(crit(LOGITS, TARGETS))


def test_hod_hand_value():
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [0.5, 0.5, -1.0]])
    y = torch.tensor([2, 0, 1])
    crit = build_criterion("hod", [50, 40, 2], tail_classes=[2])
    ce = sum(hand_ce_terms(logits, y)) / 3
    coarse = []
    for i in range(3):
        row = logits[i].tolist()
        p = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        group = p[2] if int(y[i]) == 2 else p[0] + p[1]
        coarse.append(-math.log(group))
    assert crit(logits, y).item() == pytest.approx(ce + 0.1 * sum(coarse) / 3, rel=1e-6)
    crit = build_criterion("hod", [50, 40, 2], tail_classes=[2], hod_weight=0.5)
    assert crit(logits, y).item() == pytest.approx(ce + 0.5 * sum(coarse) / 3, rel=1e-6)


def test_hod_needs_tail_classes():
    with pytest.raises(TailsynthError, match="tail_classes"):
        build_criterion("hod", COUNTS)
    with pytest.raises(TailsynthError, match="outside"):
        build_criterion("hod", COUNTS, tail_classes=[5])


def test_registry_and_parameter_errors():
    assert {"ce", "ce-rw", "focal", "focal-rw", "ldam", "ldam-rw", "ldam-drw", "ldam-rw-drw", "hod"} <= set(LOSSES.names())
    with pytest.raises(UnknownNameError, match="ldam-rw-drw"):
        build_criterion("ldamm", COUNTS)
    with pytest.raises(TailsynthError, match="gamma"):
        build_criterion("ce", COUNTS, gamma=2.0)
    with pytest.raises(TailsynthError, match=r"\(B, 3\)"):
        build_criterion("ce", COUNTS)(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_gradients_flow():
    for name in LOSSES.names():
        logits = LOGITS.clone().requires_grad_(True)
        build_criterion(name, COUNTS, tail_classes=[2])(logits, TARGETS).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
