"""Methods as data: eight specs in a registry, built into one generic Siamese method.

* :mod:`.protocol`   -- what the rest of siamgrad may use of a method (:class:`Method`), branches, state hooks
* :mod:`.options`    -- typed method options and the forms they act in
* :mod:`.spec`       -- :class:`MethodSpec`: a method as data
* :mod:`.states`     -- queue, moving-average ``F``, DirectPred predictor
* :mod:`.objectives` -- each method's objective over its branches (pure)
* :mod:`.siamese`    -- :class:`SiameseMethod`, the one implementation
* :mod:`.registry`   -- the eight specs, option resolution, :func:`build`, :func:`describe`
* :mod:`.from_config` -- a method from a run's configuration
"""

from siamgrad.methods.options import Option
from siamgrad.methods.protocol import Branches, Method, MethodState
from siamgrad.methods.registry import (
    REGISTRY,
    available,
    build,
    default_options,
    describe,
    format_table,
    resolve_options,
)
from siamgrad.methods.siamese import SiameseMethod
from siamgrad.methods.spec import MethodSpec

__all__ = ["REGISTRY", "Branches", "Method", "MethodSpec", "MethodState", "Option", "SiameseMethod", "available",
           "build", "default_options", "describe", "format_table", "resolve_options"]
