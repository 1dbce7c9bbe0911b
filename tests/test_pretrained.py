"""Pretrained backbones from local files: torchvision's key layout, errors that name keys, the input
normalisation stored with the model, and the pipeline's use of a weights file."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tailsynth.errors import TailsynthError
from tailsynth.models import create_model
from tailsynth.models.pretrained import IMAGENET_NORM, load_backbone, read_state_dict
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment

from tiny import quiet, tiny


def torchvision_state(model_name="resnet18", width=1.0, seed=0, wrap=False):
    """A state dict in torchvision's layout (``fc`` with 1000 ImageNet classes), built in memory."""
    torch.manual_seed(seed)
    state = create_model(model_name, num_classes=1000, width=width).state_dict()
    state = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in state.items()}
    assert "fc.weight" in state and state["fc.weight"].shape[0] == 1000
    return {"state_dict": {"module." + k: v for k, v in state.items()}} if wrap else state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_layout_loads_the_backbone_and_keeps_a_fresh_head(tmp_path, suffix):
    state = torchvision_state()
    path = tmp_path / f"resnet18{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=5)
    head_before = model.head.weight.clone()
    report = load_backbone(model, path)
    own = model.state_dict()
    assert report == {"loaded": len(state) - 2, "head_skipped": 2}
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert model.head.weight.shape == (5, 512) and torch.equal(model.head.weight, head_before)


def test_wrapped_and_dataparallel_checkpoints_are_accepted(tmp_path):
    torch.save(torchvision_state(wrap=True), tmp_path / "w.pth")
    assert read_state_dict(tmp_path / "w.pth")["conv1.weight"].shape == (64, 3, 7, 7)
    load_backbone(create_model("resnet18", num_classes=3), tmp_path / "w.pth")


def test_errors_name_missing_unexpected_and_mismatched_keys(tmp_path):
    state = torchvision_state()
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(TailsynthError, match=r"missing \(1\): layer1\.0\.conv1\.weight.*unexpected \(1\): layer5"):
        load_backbone(create_model("resnet18", num_classes=3), tmp_path / "bad.pth")
    torch.save(torchvision_state(), tmp_path / "r18.pth")
    with pytest.raises(TailsynthError, match=r"shape mismatch.*conv1\.weight \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)"):
        load_backbone(create_model("resnet18", num_classes=3, width=0.5), tmp_path / "r18.pth")
    with pytest.raises(TailsynthError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(TailsynthError, match="expected one of .pth, .pt, .safetensors"):
        read_state_dict(tmp_path / "w.bin")


def test_weights_only_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"conv1.weight": Evil()}, fh, protocol=2)
    with pytest.raises(TailsynthError, match="cannot read pretrained weights"):
        read_state_dict(tmp_path / "evil.pth")


def test_input_normalisation_is_applied_inside_the_network():
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=3).eval()
    normed = create_model("resnet18", num_classes=3).eval()
    normed.load_state_dict(plain.state_dict())
    normed.set_input_norm(IMAGENET_NORM["mean"], IMAGENET_NORM["std"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor(IMAGENET_NORM["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET_NORM["std"]).view(1, 3, 1, 1)
    expected = plain.forward_features(((x + 1) / 2 - mean) / std)
    assert torch.allclose(normed.forward_features(x), expected, atol=1e-5)
    assert "input_mean" not in normed.state_dict()  # the card, not the weights file, carries it


@pytest.mark.slow
def test_pipeline_trains_from_a_weights_file_and_checks_it_at_load(tmp_path):
    """classifier.pretrained on the tiny experiment: the card stores the normalisation and the loaded tensor
    count; the weights' hash is part of the fingerprint; a file that does not fit fails before any stage."""
    from tailsynth.data.content_hash import file_sha256
    state = create_model("resnet18", num_classes=1000, in_channels=1, width=0.125, small_input=True).state_dict()
    path = tmp_path / "tiny.pth"
    torch.save({("fc." + k[5:] if k.startswith("head.") else k): v for k, v in state.items()}, path)
    over = tiny("methods=[ce]", f"classifier.pretrained={path}", generator=False)
    result = run_experiment(load_experiment("demo", over), tmp_path / "runs", log=quiet)
    manifest = json.loads((result.evaluations[0].path / "manifest.json").read_text())
    clf = manifest["inputs"]["classifier"]["path"]
    card = json.loads(open(f"{clf}/model.json").read())
    assert card["input_norm"] == {"mean": [0.449], "std": [0.226]}  # ImageNet's, averaged for gray images
    assert card["pretrained"]["loaded"] == len(state) - 2
    train_manifest = json.loads(open(f"{clf}/manifest.json").read())
    assert train_manifest["config"]["weights_sha256"] == file_sha256(path)
    assert np.isfinite(json.loads((result.evaluations[0].path / "metrics.json").read_text())["metrics"]["fpr95"])
    wide = create_model("resnet18", num_classes=1000, in_channels=1, width=0.25, small_input=True).state_dict()
    torch.save({("fc." + k[5:] if k.startswith("head.") else k): v for k, v in wide.items()}, tmp_path / "w.pth")
    with pytest.raises(TailsynthError, match="classifier.pretrained: .*shape mismatch"):
        load_experiment("demo", tiny("methods=[ce]", f"classifier.pretrained={tmp_path / 'w.pth'}", generator=False))
