"""Unreadable image files: one warning per file, one limit for all loaders.

A file that cannot be read or decoded is skipped by every loader (in-memory image folders,
streamed folders and shards, the bounded evaluation sets). :class:`BadImageCounter` names each
such file once through an :class:`UnreadableImageWarning` and raises
:class:`~siamgrad.errors.DataError` when there are more of them than the config's
``data.max_bad_fraction`` allows (:data:`DEFAULT_MAX_BAD_FRACTION` by default).

The warning is shown as one plain line, ``warning: skipped unreadable image ...``, without the
file and source line Python's default warning format adds (a
:class:`~siamgrad.errors.OneLineWarning`). Filters (``-W``, ``warnings.simplefilter``,
``pytest.warns``) work as for any warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from siamgrad.config import DataConfig
from siamgrad.errors import DataError, OneLineWarning, format_warning

__all__ = ["DEFAULT_MAX_BAD_FRACTION", "MIN_SEEN_FOR_RATE", "BadImageCounter", "UnreadableImageWarning",
           "format_unreadable_warning"]

DEFAULT_MAX_BAD_FRACTION: float = DataConfig().max_bad_fraction
"""The default of ``data.max_bad_fraction`` (the config's): the share of unreadable files a data
set may hold, for the loaders called without a config."""

MIN_SEEN_FOR_RATE = 1000
"""The unreadable *rate* is judged once this many images were read (the count of distinct bad
files against the whole set is judged at once)."""


class UnreadableImageWarning(OneLineWarning):
    """An image file could not be read or decoded and was skipped."""


def format_unreadable_warning(message: Warning | str) -> str:
    """The line an :class:`UnreadableImageWarning` is shown as (newline included)."""
    return format_warning(message)


class BadImageCounter:
    """Counts unreadable images; warns once per file; stops when there are too many.

    With ``N`` files in the set, ``seen`` images read so far and ``bad`` failed reads among
    them (a file failing in every epoch counts every time), a :class:`DataError` is raised when
    the distinct unreadable files exceed ``max_fraction * N``, or when ``seen >= min_seen`` and
    ``bad > max_fraction * seen``.
    """

    def __init__(self, total: int, max_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                 min_seen: int = MIN_SEEN_FOR_RATE):
        self.total, self.max_fraction, self.min_seen = int(total), float(max_fraction), int(min_seen)
        self.seen = 0
        self.bad = 0
        self.files: dict[int, str] = {}

    def update(self, seen: int, failures: Sequence[tuple[int, str, str]]) -> None:
        """Record ``seen`` reads of which ``failures`` = ``(index, name, reason)`` failed."""
        self.seen += int(seen)
        for index, name, reason in failures:
            self.bad += 1
            if index not in self.files:
                self.files[index] = name
                warnings.warn(
                    f"skipped unreadable image {name} ({reason}); {len(self.files)} unreadable file(s) so far",
                    UnreadableImageWarning, stacklevel=2,
                )
        if not failures:
            return
        f = self.max_fraction
        too_many_files = len(self.files) > f * self.total
        too_high_rate = self.seen >= self.min_seen and self.bad > f * self.seen
        if too_many_files or too_high_rate:
            names = list(self.files.values())
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            what = (f"{len(self.files)} of the {self.total} files" if too_many_files
                    else f"{self.bad} of the {self.seen} images read so far")
            raise DataError(
                f"{what} could not be decoded (more than data.max_bad_fraction={f:g}), e.g. {shown}; "
                "check or replace the corrupt files, or raise data.max_bad_fraction"
            )
