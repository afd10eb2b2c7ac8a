"""A method from a run's configuration: the validated options of ``cfg.method``, then the model.

:func:`method_options` is the one place a config's method section is checked against the
registry; every command calls it (``siamgrad config`` too), so a bad option fails the same way
everywhere.
"""

from __future__ import annotations

from typing import Any

from siamgrad.config import COMMON_METHOD_OPTIONS, Config, uses_cifar_stem
from siamgrad.methods import registry as methods
from siamgrad.methods.siamese import SiameseMethod
from siamgrad.models.backbones import build_backbone


def method_options(cfg: Config) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of ``cfg.method``, validated; a one-line ConfigError otherwise.

    The projector widths (``COMMON_METHOD_OPTIONS``) are kept across a change of method, so they
    are passed on only where the method has them.
    """
    name = cfg.method.get("name", "unigrad")
    known = methods.default_options(name)
    opts = {k: v for k, v in cfg.method.items()
            if k != "name" and (k in known or k not in COMMON_METHOD_OPTIONS)}
    methods.resolve_options(name, **opts)
    return name, opts


def build_method(cfg: Config) -> SiameseMethod:
    """The configured method around the configured backbone."""
    name, opts = method_options(cfg)
    backbone, dim = build_backbone(cfg.backbone, cifar_stem=uses_cifar_stem(cfg))
    return methods.build(name, backbone, dim, **opts)
