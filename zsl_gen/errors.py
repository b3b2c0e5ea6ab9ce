"""Exception types whose messages are shown to users as-is (the CLIs print them without a traceback).

Every message names the offending file, key or config field and says how to fix it.
"""


class ZSLGenError(Exception):
    """Base class of every error zsl-gen reports to a user."""


class DataError(ZSLGenError):
    """A dataset file or its content is missing, malformed or inconsistent."""


class ConfigError(ZSLGenError):
    """A configuration value is invalid."""


class CheckpointError(ZSLGenError):
    """A checkpoint or exported generator is missing, corrupt, tampered with or of the wrong kind."""


class DownloadError(ZSLGenError):
    """A dataset archive could not be fetched or verified."""


class TrainingDiverged(ZSLGenError):
    """Generator training produced non-finite values (NaN/Inf losses, parameters or outputs)."""
