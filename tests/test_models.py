"""Networks: shapes, the forward_features/forward_head contract, parameter counts, reset_head."""
import pytest
import torch

from tailsynth.errors import TailsynthError, UnknownNameError
from tailsynth.models import MODELS, create_model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet32"])
@pytest.mark.parametrize("size", [16, 32])
def test_shapes_and_contract(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=1, width=0.25, small_input=True).eval()
    x = torch.randn(2, 1, size, size)
    z = model.forward_features(x)
    assert z.shape == (2, model.num_features)
    logits = model.forward_head(z)
    assert logits.shape == (2, 7)
    assert torch.allclose(model(x), logits)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == model.num_features


def test_imagenet_stem_at_32px():
    model = create_model("resnet18", num_classes=3, width=0.25).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_registry_names():
    assert MODELS.names() == ["resnet18", "resnet32", "resnet34", "resnet50"]
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("resnet19", num_classes=3)
    with pytest.raises(TailsynthError, match="width"):
        create_model("resnet18", num_classes=3, width=0)


def test_parameter_counts_match_torchvision():
    assert n_params(create_model("resnet18", 1000)) == 11_689_512
    assert n_params(create_model("resnet34", 1000)) == 21_797_672
    assert n_params(create_model("resnet50", 1000)) == 25_557_032


def test_resnet32_cifar():
    model = create_model("resnet32", 10)
    assert n_params(model) == 464_154  # He et al. 2016: 0.46M (option A shortcuts are parameter-free)
    assert model.num_features == 64


def test_width_scales_channels():
    model = create_model("resnet18", 10, width=0.25, small_input=True)
    assert model.conv1.out_channels == 16 and model.num_features == 128
    assert create_model("resnet50", 10, width=0.25).num_features == 512
    assert create_model("resnet32", 10, width=2.0).num_features == 128


def test_small_input_stem():
    small = create_model("resnet18", 10, small_input=True)
    big = create_model("resnet18", 10, small_input=False)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)


def test_reset_head_is_seeded_and_keeps_backbone():
    torch.manual_seed(0)
    model = create_model("resnet32", 5, width=0.5)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    old = model.head.weight.clone()
    model.reset_head(generator=torch.Generator().manual_seed(3))
    first = model.head.weight.clone()
    model.reset_head(generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, model.head.weight)
    assert not torch.equal(old, first)
    bound = 1 / model.num_features ** 0.5
    assert model.head.weight.abs().max() <= bound and model.head.bias.abs().max() <= bound
    for k, v in model.state_dict().items():
        if not k.startswith("head"):
            assert torch.equal(v, backbone[k])


def test_kaiming_init_and_seeded_determinism():
    torch.manual_seed(1)
    a = create_model("resnet18", 4, width=0.25, small_input=True)
    torch.manual_seed(1)
    b = create_model("resnet18", 4, width=0.25, small_input=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    w = create_model("resnet18", 4, width=1.0).layer3[0].conv1.weight  # fan_out = 256 * 9
    assert abs(w.std().item() - (2.0 / (256 * 9)) ** 0.5) < 0.002
    assert torch.all(a.bn1.weight == 1) and torch.all(a.bn1.bias == 0)
