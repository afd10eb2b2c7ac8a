"""A method from a run's configuration: backbone, heads and options."""

from __future__ import annotations

from siamgrad.config import COMMON_METHOD_OPTIONS, Config, uses_cifar_stem
from siamgrad.methods import registry as methods
from siamgrad.methods.registry import SiameseMethod
from siamgrad.models.backbones import build_backbone


def build_method(cfg: Config) -> SiameseMethod:
    """The configured method around the configured backbone (``cfg.method``: name and options)."""
    name = cfg.method.get("name", "unigrad")
    known = methods.default_options(name) if name in methods.available() else {}
    backbone, dim = build_backbone(cfg.backbone, cifar_stem=uses_cifar_stem(cfg))
    opts = {k: v for k, v in cfg.method.items()
            if k != "name" and (k in known or k not in COMMON_METHOD_OPTIONS)}
    return methods.build(name, backbone, dim, **opts)
