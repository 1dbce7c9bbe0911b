"""Every registered diffusion backend (and the tiny offline Stable Diffusion) defines all attributes of the
:class:`~tailsynth.diffusion.backend.DiffusionBackend` protocol, with the values the samplers, trainers and
guidance methods read from it directly."""
import json

import pytest
import torch

from tailsynth.diffusion import BACKENDS, DiffusionBackend, PixelBackend, SDBackend, build_tiny_sd_pipeline

# what backends differ in: declared by the protocol, read without getattr defaults
ATTRIBUTES = ("prediction", "clip_x0", "trains_base", "extra_tokens", "schedule")

TINY = dict(num_classes=3, image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8, tokens_per_class=2)


@pytest.fixture(scope="module")
def tiny_sd_path(tmp_path_factory):
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("backend_protocol") / "sd")


def _backends(sd_path):
    """name -> a built instance, for every registered backend."""
    return {"pixel": PixelBackend(TINY, seed=0), "sd": SDBackend({"path": str(sd_path), "class_names": ["a", "b"]})}


def _check_attributes(backend) -> None:
    assert isinstance(backend, DiffusionBackend)
    for name in ATTRIBUTES:
        assert hasattr(backend, name), f"{type(backend).__name__} lacks protocol attribute {name!r}"
    assert backend.prediction in ("epsilon", "v")
    clip = backend.clip_x0
    assert clip is True or clip is False or (isinstance(clip, tuple) and len(clip) == 2
                                             and all(isinstance(c, torch.Tensor) for c in clip))
    assert isinstance(backend.trains_base, bool) and backend.trains_base == type(backend).trains_base
    assert backend.extra_tokens is None or isinstance(backend.extra_tokens, torch.nn.Parameter)
    assert backend.schedule in ("linear", "scaled_linear", "cosine")


def test_protocol_declares_what_backends_differ_in():
    assert set(ATTRIBUTES) <= set(DiffusionBackend.__annotations__)


def test_every_registered_backend_defines_the_protocol_attributes(tiny_sd_path):
    backends = _backends(tiny_sd_path)
    assert sorted(backends) == BACKENDS.names(), "a new backend needs an instance in this test"
    for name, backend in backends.items():
        assert isinstance(backend, BACKENDS.get(name))
        _check_attributes(backend)
        assert isinstance(BACKENDS.get(name).trains_base, bool)  # read on the class by the pipeline


def test_pixel_backend_protocol_values():
    b = PixelBackend(TINY, seed=0)
    assert (b.prediction, b.clip_x0, b.trains_base, b.extra_tokens, b.schedule) == ("epsilon", True, True, None,
                                                                                     "linear")
    b.add_classes(["tail"])
    assert isinstance(b.extra_tokens, torch.nn.Parameter) and b.extra_tokens.shape == (1, 2, 16)
    _check_attributes(b)
    other = PixelBackend({**TINY, "prediction": "v", "schedule": "cosine", "data_mean": (0.25, 0.5, 0.75)}, seed=0)
    _check_attributes(other)
    lo, hi = other.clip_x0
    assert (other.prediction, other.schedule) == ("v", "cosine")
    assert torch.equal(lo.flatten(), torch.tensor([-0.5, -1.0, -1.5]))
    assert torch.equal(hi.flatten(), torch.tensor([1.5, 1.0, 0.5]))
    other.clip_x0 = False  # the override (guidance tests switch clipping off)
    assert other.clip_x0 is False


def test_tiny_sd_backend_protocol_values(tiny_sd_path, tmp_path):
    sd = SDBackend({"path": str(tiny_sd_path), "class_names": ["a"]})
    assert (sd.prediction, sd.clip_x0, sd.trains_base, sd.extra_tokens, sd.schedule) == ("epsilon", False, False,
                                                                                         None, "scaled_linear")
    sd.add_classes(["tail"])  # new classes are prompt words: still no learned token table
    assert sd.extra_tokens is None
    _check_attributes(sd)
    # the schedule name is the folder's (diffusers' squaredcos_cap_v2 is the cosine schedule)
    config = tiny_sd_path / "scheduler" / "scheduler_config.json"
    cosine = tmp_path / "sd_cosine"
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        (cosine / sub).parent.mkdir(parents=True, exist_ok=True)
        (cosine / sub).symlink_to(tiny_sd_path / sub, target_is_directory=True)
    (cosine / "model_index.json").symlink_to(tiny_sd_path / "model_index.json")
    (cosine / "scheduler").mkdir()
    (cosine / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**json.loads(config.read_text()), "beta_schedule": "squaredcos_cap_v2"}))
    assert SDBackend({"path": str(cosine)}).schedule == "cosine"
