"""Dream-OOD and BOOD: k-NN distances, the low-likelihood sampler, the boundary perturbation, the vMF head, the
energy regulariser, the conditioning substitution, bad input, and both rows on the tiny experiment."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailsynth.errors import TailsynthError
from tailsynth.methods.dream_ood import OUTLIER_LABEL, EnergyRegularizedObjective
from tailsynth.models import create_model
from tailsynth.models.heads import ABSENT_LOGIT, AnchorCosineHead, install_head
from tailsynth.outliers import (BoodConfig, DreamOodSamplingConfig, boundary_outliers, boundary_steps,
                                kth_nn_distance, low_likelihood_outliers, perturb)
from tailsynth.outliers.dream_ood import class_k

from tiny import quiet, tiny


def test_kth_nn_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    ref, query = torch.randn(40, 5, generator=g), torch.randn(13, 5, generator=g)
    d = np.linalg.norm(query.numpy()[:, None] - ref.numpy()[None], axis=2)
    for k in (1, 3, 40):
        np.testing.assert_allclose(kth_nn_distance(query, ref, k, chunk=4).numpy(), np.sort(d, 1)[:, k - 1], rtol=1e-6)
    self_d = np.linalg.norm(ref.numpy()[:, None] - ref.numpy()[None], axis=2)
    np.fill_diagonal(self_d, np.inf)
    np.testing.assert_allclose(kth_nn_distance(ref, ref, 5, exclude_self=True, chunk=7).numpy(),
                               np.sort(self_d, 1)[:, 4], rtol=1e-6)
    with pytest.raises(TailsynthError, match="k = 40 .*at most 39"):
        kth_nn_distance(ref, ref, 40, exclude_self=True)


def test_dream_ood_samples_around_the_boundary_points_and_is_seeded():
    # a tight cluster on the unit circle plus two stragglers: the stragglers are the boundary
    angles = torch.cat([torch.linspace(-0.05, 0.05, 30), torch.tensor([1.0, -1.2])])
    x = torch.stack([angles.cos(), angles.sin()], 1) * 3.0  # norms do not matter: normalised first
    cfg = DreamOodSamplingConfig(n_per_class=8, k=3, n_boundary=2, n_pick=2, n_candidates=40, n_keep=2, sigma=0.01)
    out, dist = low_likelihood_outliers(x, cfg, torch.Generator().manual_seed(1))
    assert out.shape == (8, 2) and torch.allclose(out.norm(dim=1), torch.ones(8))
    ang = torch.atan2(out[:, 1], out[:, 0])
    near = torch.minimum((ang - 1.0).abs(), (ang + 1.2).abs())
    assert float(near.max()) < 0.05  # every outlier sits next to a straggler, none in the cluster
    # kept = the farthest candidates: their k-NN distance is at least that of the boundary points themselves
    boundary_d = kth_nn_distance(F.normalize(x[-2:], dim=1), F.normalize(x, dim=1), 3).min()
    assert float(dist.min()) >= float(boundary_d) - 0.02
    again, _ = low_likelihood_outliers(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def _spy_candidates(monkeypatch):
    """Record every candidate batch the sampler ranks (queries of kth_nn_distance other than the class itself)."""
    import tailsynth.outliers.dream_ood as module
    calls = []
    real = module.kth_nn_distance

    def spy(query, reference, k, **kw):
        d = real(query, reference, k, **kw)
        if not kw.get("exclude_self"):
            calls.append((query.clone(), d.clone()))
        return d

    monkeypatch.setattr(module, "kth_nn_distance", spy)
    return calls


def test_dream_ood_keeps_the_farthest_of_1500_normalised_candidates_per_point(monkeypatch):
    # every class embedding sits at p = e1 (norms differ: they are normalised first), so the k-th NN distance of a
    # candidate v is exactly ||v - p||: the kept candidates of a point must be its n_keep with the smallest v_1
    dim, n_candidates = 8, 1500
    x = torch.zeros(6, dim)
    x[:, 0] = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5, 4.0])
    p = F.normalize(x[:1], dim=1)[0]
    cfg = DreamOodSamplingConfig(n_per_class=7, k=3, n_boundary=6, n_pick=2, n_candidates=n_candidates, n_keep=2,
                                 sigma=0.1)
    calls = _spy_candidates(monkeypatch)
    out, dist = low_likelihood_outliers(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (7, dim) and torch.allclose(out.norm(dim=1), torch.ones(7))
    # rounds of 2 points x 2 kept: 4 + 3 -> the second round draws for ceil(3 / 2) = 2 points again
    assert [len(q) for q, _ in calls] == [2 * n_candidates, 2 * n_candidates]
    expected = []
    for query, d in calls:
        assert torch.allclose(query.norm(dim=1), torch.ones(len(query), dtype=query.dtype))  # ranked normalised
        torch.testing.assert_close(d, (query - p.double()).norm(dim=1))  # the analytic k-NN distance
        for cands in query.view(2, n_candidates, dim):
            expected.append(cands[cands[:, 0].argsort()[:2]])  # smallest v_1 = farthest from p
    expected = torch.cat(expected)[:7].float()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(dist, (out - p).norm(dim=1))
    # kept = the farthest: a random pick of 2 of 1500 would lie above the 99th distance percentile by chance
    # (p = 0.01 each); every kept one does
    all_d = torch.cat([d for _, d in calls]).float()
    assert float(dist.min()) > float(all_d.quantile(0.99))


def test_dream_ood_result_does_not_depend_on_the_chunking(monkeypatch):
    import tailsynth.outliers.dream_ood as module
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g)
    cfg = DreamOodSamplingConfig(n_per_class=9, k=5, n_boundary=8, n_pick=4, n_candidates=50, sigma=0.05)
    outs = []
    for rows in (50, 120, 1 << 14):  # one point per chunk, two, all
        monkeypatch.setattr(module, "CHUNK_ROWS", rows)
        outs.append(low_likelihood_outliers(x, cfg, torch.Generator().manual_seed(7)))
    for out, dist in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(dist, outs[0][1])


def test_dream_ood_k_must_fit_the_class():
    with pytest.raises(TailsynthError, match="class 'basophil' has only 10"):
        class_k(DreamOodSamplingConfig(k=300), 10, "basophil")
    assert class_k(DreamOodSamplingConfig(k=300, k_fraction=0.3), 10, "basophil") == 3
    from tailsynth.config import build_config
    with pytest.raises(TailsynthError, match="(?s)method_params.dream-ood.outliers.*sigma"):
        build_config(DreamOodSamplingConfig, {"sigma": 0.0}, "method_params.dream-ood.outliers")


@pytest.mark.parametrize("override, key, value, allowed", [
    ("method_params.dream-ood.outliers.k=100000", "method_params.dream-ood.outliers.k", "100000", "k in 1..349"),
    ("method_params.bood.outliers.n_per_class=100000", "method_params.bood.outliers.n_per_class", "100000",
     "1..350"),
])
def test_outlier_settings_larger_than_a_class_fail_at_load_and_plan(tmp_path, override, key, value, allowed):
    """demo (MNIST-5k-LT): 350 training images per head digit, known from the source index before any stage."""
    import re

    from click.testing import CliRunner

    from tailsynth.cli import cli
    from tailsynth.pipeline.experiment import load_experiment
    message = rf"(?s)key '{re.escape(key)}' = {value}:.*350 training images.*allowed: {re.escape(allowed)}\b"
    rows = f"methods=[ce,{override.split('.')[1]}]"  # the row runs: its settings are held against the data
    with pytest.raises(TailsynthError, match=message):
        load_experiment("demo", [override, rows])
    result = CliRunner().invoke(cli, ["run", "demo", "--plan", "--runs", str(tmp_path / "runs"), override, rows])
    assert isinstance(result.exception, TailsynthError) and re.search(message, str(result.exception))
    assert not (tmp_path / "runs").exists()  # nothing planned, nothing made
    largest = override.replace("100000", allowed.split("..")[1])
    assert load_experiment("demo", [largest, rows])  # the top of the range is allowed
    # a row that does not run is not held against the data (the shipped method_params on a user's small benchmark)
    assert load_experiment("demo", [override, "methods=[ce]"])


def linear(z):  # two classes split by x = 0: class 0 for x >= 0
    return torch.stack([z[:, 0], -z[:, 0]], 1)


W, B = torch.tensor([0.5, 2.0]), 0.3  # a tilted boundary w.z = b: class 0 where w.z > b


def tilted(z):
    s = z @ W - B
    return torch.stack([s, -s], 1)


def test_bood_takes_sign_steps_and_crosses_at_the_predicted_step():
    cfg = BoodConfig(n_per_class=3)  # the public code's step: alpha = 0.01, one step beyond the crossing
    alpha = cfg.step_size
    angles = torch.tensor([0.4, 0.9, 1.2, 0.75])
    z = torch.stack([angles.cos(), angles.sin()], 1)  # unit vectors, all on the class-0 side
    y = torch.zeros(4, dtype=torch.long)
    s0 = z @ W - B
    assert bool((s0 > 0).all())
    # grad_z CE = (p_0 - 1) * 2w: its sign is -sign(w) = (-1, -1), so each step lowers w.z by alpha * (|w1| + |w2|)
    # = 2.5 alpha (an L2-normalised step would lower it by alpha * ||w|| = 2.06 alpha and cross later)
    want = torch.floor(s0 / (alpha * W.abs().sum())).long() + 1
    assert torch.equal(boundary_steps(z, y, tilted, alpha, 500), want)
    for j in range(1, int(want.max()) + cfg.extra_steps + 1):  # every step moves z by alpha * sign(g) exactly
        moved = perturb(z, y, tilted, alpha, torch.full((4,), j))
        torch.testing.assert_close(moved, z - j * alpha * torch.sign(W))
        crossed = tilted(moved).argmax(1) == 1
        assert torch.equal(crossed, j >= want)  # not before the predicted step, from it on
    assert want.tolist() == [38, 64, 70, 58]  # (the L2-normalised step: 46, 77, 85, 70)
    out, k = boundary_outliers(z, y, tilted, cfg)
    keep = torch.tensor([0, 3, 1])  # the 3 features with the fewest steps, fewest first
    assert torch.equal(k, want[keep])
    # each pushed K(z) + extra_steps sign steps from its normalised start, returned on the unit sphere
    torch.testing.assert_close(out, F.normalize(z[keep] - (want[keep] + cfg.extra_steps)[:, None] * alpha
                                                * torch.sign(W), dim=1))
    assert int(boundary_steps(z[:1], y[:1], tilted, alpha, 3)[0]) == 4  # never crossed within 3: max_steps + 1


def test_bood_keeps_the_features_nearest_the_boundary():
    angles = torch.tensor([0.5, 0.05, 1.2, 0.2, 0.9])  # class 0 = right half plane (x >= 0 ... angle < pi/2)
    z = torch.stack([angles.cos(), angles.sin()], 1)
    rotated = lambda h: torch.stack([h[:, 1] * -1 + 0.0, h[:, 1]], 1)  # noqa: E731  boundary: y = 0
    y = torch.ones(5, dtype=torch.long)  # class 1 = y > 0 side
    out, steps = boundary_outliers(z, y, rotated, BoodConfig(n_per_class=2, step_size=0.01, extra_steps=1))
    assert steps.tolist() == sorted(steps.tolist()) and len(out) == 2
    # the two smallest angles (closest to the boundary y = 0) were chosen and pushed across it
    assert bool((out[:, 1] < 0).all())
    assert torch.allclose(out.norm(dim=1), torch.ones(2))
    with pytest.raises(TailsynthError, match="only 5 training embeddings"):
        boundary_outliers(z, y, rotated, BoodConfig(n_per_class=6))


def test_vmf_head_is_cosine_over_tau_with_fixed_anchors_and_absent_classes():
    head = AnchorCosineHead(6, 4, dim=3, tau=0.1, classes=[0, 2])
    anchors = torch.zeros(4, 3)
    anchors[0], anchors[2] = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])
    head.set_anchors(anchors)
    f = torch.randn(5, 6)
    h = head.proj(f)
    logits = head(f)
    torch.testing.assert_close(logits[:, 0], F.cosine_similarity(h, anchors[0][None], dim=1) / 0.1)
    torch.testing.assert_close(logits[:, 2], F.cosine_similarity(h, anchors[2][None], dim=1) / 0.1)
    assert bool((logits[:, [1, 3]] == ABSENT_LOGIT).all())
    assert float(logits.detach().softmax(1)[:, [1, 3]].max()) == 0.0
    assert not head.anchors.requires_grad and "anchors" in head.state_dict()
    with pytest.raises(TailsynthError, match="anchor dimension must match"):
        head.set_anchors(torch.ones(4, 5))
    model = install_head(create_model("resnet18", 4, 1, 0.125, True), {"kind": "linear", "classes": [1, 3]})
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 4) and bool((out[:, [0, 2]] == ABSENT_LOGIT).all())


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_energy_regulariser_matches_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, ABSENT_LOGIT, 0.5], [0.1, ABSENT_LOGIT, -1.0], [1.0, ABSENT_LOGIT, 3.0]])
    y = torch.tensor([2, OUTLIER_LABEL, 0])
    obj = EnergyRegularizedObjective([0, 2], weight=2.5, hidden=8)
    loss, parts = obj(Fixed(logits), {"x": torch.zeros(3), "y": y})
    z = logits[:, [0, 2]]
    ce = -(torch.log_softmax(z[0], 0)[1] + torch.log_softmax(z[2], 0)[0]) / 2  # class 2 -> column 1
    energy = torch.logsumexp(z, 1, keepdim=True)
    out = obj.mlp[2](torch.relu(obj.mlp[0](energy)))
    reg = -(torch.log_softmax(out[0], 0)[1] + torch.log_softmax(out[1], 0)[0] + torch.log_softmax(out[2], 0)[1]) / 3
    torch.testing.assert_close(parts["ce_id"], ce)
    torch.testing.assert_close(parts["energy_reg"], reg)
    torch.testing.assert_close(loss, ce + 2.5 * reg)


def test_dream_ood_pairs_every_id_batch_with_as_many_cycled_outliers():
    from tailsynth.methods import METHODS
    from tailsynth.training import ArrayData, TrainConfig
    from tailsynth.training.batches import PairedBatches
    n_id, n_out, batch = 10, 3, 4
    labels = np.array([0, 1] * 5 + [OUTLIER_LABEL] * n_out)
    images = np.arange(n_id + n_out, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    cfg = TrainConfig(batch_size=batch, augment={"hflip": False, "vflip": False, "rotation_deg": 0.0})
    source = METHODS.get("dream-ood").batches(ArrayData(images, labels), cfg)
    assert isinstance(source, PairedBatches) and len(source) == n_id  # an epoch = one pass over the ID images

    def ids(x):  # each image is filled with its row number; no augmentation
        return ((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()

    epochs = []
    for e in range(2):
        got = list(source.epoch(torch.Generator().manual_seed(e), batch))
        assert [len(b["y"]) for b in got] == [8, 8, 4]  # ID 4 + 4 outliers, 4 + 4, 2 + 2
        for b in got:  # interleaved: ID, outlier, ID, outlier, ...
            assert bool((b["y"][0::2] >= 0).all()) and bool((b["y"][1::2] == OUTLIER_LABEL).all())
        seen_id = [i for b in got for i in ids(b["x"][0::2])]
        seen_out = [i for b in got for i in ids(b["x"][1::2])]
        assert sorted(seen_id) == list(range(n_id))  # every ID image once
        # 10 outlier draws from a cycle over 3: each full cycle of 3 holds every outlier once, then a new order
        for c in range(3):
            assert sorted(seen_out[3 * c:3 * c + 3]) == [10, 11, 12]
        assert seen_out[9] in (10, 11, 12)
        epochs.append((seen_id, seen_out))
        again = list(source.epoch(torch.Generator().manual_seed(e), batch))
        assert all(torch.equal(a["x"], b["x"]) for a, b in zip(got, again))  # seeded: a resumed epoch is the same
    assert epochs[0] != epochs[1]
    with pytest.raises(TailsynthError, match="empty"):
        PairedBatches(ArrayData(images[:n_id], labels[:n_id]), ArrayData(images[:0], labels[:0]), cfg.augment)


def _pixel_backend():
    from tailsynth.diffusion import PixelBackend
    return PixelBackend({"num_classes": 3, "image_size": 8, "in_channels": 1, "block_out_channels": [16, 32],
                         "attention_levels": [False, True], "norm_num_groups": 8, "cross_attention_dim": 16,
                         "attention_head_dim": 8, "tokens_per_class": 2}, seed=0)


def test_an_outlier_embedding_reaches_the_unets_cross_attention():
    backend = _pixel_backend().eval()
    ids = torch.tensor([1, 2])
    anchors = backend.anchor_embeddings(ids).detach()
    assert anchors.shape == (2, 32)
    assert torch.equal(backend.condition_from_anchor(anchors, ids), backend.encode_condition(class_ids=ids))
    v = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw.get("encoder_hidden_states")),
                                         with_kwargs=True)
             for name, m in backend.unet.named_modules() if name.endswith("attn2")]
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    with torch.no_grad():
        eps_v = backend.eps(x, t, backend.condition_from_anchor(v, ids))
        eps_a = backend.eps(x, t, backend.encode_condition(class_ids=ids))
    for h in hooks:
        h.remove()
    assert hooks and torch.equal(seen[0], v.view(2, 2, 16))  # the cross-attention keys / values come from v
    assert float((eps_v - eps_a).abs().max()) > 1e-4
    with pytest.raises(TailsynthError, match="2 x 16 = 32"):
        backend.condition_from_anchor(torch.zeros(1, 31))


def test_sd_anchor_is_the_token_row_and_substitution_is_exact(tmp_path):
    from tailsynth.diffusion.sd import SDBackend
    from tailsynth.diffusion.tiny_sd import build_tiny_sd_pipeline
    build_tiny_sd_pipeline(tmp_path / "sd")
    backend = SDBackend({"path": str(tmp_path / "sd"), "class_names": ["x", "ig"],
                         "prompt_template": "a slide of {class_name} cells"})
    table = backend.text_encoder.get_input_embeddings().weight
    (token,) = backend.name_token_ids("x")
    anchors = backend.anchor_embeddings(torch.tensor([0, 1]))
    torch.testing.assert_close(anchors[0], table[token].float())
    torch.testing.assert_close(anchors[1], table[torch.tensor(backend.name_token_ids("ig"))].float().mean(0))
    ids = torch.tensor([0])
    # a one-token name: substituting its own row gives exactly the ordinary prompt's encoding
    torch.testing.assert_close(backend.condition_from_anchor(anchors[:1], ids), backend.encode_condition(class_ids=ids))
    # (a random direction: a constant shift of every coordinate is removed by CLIP's LayerNorms)
    moved = backend.condition_from_anchor(anchors[:1] + 0.5 * torch.randn(1, 32, generator=torch.Generator().manual_seed(0)), ids)
    assert float((moved - backend.encode_condition(class_ids=ids)).abs().max()) > 1e-3
    with pytest.raises(TailsynthError, match="token embeddings have 32 dimensions"):
        backend.condition_from_anchor(torch.zeros(1, 7), ids)


OUTLIER_PARAMS = [
    "method_params.dream-ood={outliers: {n_per_class: 6, k: 5, n_boundary: 10, n_pick: 3, n_candidates: 30}, "
    "decode: {num_steps: 3, shard_size: 4}}",
    "method_params.bood={outliers: {n_per_class: 6}, decode: {num_steps: 3, shard_size: 4}}",
]


@pytest.mark.slow
def test_dream_ood_and_bood_rows_on_the_tiny_experiment(tmp_path):
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.engine.artifacts import load_classifier
    from tailsynth.pipeline.experiment import load_experiment
    from tailsynth.pipeline.experiment_run import run_experiment
    cfg = load_experiment("demo", tiny("methods=[ce,dream-ood,bood]", "oracle=null", *OUTLIER_PARAMS))
    result = run_experiment(cfg, tmp_path / "runs", log=quiet)
    runs = tmp_path / "runs"
    metrics = {json.loads((a.path / "metrics.json").read_text())["method"]: json.loads((a.path / "metrics.json")
                                                                                      .read_text()) for a in result.evaluations}
    assert metrics["dream-ood"]["primary_score"] == "energy_head" and metrics["ce"]["primary_score"] == "p_tail"
    assert metrics["dream-ood"]["metrics"]["fpr95"] == metrics["dream-ood"]["scores"]["energy_head"]["fpr95"]
    assert len(list((runs / "imagine_outliers").glob("*/manifest.json"))) == 2
    assert len(list((runs / "train_classifier").glob("*/manifest.json"))) == 4  # ce, encoder (shared), 2 rows
    heads = 5  # digits-lt: 5 head classes
    for folder in (runs / "decode_outliers").glob("*/manifest.json"):
        rows = SyntheticSet.read(folder.parent).rows
        assert len(rows) == 6 * heads and {r["role"] for r in rows} == {"outlier"}
        data = np.load(folder.parent.parent.parent / "imagine_outliers" / json.loads(folder.read_text())
                       ["inputs"]["outliers"]["fingerprint"] / "outliers.npz")
        norms = np.linalg.norm(data["vectors"], axis=1)
        anchor_norms = np.linalg.norm(data["anchors"][data["classes"]], axis=1)
        np.testing.assert_allclose(norms, anchor_norms, rtol=1e-5)  # rescaled to the anchor's norm
    for folder in (runs / "train_classifier").glob("*/model.json"):
        card = json.loads(folder.read_text())
        if card["method"] in ("dream-ood", "bood"):
            model, _ = load_classifier(folder.parent)
            out = model(torch.zeros(1, 1, 8, 8))
            assert bool((out[0, card["tail_classes"]] == ABSENT_LOGIT).all())
            assert card["tail_threshold"]["score"] == "energy_head"  # predict flags rare images by the row's score
            from tailsynth.api import Predictor
            predictor = Predictor(folder.parent)
            flags = [p.is_rare for p in predictor.predict_arrays(np.zeros((3, 8, 8), np.uint8))]
            logits = model(torch.full((3, 1, 8, 8), -1.0)).detach().numpy()
            energy = -torch.logsumexp(torch.as_tensor(logits)[:, card["head_classes"]], 1).numpy()
            assert flags == [bool(e > card["tail_threshold"]["value"]) for e in energy]
    results = json.loads((result.report_dir / "results.json").read_text())
    assert results["primary_score"] == "p_tail"
    assert results["method_primary_score"] == {"dream-ood": "energy_head", "bood": "energy_head"}
