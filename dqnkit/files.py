"""Crash-safe writes: a file is whole or absent, never cut short by a kill or a full disk.

Write ``NAME.tmp`` in the same directory, flush, fsync, ``os.replace`` it onto the final
name, fsync the directory. No torch here: the tabular exercises write their results too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a new file that then replaces ``path`` at once."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: the partial file would hold on to the space that is left
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (a run's config.json, summary.json, results.json) as :func:`atomic_write` does."""
    atomic_write(path, lambda f: f.write(text.encode()))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
