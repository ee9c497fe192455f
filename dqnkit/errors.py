"""Exceptions that mean "the user asked for something we cannot do".

The CLI turns a :class:`DqnkitError` into a one-line ``error: ...`` and exit code 2;
anything else is a bug and exits 1 with a traceback.
"""


class DqnkitError(Exception):
    """Bad input: a config value, an env, a run directory or a checkpoint we refuse."""


class ConfigError(DqnkitError):
    """A config key, type or value that is not allowed."""


class CheckpointError(DqnkitError):
    """A checkpoint that is missing, corrupt, unsafe or does not match the config."""


class NonFiniteError(DqnkitError):
    """A reward, observation or loss became NaN or infinite during training."""
