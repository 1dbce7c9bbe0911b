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


def test_dream_ood_k_must_fit_the_class():
    with pytest.raises(TailsynthError, match="class 'basophil' has only 10"):
        class_k(DreamOodSamplingConfig(k=300), 10, "basophil")
    assert class_k(DreamOodSamplingConfig(k=300, k_fraction=0.3), 10, "basophil") == 3
    from tailsynth.config import build_config
    with pytest.raises(TailsynthError, match="(?s)method_params.dream-ood.outliers.*sigma"):
        build_config(DreamOodSamplingConfig, {"sigma": 0.0}, "method_params.dream-ood.outliers")


def linear(z):  # two classes split by x = 0: class 0 for x >= 0
    return torch.stack([z[:, 0], -z[:, 0]], 1)


def test_bood_crosses_a_linear_boundary_in_the_predicted_number_of_steps():
    alpha = 0.015
    d = torch.tensor([0.1, 0.2, 0.31, 0.0451])
    z = torch.stack([d, torch.zeros(4)], 1)
    y = torch.zeros(4, dtype=torch.long)
    # the normalised ascent direction of CE is exactly -x: crossing (x < 0) after floor(d / alpha) + 1 steps
    want = torch.floor(d / alpha).long() + 1
    assert torch.equal(boundary_steps(z, y, linear, alpha, 100), want)
    moved = perturb(z, y, linear, alpha, want + 2)
    torch.testing.assert_close(moved[:, 0], d - (want + 2) * alpha)
    assert bool((linear(moved).argmax(1) == 1).all())
    assert int(boundary_steps(z[:1], y[:1], linear, alpha, 3)[0]) == 4  # never crossed within 3: max_steps + 1


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
