"""Method options as data: a typed, bounded value per option, and the forms it acts in.

Every option of every method (:mod:`siamgrad.methods.registry`) is an :class:`Option`; the
config passes ``method.<option>=value`` through :meth:`Option.validate`, so a bad value is one
line naming the option and what it expects.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from siamgrad.errors import ConfigError

FORMS = ("original", "gradient")
TARGETS = ("auto", "none", "stopgrad", "momentum", "momentum_positive")
MOMENTUM_TARGETS = ("momentum", "momentum_positive")
VIEW_BN = ("per_view", "joint")


@dataclass(frozen=True)
class Option:
    """One validated method option: ``kind`` is ``choice``, ``int``, ``float``, ``bool`` or ``float_or_auto``.

    Numeric bounds are inclusive unless ``low_open``/``high_open``. ``forms``: the forms in which
    the option has an effect (a grid leaves its cell blank in the others).
    """

    default: Any
    kind: str
    doc: str = ""
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    forms: tuple[str, ...] = ("original", "gradient")

    def acts_in(self, form: str) -> bool:
        return form in self.forms

    def only_in(self, form: str) -> "Option":
        """This option, acting in ``form`` alone."""
        return dataclasses.replace(self, forms=(form,))

    def expected(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        base = {"int": "an integer", "float": "a number", "float_or_auto": "'auto' or a number"}[self.kind]
        return f"{base} {rng}".strip()

    def validate(self, method: str, name: str, value: Any) -> Any:
        """Return the normalized value or raise a one-line :class:`ConfigError`."""

        def bad() -> ConfigError:
            return ConfigError(f"method.{name}={value!r} is invalid for {method}: expected {self.expected()}")

        if self.kind == "choice":
            if value not in self.choices:
                raise bad()
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise bad()
        if self.kind == "float_or_auto" and value == "auto":
            return "auto"
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):
            try:
                value = float(value) if self.kind != "int" else int(value)
            except ValueError:
                raise bad() from None
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad()
        elif not isinstance(value, (int, float)):
            raise bad()
        else:
            value = float(value)
        if not math.isfinite(value):
            raise bad()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise bad()
        return value


def positive_int(default: int, doc: str) -> Option:
    return Option(default, "int", doc, low=1)


def positive_float(default: float, doc: str) -> Option:
    return Option(default, "float", doc, low=0.0, low_open=True)


def unit_interval(default: float, doc: str) -> Option:
    """A coefficient in ``[0, 1)`` (EMA rates, momentum)."""
    return Option(default, "float", doc, low=0.0, high=1.0, high_open=True)
