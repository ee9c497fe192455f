"""Files a run shares with a crash or another process.

Crash-safe writes: a file is whole or absent, never cut short by a kill or a full disk
(``NAME.tmp`` in the same directory, flush, fsync, ``os.replace`` onto the final name,
fsync the directory). And :class:`RunLock`, one process at a time in a run directory.
No torch here: the tabular exercises and the experiments' driver use these too.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dqnkit.errors import DqnkitError


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


def read_json_file(path: Path, what: str) -> Any:
    """The JSON in ``path``; a file that cannot be read or is not JSON is a one-line
    DqnkitError that starts with ``what`` (the flag that named it, e.g. ``--config FILE``)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise DqnkitError(f"{what}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DqnkitError(f"{what}: not JSON ({exc.msg}, line {exc.lineno})") from None


def make_dir(path: Path, what: str) -> None:
    """``mkdir -p path``; where a file stands in the way, a one-line error (exit 2) that
    names it and ``what`` needs the directory (e.g. ``--out runs/x.png``), not a traceback."""
    refuse_file_in_the_way(path, what)
    path.mkdir(parents=True, exist_ok=True)


def refuse_file_in_the_way(path: Path, what: str) -> None:
    """Refuse (exit 2) ``path`` as a directory where it, or a directory above it, is a file."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DqnkitError(f"{what}: {blocker} is a file, not a directory")


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON: a NaN or an infinity (a run never evaluated, a greedy policy
    that never reaches the goal) is written as null. Python's default writes ``NaN`` and
    ``-Infinity``, which jq, JavaScript and most other JSON readers refuse."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunLock:
    """This process's exclusive lock on a run directory (``flock`` on ``DIR/.lock``), held
    while it trains there: a second ``train --resume`` or ``--overwrite`` of the same run
    (a job started twice) is refused instead of interleaving checkpoints and metrics rows.
    The kernel drops the lock when its process dies, so a killed run resumes at once."""

    def __init__(self, run_dir: Path, what: str = "run directory") -> None:
        path = run_dir / ".lock"
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 32).decode(errors="replace").strip() or "?"
            self.release()
            raise DqnkitError(
                f"{what} {run_dir} is in use by another dqnkit process (pid {holder}); "
                "wait for it to end, or stop it first"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        """Let another process train into the directory (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
