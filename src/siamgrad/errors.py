"""User-facing errors.

Every problem the user can fix (a bad option, a missing dataset, a corrupt checkpoint, a NaN
loss) is raised as :class:`SiamgradError` with a one-line message that names the problem and
the fix. The command line prints the message alone, without a traceback.
"""


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
