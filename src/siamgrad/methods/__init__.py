"""Methods as data: the registry of the eight methods and the generic Siamese method they build."""

from siamgrad.methods.registry import (
    REGISTRY,
    Branches,
    MethodSpec,
    Option,
    SiameseMethod,
    available,
    build,
    default_options,
    describe,
    format_table,
    resolve_options,
)

__all__ = ["REGISTRY", "Branches", "MethodSpec", "Option", "SiameseMethod", "available", "build",
           "default_options", "describe", "format_table", "resolve_options"]
