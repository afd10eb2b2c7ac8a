"""User-facing errors.

Every problem the user can fix (a bad option, a missing dataset, a corrupt checkpoint, a NaN
loss) is raised as :class:`SiamgradError` with a one-line message that names the problem and
the fix. The command line prints the message alone, without a traceback.

Warnings the user should see but that need no action to go on (a checkpoint fallback, a capped
thread count, an unreadable image skipped) are :class:`OneLineWarning` s: importing this module
chains a small display hook in front of :func:`warnings.showwarning` that shows them as one plain
``warning: ...`` line, without the file and source line Python's default format adds, and hands
every other warning to the previous hook. Filters (``-W``, ``warnings.simplefilter``,
``pytest.warns``) work as for any warning.
"""

import sys
import warnings


class SiamgradError(ValueError):
    """A problem with the user's input, reported in one line."""


class ConfigError(SiamgradError):
    """A malformed config, unknown key or out-of-range value."""


class DataError(SiamgradError):
    """A missing, corrupt or malformed dataset."""


class CheckpointError(SiamgradError):
    """A missing, truncated or corrupt checkpoint."""


class TrainingError(SiamgradError):
    """Training cannot go on (a NaN/Inf loss, collapse)."""


class OneLineWarning(UserWarning):
    """A warning shown as one ``warning: ...`` line (see the module docstring)."""


def format_warning(message: Warning | str) -> str:
    """The line a :class:`OneLineWarning` is shown as (newline included)."""
    return f"warning: {' '.join(str(message).split())}\n"


def _install_display_hook() -> None:
    previous = warnings.showwarning
    if getattr(previous, "_siamgrad_one_line", False):  # already chained (module reloaded)
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, OneLineWarning):
            stream = sys.stderr if file is None else file
            if stream is None:  # no stderr (pythonw): nowhere to show it
                return
            try:
                stream.write(format_warning(message))
            except OSError:
                pass
            return
        previous(message, category, filename, lineno, file, line)

    showwarning._siamgrad_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


_install_display_hook()
