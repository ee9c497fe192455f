"""Exceptions that mean "the user asked for something we cannot do".

The CLI turns a :class:`DqnkitError` into a one-line ``error: ...`` and exit code 2;
anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


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


@contextlib.contextmanager
def sigterm_raises(before: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Interrupted` where the program is, as Ctrl-C
    raises KeyboardInterrupt (``before()`` runs first: an experiment passes the signal on
    to its training processes); the previous handler comes back after. Only the main thread
    may set handlers: elsewhere (an embedding, a test's thread) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        if before is not None:
            before()
        raise Interrupted("stopped by SIGTERM", signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
