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


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM (``kill``, a scheduler's preemption,
    ``docker stop``) after saving a checkpoint; the CLI exits with 128 + ``signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
