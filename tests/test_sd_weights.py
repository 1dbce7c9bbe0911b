"""Seeded random weights with the real architectures (``tailsynth weights``), and the checks that refuse a bad
``diffusion.sd_path`` or ``classifier.pretrained`` at config load and ``--plan``, before any stage runs."""
import json
import pickle
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tailsynth.cli import cli
from tailsynth.diffusion import SDBackend
from tailsynth.diffusion.random_sd import SD14_TEXT, SD14_UNET, SD14_VAE, write_random_sd
from tailsynth.diffusion.sd import check_sd_folder
from tailsynth.errors import TailsynthError
from tailsynth.models import create_model
from tailsynth.models.pretrained import load_backbone, read_state_dict, write_random_backbone
from tailsynth.pipeline.experiment import load_experiment


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return write_random_sd(tmp_path_factory.mktemp("random_sd") / "sd", "tiny", seed=0, dtype="float32")


def _copy(src, dst, edit: dict | None = None):
    """A copy of the folder ``src`` with JSON files edited: {relative path: {key: value}} (None deletes the key)."""
    shutil.copytree(src, dst)
    for rel, changes in (edit or {}).items():
        data = json.loads((dst / rel).read_text())
        for key, value in changes.items():
            data.pop(key) if value is None else data.__setitem__(key, value)
        (dst / rel).write_text(json.dumps(data))
    return dst


