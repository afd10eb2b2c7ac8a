import pytest
import torch

from siamgrad.models.backbones import build_backbone
from siamgrad.errors import ConfigError


@pytest.mark.parametrize("name,dim", [("tiny", 32), ("small", 128), ("resnet18", 512)])
def test_shapes(name, dim):
    net, d = build_backbone(name, cifar_stem=True)
    assert d == dim
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, dim)


def test_cifar_stem_keeps_resolution():
    stem, _ = build_backbone("resnet18", cifar_stem=True)
    plain, _ = build_backbone("resnet18", cifar_stem=False)
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1)
    assert isinstance(stem.maxpool, torch.nn.Identity)
    assert plain.conv1.kernel_size == (7, 7)
    x = torch.randn(2, 3, 32, 32)
    # feature map before pooling: 4x4 with the CIFAR stem, 1x1 without
    def spatial(net):
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            y = layer(y)
        return y.shape[-1]
    assert spatial(stem) == 4 and spatial(plain) == 1


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet7'"):
        build_backbone("resnet7")
