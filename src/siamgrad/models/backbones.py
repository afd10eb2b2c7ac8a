"""Encoders: torchvision ResNets (with the CIFAR stem option) and small CPU-sized networks.

Every backbone maps images ``[N, 3, H, W]`` to features ``[N, feature_dim]`` (the classifier is
removed); :func:`build_backbone` returns the module and ``feature_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from siamgrad.errors import ConfigError

BACKBONES = ("small", "tiny", "resnet18", "resnet34", "resnet50")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """A basic residual block (two 3x3 conv-BN, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class SmallResNet(nn.Module):
    """A CPU-sized residual network: stem conv, one residual block per stage, global pooling.

    ``widths=(32, 64, 128)`` sizes it for CPU training on 32x32 images; its parameter count, cost
    and measured speed are in docs/benchmarks.md (``benchmarks/bench_throughput.py``).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            layers.append(_Residual(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _torchvision_resnet(name: str, cifar_stem: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        # 3x3 stride-1 first convolution and no max-pool: keeps resolution for 32-96 px images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def build_backbone(name: str, cifar_stem: bool = True) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)`` for ``name``.

    ``small``/``tiny``: :class:`SmallResNet` for CPU work; ``resnet18/34/50``: torchvision's,
    with ``cifar_stem`` replacing the 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv;
    ``timm:NAME[,key=value,...]``: a timm model (``num_classes=0``, the keys passed to
    ``timm.create_model``, values read as YAML) when timm is installed, e.g.
    ``timm:vit_tiny_patch16_224,img_size=32,patch_size=4,dynamic_img_size=true`` (a patch-4 ViT-Tiny
    for 32 px images whose position embeddings are interpolated for smaller local crops).

    >>> import torch
    >>> net, dim = build_backbone("tiny")
    >>> net(torch.zeros(2, 3, 32, 32)).shape[1] == dim
    True
    """
    if name == "small":
        net = SmallResNet((32, 64, 128))
        return net, net.feature_dim
    if name == "tiny":
        net = SmallResNet((8, 16, 32))
        return net, net.feature_dim
    if name in ("resnet18", "resnet34", "resnet50"):
        return _torchvision_resnet(name, cifar_stem)
    if name.startswith("timm:"):
        return _timm_model(name)
    raise ConfigError(
        f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}, or timm:NAME"
    )


def timm_spec(name: str) -> tuple[str, dict]:
    """``("NAME", {key: value})`` of ``timm:NAME,key=value,...`` (values read as YAML); a plain name
    (``resnet18``) has no keys."""
    model, _, spec = (name[5:] if name.startswith("timm:") else name).partition(",")
    import yaml

    kwargs = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"backbone '{name}': '{item}' is not key=value; write timm:NAME,key=value,...")
        kwargs[key.strip()] = yaml.safe_load(value)
    return model, kwargs


def _timm_model(name: str) -> tuple[nn.Module, int]:
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(f"backbone '{name}' needs timm; install it (pip install 'siamgrad[timm]')") from None
    model, kwargs = timm_spec(name)
    try:
        net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    except Exception as e:  # timm raises RuntimeError for unknown names, TypeError for unknown keys
        raise ConfigError(f"backbone '{name}': timm cannot build it ({e})") from None
    return net, int(net.num_features)