def test_sd14_configs_build_the_real_parameter_counts():
    """SD-1.4's UNet, VAE and CLIP ViT-L/14 text encoder (shapes only, on the meta device): the published counts."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(**SD14_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)
    assert text.get_input_embeddings().weight.shape == (49408, 768)


def test_tiny_variant_is_seeded_and_loads_with_the_sd_backend(tiny_sd, tmp_path):
    found = check_sd_folder(tiny_sd)
    assert (found["cross_attention_dim"], found["text_hidden_size"], found["model_max_length"]) == (32, 32, 77)
    assert json.loads((tiny_sd / "tailsynth-random.json").read_text())["seed"] == 0
    same = write_random_sd(tmp_path / "same", "tiny", seed=0, dtype="float32")
    other = write_random_sd(tmp_path / "other", "tiny", seed=1, dtype="float16")
    unet = "unet/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(str(p / unet)) for p in (tiny_sd, same, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {v.dtype for v in c.values()} == {torch.float16}
    assert not torch.equal(a["conv_in.weight"].half(), c["conv_in.weight"])
    sd = SDBackend({"path": str(other), "class_names": ["basophil"]})
    assert sd.tokenizer.model_max_length == 77
    # the byte-level vocabulary: BOS 512, one token per byte (the last one a word end, +256), EOS 513, padding
    ids = sd.tokenizer(["ab"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:4] == [512, 64, 65 + 256, 513] and len(ids) == 77
    assert sd.encode_condition(torch.tensor([0])).shape == (1, 77, 32)
    # the same settings again: kept as written; other settings on a written folder: refused unless forced
    stamp = (same / unet).stat().st_mtime_ns
    write_random_sd(same, "tiny", seed=0, dtype="float32")
    assert (same / unet).stat().st_mtime_ns == stamp
    with pytest.raises(TailsynthError, match="exists and is not a random SD folder with variant tiny, seed 2"):
        write_random_sd(same, "tiny", seed=2, dtype="float32")
    write_random_sd(same, "tiny", seed=2, dtype="float32", force=True)
    assert not torch.equal(load_file(str(same / unet))["conv_in.weight"], a["conv_in.weight"])
    with pytest.raises(TailsynthError, match="variant 'sd-3' unknown; valid: sd-1.4, tiny"):
        write_random_sd(tmp_path / "x", "sd-3")


def test_cli_writes_random_weights(tmp_path):
    out = CliRunner().invoke(cli, ["weights", "random-sd", str(tmp_path / "sd"), "--variant", "tiny", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert "random SD (tiny, seed 3, float16), cross-attention width 32" in out.output
    assert json.loads((tmp_path / "sd" / "tailsynth-random.json").read_text())["dtype"] == "float16"
    out = CliRunner().invoke(cli, ["weights", "random-resnet", str(tmp_path / "r18.safetensors"), "--model",
                                   "resnet18"])
    assert out.exit_code == 0, out.output
    assert "random resnet18 (seed 0), 122 tensors, 11,689,512 parameters" in out.output


@pytest.mark.parametrize("remove, named", [
    ("model_index.json", "missing model_index.json"),
    ("vae", "missing vae/"),
    ("unet/diffusion_pytorch_model.safetensors", "missing unet/diffusion_pytorch_model.safetensors (or .bin)"),
    ("text_encoder/config.json", "missing text_encoder/config.json"),
    ("tokenizer/tokenizer.json", "missing tokenizer/tokenizer.json (or vocab.json + merges.txt)"),
    ("tokenizer/tokenizer_config.json", "missing tokenizer/tokenizer_config.json"),
    ("scheduler", "missing scheduler/"),
])
def test_incomplete_sd_folder_names_the_missing_part(tiny_sd, tmp_path, remove, named):
    folder = _copy(tiny_sd, tmp_path / "sd")
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(TailsynthError, match="is not a local Stable Diffusion folder: " + re.escape(named)):
        check_sd_folder(folder)


def test_variant_only_weights_are_named(tiny_sd, tmp_path):
    folder = _copy(tiny_sd, tmp_path / "sd")
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.rename(vae.with_name("diffusion_pytorch_model.fp16.safetensors"))
    with pytest.raises(TailsynthError, match="found only variant files diffusion_pytorch_model.fp16.safetensors"):
        check_sd_folder(folder)


@pytest.mark.parametrize("edit, found", [
    ({"scheduler/scheduler_config.json": {"prediction_type": "v_prediction"}},
     "scheduler prediction_type 'v_prediction'"),
    ({"unet/config.json": {"cross_attention_dim": 1024}},
     "unet cross_attention_dim 1024 but text encoder hidden_size 32"),
    ({"unet/config.json": {"in_channels": 9}}, "unet in_channels 9 (4-channel latents expected)"),
    ({"vae/config.json": {"latent_channels": 16}}, "vae latent_channels 16"),
    ({"unet/config.json": {"addition_embed_type": "text_time"}}, "unet addition_embed_type 'text_time'"),
    ({"scheduler/scheduler_config.json": {"beta_schedule": "sigmoid"}}, "scheduler beta_schedule 'sigmoid'"),
    ({"tokenizer/tokenizer_config.json": {"model_max_length": None}},
     "tokenizer model_max_length None but text encoder max_position_embeddings 77"),
    ({"text_encoder/config.json": {"vocab_size": 100}}, "tokenizer ids up to 513 but text encoder vocab_size 100"),
    ({"model_index.json": {"_class_name": "StableDiffusionXLPipeline"}, "unet/config.json": {"in_channels": 8}},
     "(model_index.json: StableDiffusionXLPipeline): found unet in_channels 8"),
])
def test_a_folder_that_is_not_sd1_says_what_was_found_and_what_is_supported(tiny_sd, tmp_path, edit, found):
    folder = _copy(tiny_sd, tmp_path / "sd", edit)
    with pytest.raises(TailsynthError, match=r"is not a Stable Diffusion 1\.x folder.*" + re.escape(found)
                       + r".*Supported: Stable Diffusion 1\.x: a UNet2DConditionModel with 4 latent channels"):
        check_sd_folder(folder)


def test_bad_sd_path_fails_at_load_and_plan_before_any_stage(tiny_sd, tmp_path):
    with pytest.raises(TailsynthError, match=r"demo\.yaml: diffusion\.sd_path: .*nothing is not a local Stable "
                                             r"Diffusion folder \(not a folder\); expected model_index\.json, unet/"):
        load_experiment("demo", ["diffusion.backend=sd", f"diffusion.sd_path={tmp_path / 'nothing'}"])
    with pytest.raises(TailsynthError, match=r"diffusion\.sd_path is not set: the sd backend generates with a local"):
        load_experiment("demo", ["diffusion.backend=sd"])
    v_pred = _copy(tiny_sd, tmp_path / "v", {"scheduler/scheduler_config.json": {"prediction_type": "v_prediction"}})
    runs = tmp_path / "runs"
    for folder, says in ((tmp_path / "nothing", "not a folder"), (v_pred, "prediction_type 'v_prediction'")):
        out = CliRunner().invoke(cli, ["run", "demo", "--sd-path", str(folder), "--plan", "--runs", str(runs)])
        assert isinstance(out.exception, TailsynthError) and says in str(out.exception)
    assert not runs.exists()  # nothing planned, nothing run
    assert load_experiment("demo", ["diffusion.backend=sd", f"diffusion.sd_path={tiny_sd}"]).diffusion.sd_path


def test_random_resnet50_is_torchvision_layout_and_seeded(tmp_path):
    counts = write_random_backbone(tmp_path / "r50.pth", "resnet50", seed=0)
    assert counts == {"tensors": 320, "parameters": 25_557_032}  # torchvision's resnet50().state_dict()
    state = read_state_dict(tmp_path / "r50.pth")
    assert state["fc.weight"].shape == (1000, 2048) and state["conv1.weight"].shape == (64, 3, 7, 7)
    assert sum(k.endswith("num_batches_tracked") for k in state) == 53
    write_random_backbone(tmp_path / "r50.safetensors", "resnet50", seed=0)
    again = read_state_dict(tmp_path / "r50.safetensors")
    assert all(torch.equal(state[k], again[k]) for k in state)
    model = create_model("resnet50", num_classes=8)
    assert load_backbone(model, tmp_path / "r50.pth") == {"loaded": 318, "head_skipped": 2}
    assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    cfg = load_experiment("demo", ["classifier.model=resnet50", "classifier.width=1.0", "classifier.small_input=false",
                                   "data.channels=3", f"classifier.pretrained={tmp_path / 'r50.pth'}"])
    assert cfg.classifier.pretrained


def test_state_dict_without_num_batches_tracked_loads(tmp_path):
    """Older torchvision files have no BatchNorm num_batches_tracked: the model keeps its own."""
    torch.manual_seed(0)
    state = {("fc." + k[5:] if k.startswith("head.") else k): v
             for k, v in create_model("resnet18", num_classes=1000).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert load_backbone(create_model("resnet18", num_classes=3), tmp_path / "old.pth")["loaded"] == len(state) - 2


def test_a_file_that_is_not_a_state_dict_says_so(tmp_path):
    (tmp_path / "text.pth").write_text("<html>404 Not Found</html>\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    with open(tmp_path / "plain.pth", "wb") as fh:
        pickle.dump({"conv1.weight": [1.0]}, fh, protocol=4)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    torch.save({"conv1.weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pth")
    (tmp_path / "text.safetensors").write_text("hello")
    cases = {
        "text.pth": r"is not a PyTorch weights file: it is text, starting '<html>404 Not Found</html>'",
        "empty.pth": "is not a PyTorch weights file: the file is empty",
        "plain.pth": r"cannot read .*plain\.pth: it is a pickle that torch\.save did not write",
        "module.pth": r"it holds pickled Python objects \(torch\.nn\.modules\.linear\.Linear\), not only tensors",
        "list.pth": r"not a state dict of tensors \(it holds a list; save model\.state_dict\(\)\)",
        "mixed.pth": r"not a state dict of tensors \(non-tensor entries: 'epoch' \(int\)\)",
        "text.safetensors": "not a safetensors file",
    }
    for name, says in cases.items():
        with pytest.raises(TailsynthError, match=says):
            read_state_dict(tmp_path / name)
    # at load (and so at --plan): the reason, and no small_input hint (that is for tensors that do not fit)
    with pytest.raises(TailsynthError, match="classifier.pretrained: pretrained weights .* is not a PyTorch") as err:
        load_experiment("demo", [f"classifier.pretrained={tmp_path / 'text.pth'}"])
    assert "small_input" not in str(err.value)
    out = CliRunner().invoke(cli, ["run", "demo", f"classifier.pretrained={tmp_path / 'module.pth'}", "--plan",
                                   "--runs", str(tmp_path / "runs")])
    assert "pickled Python objects" in str(out.exception) and "small_input" not in str(out.exception)
    assert not (tmp_path / "runs").exists()


@pytest.mark.sd_scale
def test_real_size_random_sd_folder_loads_and_runs(sd14_random):
    """The sd-1.4 variant (about 2 GiB in float16, the session's folder: conftest) loaded by the SD backend:
    SD-1.4's parameter counts, (1, 77, 768) conditioning and one UNet step on 4 x 64 x 64 latents (512 px)."""
    path = sd14_random
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert 2.0e9 < size < 2.3e9  # 1,066,235,307 parameters x 2 bytes + configs
    sd = SDBackend({"path": str(path), "class_names": ["basophil"]})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(sd.unet), count(sd.vae), count(sd.text_encoder)) == (859_520_964, 83_653_863, 123_060_480)
    assert sd.latent_shape(512) == (4, 64, 64) and sd.scaling_factor == pytest.approx(0.18215)
    cond = sd.encode_condition(torch.tensor([0]))
    assert cond.shape == (1, 77, 768) and torch.isfinite(cond).all()
    with torch.no_grad():
        eps = sd.eps(torch.randn(1, 4, 64, 64), torch.tensor([500]), cond)
    assert eps.shape == (1, 4, 64, 64) and torch.isfinite(eps).all()
